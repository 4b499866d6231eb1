//! How the gateway process hands memory back to the operating system.
//!
//! glibc's malloc raises its mmap threshold each time a large block served by `mmap` is freed
//! (up to 32 MiB on 64-bit): after one 16 MiB statement, blocks of up to 16 MiB come from the
//! per-thread arenas instead, and memory freed in an arena mostly stays with the process. A
//! gateway that has seen a few large messages on a few threads then keeps a resident set far above
//! what it uses. Measured by `tests/postgres_memory.rs` (300 sessions with 50 at once, malformed
//! inputs, 4 MiB messages both ways, all in one process with the clients): VmRSS went from 50 to
//! 121 MiB while the live Rust heap returned to 0.2 MiB; with the threshold fixed at 256 KiB it
//! stayed at 22-23 MiB. The relay's own buffers (64 KiB) stay below the threshold, so the
//! per-statement path makes no extra system calls.

/// Blocks at least this large are always served by `mmap`, so freeing them returns them to the
/// operating system at once.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (which also stops the dynamic raising of
/// its trim threshold), unless the environment sets `MALLOC_MMAP_THRESHOLD_` itself. Returns
/// whether the setting was made; elsewhere than glibc on Linux it does nothing. Process-wide: the
/// binary calls it first thing; an embedder decides for its own process.
pub fn return_freed_memory_to_the_os() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return false;
        }
        /// glibc's `M_MMAP_THRESHOLD` (malloc.h).
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only changes the allocator's parameters, under its own lock; it is
        // safe to call at any time from any thread. 256 KiB fits a c_int.
        unsafe { mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as std::os::raw::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

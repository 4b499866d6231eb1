#![no_main]
//! Startup-phase packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_postgres::fuzzing::startup_packet(data));

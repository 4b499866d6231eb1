//! The subcommands, one module each (`run`, `check-config`, `hash-password` and `discover` are
//! small and stay in `main.rs`).

pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod policy;
pub(crate) mod token;

#![no_main]
//! MySQL result sets of a masked session: column definitions, text and binary rows rewritten.
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_mysql::fuzzing::masked_rows(data));

#![no_main]
//! MySQL packets as the relay frames and follows them: result sets, OK/ERR/EOF, prepare answers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_mysql::fuzzing::packets(data));

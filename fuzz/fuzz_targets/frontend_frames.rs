#![no_main]
//! Client frames after login: framing and the fields the relay reads.
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_postgres::fuzzing::frontend_frames(data));

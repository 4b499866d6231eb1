#![no_main]
//! MySQL login packets: greetings, SSL requests, handshake responses, auth switches.
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_mysql::fuzzing::handshake(data));

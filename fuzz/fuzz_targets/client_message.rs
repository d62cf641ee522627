#![no_main]
//! See `wsrelay::fuzzing::client_message`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::client_message(data));

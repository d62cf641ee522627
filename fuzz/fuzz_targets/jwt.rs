#![no_main]
//! See `wsrelay::fuzzing::jwt`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::jwt(data));

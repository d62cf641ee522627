#![no_main]
//! See `wsrelay::fuzzing::http_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::http_head(data));

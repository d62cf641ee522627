#![no_main]
//! See `wsrelay::fuzzing::awx_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::awx_json(data));

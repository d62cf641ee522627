#![no_main]
//! See `wsrelay::fuzzing::emit_body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::emit_body(data));

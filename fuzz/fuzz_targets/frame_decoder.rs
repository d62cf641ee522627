#![no_main]
//! See `wsrelay::fuzzing::frame_decoder`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::frame_decoder(data));

#![no_main]
//! See `wsrelay::fuzzing::peer_wire`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::peer_wire(data));

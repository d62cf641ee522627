#![no_main]
//! See `wsrelay::fuzzing::channels_redis`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::channels_redis(data));

#![no_main]
//! See `wsrelay::fuzzing::secret_header`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrelay::fuzzing::secret_header(data));

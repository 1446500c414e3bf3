//! Fuzz target: see `hch::fuzzing::tokens`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hch::fuzzing::tokens(data));

//! Fuzz target: see `hch::fuzzing::certificate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hch::fuzzing::certificate(data));

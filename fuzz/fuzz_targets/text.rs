//! Fuzz target: see `hch::fuzzing::text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hch::fuzzing::text(data));

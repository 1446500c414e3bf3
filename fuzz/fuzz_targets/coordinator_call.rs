//! Fuzz target: see `hch::fuzzing::coordinator_call`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hch::fuzzing::coordinator_call(data));

//! Fuzz target: see `hch::fuzzing::worker_call`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hch::fuzzing::worker_call(data));

#![no_main]

// The checks live with the regression replay that runs them on every committed input.
#[path = "../../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::patterns(data));

#![no_main]
//! Fuzz target `key_normalise`: see `mta_sts_policyd_fuzz::key_normalise` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::key_normalise(data);
});

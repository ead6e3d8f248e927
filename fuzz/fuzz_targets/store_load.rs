#![no_main]
//! Fuzz target `store_load`: see `mta_sts_policyd_fuzz::store_load` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::store_load(data);
});

#![no_main]
//! Fuzz target `policy_parse`: see `mta_sts_policyd_fuzz::policy_parse` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::policy_parse(data);
});

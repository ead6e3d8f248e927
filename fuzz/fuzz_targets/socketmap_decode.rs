#![no_main]
//! Fuzz target `socketmap_decode`: see `mta_sts_policyd_fuzz::socketmap_decode` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::socketmap_decode(data);
});

#![no_main]
//! Fuzz target `txt_parse`: see `mta_sts_policyd_fuzz::txt_parse` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::txt_parse(data);
});

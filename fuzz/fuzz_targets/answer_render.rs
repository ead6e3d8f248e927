#![no_main]
//! Fuzz target `answer_render`: see `mta_sts_policyd_fuzz::answer_render` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::answer_render(data);
});

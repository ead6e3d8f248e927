#![no_main]
//! Fuzz target `fleet_value`: see `mta_sts_policyd_fuzz::fleet_value` (fuzz/src/fleet.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::fleet_value(data);
});

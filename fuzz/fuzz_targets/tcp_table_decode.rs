#![no_main]
//! Fuzz target `tcp_table_decode`: see `mta_sts_policyd_fuzz::tcp_table_decode` (fuzz/src/checks.rs) for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_sts_policyd_fuzz::tcp_table_decode(data);
});

//! Invariant checks for the mta-sts-policyd fuzz targets; see `checks.rs` and `README.md`.

mod checks;
mod fleet;

pub use checks::*;
pub use fleet::fleet_value;

//! Invariant checks for the mta-sts-policyd fuzz targets; see `checks.rs` and `README.md`.

mod checks;

pub use checks::*;

//! `mta-sts-policyd`: the binary. Everything it does is in the library's `cli` module, so that
//! tests reach the same code.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mta_sts_policyd::cli::main()
}

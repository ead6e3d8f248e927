//! The command line: subcommands and their options (every flag benches/perf.sh passes is an
//! interface), and the two helpers every subcommand uses (the runtime, the error exit).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::wire::{Kind, ProtoArg};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load tool for mta-sts-policyd's Postfix lookup protocols, loopback only"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Null responder: same framing, a fixed answer, no cache (the loopback ceiling).
    Null(NullArgs),
    /// Write a policy journal with N cached enforce policies d{i}.example, --mx mx lines each.
    Seed(SeedArgs),
    /// Drive load against one target and report throughput, latency, replies and errors.
    Run(RunArgs),
    /// Run the same load against a baseline and a target, alternating rounds; report the ratio.
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct NullArgs {
    /// `127.0.0.1:PORT`, `inet:127.0.0.1:PORT` (port 0: any free port) or `unix:/path`.
    #[arg(long)]
    pub listen: String,
    /// A protocol of the daemon's registry (`-` may stand for `_`).
    #[arg(long, value_enum, default_value = "socketmap")]
    pub protocol: ProtoArg,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Exit after this long (the responder is never left running for ever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub max_time: Duration,
}

#[derive(Args)]
pub struct SeedArgs {
    /// The state directory (`[cache] dir`); must not hold a journal yet.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub domains: u64,
    /// mx lines per policy: mx1.<domain>, mx2.<domain>, *.backup.<domain>, mx3.<domain>, ...
    #[arg(long, default_value_t = 3)]
    pub mx: usize,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// `inet:127.0.0.1:PORT` (or `127.0.0.1:PORT`) or `unix:/path`.
    #[arg(long)]
    pub target: String,
    /// A protocol of the daemon's registry (`-` may stand for `_`).
    #[arg(long, value_enum, default_value = "socketmap")]
    pub protocol: ProtoArg,
    /// The socketmap map name sent with each key.
    #[arg(long, default_value = "postfix")]
    pub map: String,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection (1: like Postfix).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Measured time (after the warm-up). Default 10s unless --requests is given.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measured requests in total (after the warm-up).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Keys, one a line, chosen uniformly at random per request.
    #[arg(long, conflicts_with = "domains")]
    pub keys: Option<PathBuf>,
    /// Keys d{i}.example, i uniformly random in 0..N per request (default 10).
    #[arg(long)]
    pub domains: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Total requests/s, open loop (see load.rs); unpaced when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 unless every measured reply is of this kind and there was no error.
    #[arg(long, value_enum)]
    pub expect: Option<Kind>,
    /// Report this server process's CPU use over the measured window (/proc/PID/stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Hard limit on one run (warm-up, measurement and draining), whatever else is asked.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub time_limit: Duration,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args)]
pub struct CompareArgs {
    /// The reference, usually the null responder.
    #[arg(long)]
    pub baseline: String,
    #[arg(long)]
    pub baseline_pid: Option<u32>,
    /// --domains for the target side only (e.g. a bigger cache); the baseline uses --domains.
    #[arg(long)]
    pub target_domains: Option<u64>,
    /// Baseline and target alternate this many times; each side's rounds are merged.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// The options of `run`; --target and --server-pid name the side that is compared.
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("loadgen: {msg}");
    2
}

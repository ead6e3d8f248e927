//! `loadgen`: the load tool for mta-sts-policyd; this file owns the command line.
//!
//! It speaks every Postfix lookup protocol of the daemon's registry that it has a client side
//! for ([`wire`]: socketmap and tcp_table) over TCP and unix sockets, with N concurrent
//! persistent connections that each send one request at a time like a Postfix smtp(8) process
//! (or K in flight with `--pipeline K`), and reports requests/s, latency percentiles, the reply
//! kinds and every error. Every reply frame is parsed and checked.
//!
//! ```text
//! cargo run -p loadgen --release -- null --listen 127.0.0.1:0 [--protocol socketmap|tcp_table]
//! cargo run -p loadgen --release -- seed --dir DIR --domains N
//! cargo run -p loadgen --release -- run --target inet:127.0.0.1:PORT --connections 64 \
//!     [--protocol socketmap|tcp_table] [--pipeline K] [--duration 10s | --requests M] \
//!     [--keys FILE | --domains N] [--warmup 2s] [--rate R] [--threads T] [--json] \
//!     [--expect found] [--server-pid PID]
//! cargo run -p loadgen --release -- compare --baseline inet:127.0.0.1:P1 \
//!     --target inet:127.0.0.1:P2 [--rounds 2] [--target-domains N] [--baseline-pid PID] \
//!     [run options]
//! ```
//!
//! Without a subcommand it runs a few-second self-test against its own null responder, for
//! every protocol it speaks. Only loopback addresses are accepted. Every load loop is bounded in
//! time (and `--requests` in count).
//!
//! Modules: [`net`] (addresses, connect, listen), [`wire`] (the client side of each protocol),
//! [`null`] (the null responder), [`seed`] (journal seeding), [`plan`] (what a run does),
//! [`load`] (connections, pacing, measuring), [`latency`] (histograms), [`report`] (outcomes
//! and their text / JSON), [`selftest`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod latency;
mod load;
mod net;
mod null;
mod plan;
mod report;
mod seed;
mod selftest;
mod wire;

use load::run_once;
use plan::make_plan;
use report::{Outcome, check_expect, json_report, ratio, text_report};
use wire::{Kind, ProtoArg};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load tool for mta-sts-policyd's Postfix lookup protocols, loopback only"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Null responder: same framing, a fixed answer, no cache (the loopback ceiling).
    Null(NullArgs),
    /// Write a policy journal with N cached enforce policies d{i}.example.
    Seed(SeedArgs),
    /// Drive load against one target and report throughput, latency, replies and errors.
    Run(RunArgs),
    /// Run the same load against a baseline and a target, alternating rounds; report the ratio.
    Compare(CompareArgs),
}

#[derive(Args)]
struct NullArgs {
    /// `127.0.0.1:PORT`, `inet:127.0.0.1:PORT` (port 0: any free port) or `unix:/path`.
    #[arg(long)]
    listen: String,
    /// A protocol of the daemon's registry (`-` may stand for `_`).
    #[arg(long, value_enum, default_value = "socketmap")]
    protocol: ProtoArg,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Exit after this long (the responder is never left running for ever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    max_time: Duration,
}

#[derive(Args)]
struct SeedArgs {
    /// The state directory (`[cache] dir`); must not hold a journal yet.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    domains: u64,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// `inet:127.0.0.1:PORT` (or `127.0.0.1:PORT`) or `unix:/path`.
    #[arg(long)]
    target: String,
    /// A protocol of the daemon's registry (`-` may stand for `_`).
    #[arg(long, value_enum, default_value = "socketmap")]
    protocol: ProtoArg,
    /// The socketmap map name sent with each key.
    #[arg(long, default_value = "postfix")]
    map: String,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (1: like Postfix).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measured time (after the warm-up). Default 10s unless --requests is given.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measured requests in total (after the warm-up).
    #[arg(long)]
    requests: Option<u64>,
    /// Keys, one a line, chosen uniformly at random per request.
    #[arg(long, conflicts_with = "domains")]
    keys: Option<PathBuf>,
    /// Keys d{i}.example, i uniformly random in 0..N per request (default 10).
    #[arg(long)]
    domains: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Total requests/s, open loop (see load.rs); unpaced when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Exit 1 unless every measured reply is of this kind and there was no error.
    #[arg(long, value_enum)]
    expect: Option<Kind>,
    /// Report this server process's CPU use over the measured window (/proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Hard limit on one run (warm-up, measurement and draining), whatever else is asked.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    time_limit: Duration,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct CompareArgs {
    /// The reference, usually the null responder.
    #[arg(long)]
    baseline: String,
    #[arg(long)]
    baseline_pid: Option<u32>,
    /// --domains for the target side only (e.g. a bigger cache); the baseline uses --domains.
    #[arg(long)]
    target_domains: Option<u64>,
    /// Baseline and target alternate this many times; each side's rounds are merged.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The options of `run`; --target and --server-pid name the side that is compared.
    #[command(flatten)]
    run: RunArgs,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        None => selftest::self_test(),
        Some(Cmd::Null(a)) => null::cmd_null(a),
        Some(Cmd::Seed(a)) => seed::cmd_seed(a),
        Some(Cmd::Run(a)) => cmd_run(a),
        Some(Cmd::Compare(a)) => cmd_compare(a),
    };
    std::process::exit(code);
}

fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("loadgen: {msg}");
    2
}

fn cmd_run(a: RunArgs) -> i32 {
    let plan = match make_plan(&a, &a.target, None) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(e),
    };
    let rt = runtime(Some(plan.threads));
    let o = match rt.block_on(run_once(plan.clone())) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if a.json {
        println!("{}", json_report("run", &plan, &o));
    } else {
        print!("{}", text_report("run", &plan, &o));
    }
    if check_expect("run", a.expect, &o) {
        0
    } else {
        1
    }
}

fn cmd_compare(a: CompareArgs) -> i32 {
    if a.rounds == 0 || a.rounds > 20 {
        return fail("--rounds must be within 1..=20");
    }
    let mut base_args = a.run.clone();
    base_args.server_pid = a.baseline_pid;
    let base = match make_plan(&base_args, &a.baseline, None) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(format!("baseline: {e}")),
    };
    let target = match make_plan(&a.run, &a.run.target, a.target_domains) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(format!("target: {e}")),
    };
    let rt = runtime(Some(target.threads));
    let mut bo: Option<Outcome> = None;
    let mut to: Option<Outcome> = None;
    for _ in 0..a.rounds {
        for (plan, acc) in [(&base, &mut bo), (&target, &mut to)] {
            match rt.block_on(run_once(plan.clone())) {
                Ok(o) => match acc {
                    Some(x) => x.merge(&o),
                    None => *acc = Some(o),
                },
                Err(e) => return fail(format!("{}: {e}", plan.target)),
            }
        }
    }
    let (Some(bo), Some(to)) = (bo, to) else {
        return fail("no rounds ran");
    };
    let q = |o: &Outcome, p: f64| o.hist.quantile_ns(p) as f64;
    let r_rps = ratio(to.rps(), bo.rps());
    let r_p50 = ratio(q(&to, 0.5), q(&bo, 0.5));
    let r_p99 = ratio(q(&to, 0.99), q(&bo, 0.99));
    if a.run.json {
        println!(
            "{}",
            serde_json::json!({
                "rounds": a.rounds,
                "baseline": json_report("baseline", &base, &bo),
                "target": json_report("target", &target, &to),
                "ratio_target_over_baseline": {"rps": r_rps, "p50": r_p50, "p99": r_p99},
            })
        );
    } else {
        print!("{}", text_report("baseline", &base, &bo));
        print!("{}", text_report("target", &target, &to));
        println!(
            "== ratio target/baseline ({} alternating rounds): throughput={r_rps:.3} p50={r_p50:.2} p99={r_p99:.2}",
            a.rounds
        );
    }
    let ok_b = check_expect("baseline", a.run.expect, &bo);
    let ok_t = check_expect("target", a.run.expect, &to);
    if ok_b && ok_t { 0 } else { 1 }
}

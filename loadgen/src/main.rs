//! `loadgen`: the load tool for mta-sts-policyd; this file dispatches the subcommands and runs
//! `run` and `compare`.
//!
//! It speaks every Postfix lookup protocol of the daemon's registry that it has a client side
//! for ([`wire`]: socketmap and tcp_table) over TCP and unix sockets, with N concurrent
//! persistent connections that each send one request at a time like a Postfix smtp(8) process
//! (or K in flight with `--pipeline K`), and reports requests/s, latency percentiles, the reply
//! kinds and every error. Every reply frame is parsed and checked.
//!
//! ```text
//! cargo run -p loadgen --release -- null --listen 127.0.0.1:0 [--protocol socketmap|tcp_table]
//! cargo run -p loadgen --release -- seed --dir DIR --domains N [--mx 3]
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
//! Modules, each importing only those before it: [`wire`] (the client side of each protocol),
//! [`latency`] (histograms), [`net`] (addresses, connect, listen), [`cli`] (options, runtime),
//! [`null`] (the null responder), [`seed`] (journal seeding), [`plan`] (what a run does),
//! [`report`] (outcomes and their text / JSON), [`load`] (connections, pacing, measuring),
//! [`selftest`]; this file uses them all. From the daemon's library: `proto` (the protocol
//! registry and codecs) and, for `seed`, `cache` and `policy`.

use std::sync::Arc;

use clap::Parser;

mod cli;
mod latency;
mod load;
mod net;
mod null;
mod plan;
mod report;
mod seed;
mod selftest;
mod wire;

use cli::{Cli, Cmd, CompareArgs, RunArgs, fail, runtime};
use load::run_once;
use plan::make_plan;
use report::{Outcome, check_expect, json_report, ratio, text_report};

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

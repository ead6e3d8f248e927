//! `ctl import` of 100,000 policies (three mx lines each) end to end: a real daemon
//! (`Daemon::start`, its journal in a fresh state directory, its control socket), the `ctl`
//! client's request with every line streamed over the socket, until the daemon's reply. The
//! budget is 5 s for the batched import (the default batch, one journal commit per batch).
//!
//! "Before", in the same run: the same import with `"batch": 1`, which is the one-at-a-time path
//! `ctl import` had before batching (each line decided, written to the journal and awaited, one
//! fdatasync per policy, then put in the cache). With `CTL_IMPORT_BASELINE=/path/to/an/older/
//! mta-sts-policyd`, that binary is also started as a daemon (`serve -c`) on a fresh state
//! directory and timed with the same request (older daemons ignore "batch" and "progress").
//!
//! Run: `cargo bench --bench ctl_import` (release build). Exits non-zero when over budget.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::config::Config;
use mta_sts_policyd::daemon::{Daemon, Options};
use mta_sts_policyd::discovery::{BoxFuture, DnsError, FetchError, PolicySource, TxtLookup};
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

const POLICIES: usize = 100_000;
const BUDGET: Duration = Duration::from_secs(5);

/// An import needs no discovery; any that happened would fail at once rather than leave.
struct Offline;

impl PolicySource for Offline {
    fn txt<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, TxtLookup> {
        Box::pin(async { TxtLookup::Temp(DnsError::Timeout) })
    }
    fn fetch<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async { Err(FetchError::Timeout) })
    }
}

fn lines(now: u64) -> Vec<String> {
    (0..POLICIES)
        .map(|i| {
            let domain = format!("d{i:06}.example");
            let policy = format!(
                "version: STSv1\nmode: enforce\nmx: mx1.{domain}\nmx: mx2.{domain}\n\
                 mx: *.mail-{i}.example.net\nmax_age: 604800\n"
            );
            json!({"domain": domain, "id": format!("20260101T{i:06}"),
                   "fetched": now - (i as u64 % 3600), "policy": policy})
            .to_string()
        })
        .collect()
}

fn config_text(dir: &Path) -> String {
    format!(
        "[socketmap]\nlisten = [\"inet:127.0.0.1:0\"]\n[tcp_table]\nlisten = []\n\
         [cache]\ndir = \"{}\"\n[control]\nsocket = \"{}\"\n",
        dir.join("state").display(),
        dir.join("control.sock").display()
    )
}

/// Times one import request to the daemon at `socket`; checks every line was taken.
async fn import(socket: &Path, batch: Option<u64>, lines: &[String]) -> Duration {
    let mut req = json!({"verb": "import"});
    if let Some(b) = batch {
        req["batch"] = json!(b);
    }
    let input = lines.to_vec();
    let started = Instant::now();
    let reply = control::request(socket, &req, Some(input))
        .await
        .expect("import request");
    let took = started.elapsed();
    let last: &Value = reply.last().expect("a reply");
    assert_eq!(last["imported"], POLICIES, "{last}");
    took
}

async fn in_process(batch: Option<u64>, lines: &[String]) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::parse(&config_text(dir.path()), None).expect("bench config");
    let opts = Options::new(Arc::new(Offline), Arc::new(SystemClock));
    let daemon = Daemon::start(Arc::new(config), opts)
        .await
        .expect("daemon starts");
    let took = import(&dir.path().join("control.sock"), batch, lines).await;
    daemon.shutdown().await;
    took
}

async fn external(binary: &str, lines: &[String]) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config_text(dir.path())).expect("write config");
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the baseline daemon");
    let socket = dir.path().join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while control::request(&socket, &json!({"verb": "status"}), None)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the baseline daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = import(&socket, None, lines).await;
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn rate(d: Duration) -> String {
    format!(
        "{:.2} s ({:.0} policies/s)",
        d.as_secs_f64(),
        POLICIES as f64 / d.as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes "--bench"; nothing else is taken.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let lines = lines(now);

    let mut after: Vec<Duration> = Vec::new();
    for _ in 0..3 {
        after.push(in_process(None, &lines).await);
    }
    after.sort();
    let median = after[1];
    println!(
        "ctl import, {POLICIES} policies, batch {} (this build): median {} (runs: {})",
        control::IMPORT_BATCH,
        rate(median),
        after
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let one = in_process(Some(1), &lines).await;
    println!(
        "ctl import, {POLICIES} policies, batch 1 (the one-at-a-time path): {}",
        rate(one)
    );
    if let Ok(binary) = std::env::var("CTL_IMPORT_BASELINE") {
        let base = external(&binary, &lines).await;
        println!(
            "ctl import, {POLICIES} policies, baseline daemon {binary}: {}",
            rate(base)
        );
    }
    if median > BUDGET {
        eprintln!(
            "over budget: {:.2} s > {} s",
            median.as_secs_f64(),
            BUDGET.as_secs()
        );
        std::process::exit(1);
    }
}

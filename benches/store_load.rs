//! Startup cost of the policy journal (`src/cache/journal/`): writes 100,000 realistic policy
//! records through the store's own API, then times `Store::open` on that journal three times. The
//! budget is 1 s per open for 100,000 entries.
//!
//! Run: `cargo bench --bench store_load` (release build). Exits non-zero when over budget.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_sts_policyd::cache::PolicyEntry;
use mta_sts_policyd::cache::journal::{Record, Store};
use mta_sts_policyd::policy::parse_policy;

const ENTRIES: usize = 100_000;
const BUDGET: Duration = Duration::from_secs(1);

fn record(i: usize, now: SystemTime) -> Record {
    let domain = format!("d{i:05}.example");
    let mode = if i.is_multiple_of(5) {
        "testing"
    } else {
        "enforce"
    };
    let third = if i.is_multiple_of(3) {
        format!("mx: backup.{domain}\n")
    } else {
        String::new()
    };
    let body = format!(
        "version: STSv1\nmode: {mode}\nmx: mx1.{domain}\nmx: *.mail-{i}.example.net\n{third}max_age: {}\n",
        604_800 + (i % 300) * 86_400
    );
    let policy = parse_policy(body.as_bytes()).expect("bench policy parses");
    let fetched = now - Duration::from_secs((i % 86_400) as u64);
    let id = format!("20240{}T{:06}", i % 10, i);
    Record::Policy {
        domain: domain.into(),
        entry: Arc::new(PolicyEntry::new(id, policy, fetched)),
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs(),
        );

    let started = Instant::now();
    {
        let (store, _) = Store::open(dir.path(), now).expect("open empty store");
        for i in 0..ENTRIES - 1 {
            store.write_nowait(record(i, now));
        }
        // FIFO: once the last record is durable, so is every one queued before it.
        store
            .write_blocking(record(ENTRIES - 1, now))
            .expect("write journal");
        let stats = store.stats();
        println!(
            "wrote {ENTRIES} policy records in {:.0} ms (group commit): {} records, {} bytes",
            started.elapsed().as_secs_f64() * 1e3,
            stats.journal_records,
            stats.journal_bytes
        );
    }

    let journal = dir.path().join("policies.journal");
    let mut over_budget = false;
    for run in 1..=3 {
        let t = Instant::now();
        let (store, loaded) = Store::open(dir.path(), now).expect("open");
        let elapsed = t.elapsed();
        over_budget |= elapsed > BUDGET;
        assert_eq!(loaded.policies.len(), ENTRIES, "every entry loads");
        println!(
            "open #{run}: {} entries loaded, {} records, {} skipped, {:.1} ms, {} bytes on disk",
            loaded.policies.len(),
            loaded.records,
            loaded.skipped,
            elapsed.as_secs_f64() * 1e3,
            std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0)
        );
        drop(store);
    }

    // For comparison: an open that must also compact (one superseded record makes it dirty).
    {
        let (store, _) = Store::open(dir.path(), now).expect("open");
        store.write_blocking(record(0, now)).expect("write");
    }
    let t = Instant::now();
    let (store, loaded) = Store::open(dir.path(), now).expect("open");
    let elapsed = t.elapsed();
    over_budget |= elapsed > BUDGET;
    println!(
        "open with compaction: {} entries loaded, {:.1} ms, {} bytes on disk",
        loaded.policies.len(),
        elapsed.as_secs_f64() * 1e3,
        std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0)
    );
    drop(store);

    // The real daemon on this journal: start-up to "ready" and its resident memory with the
    // policies loaded (its cache plus the journal writer's copy).
    let (ready, rss) = daemon_on(dir.path());
    println!(
        "serve with {ENTRIES} persisted policies: ready after {:.0} ms, RSS {:.1} MiB",
        ready.as_secs_f64() * 1e3,
        rss as f64 / 1024.0
    );

    if over_budget {
        println!("FAIL: an open took longer than {BUDGET:?} for {ENTRIES} entries");
        std::process::exit(1);
    }
    println!("ok: every open within {BUDGET:?}");
}

/// Starts `mta-sts-policyd serve` with `state` as its cache directory; returns the time until it
/// logged "ready" and its VmRSS (KiB) then.
fn daemon_on(state: &std::path::Path) -> (Duration, u64) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let config = state.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[socketmap]\nlisten = [\"inet:127.0.0.1:0\"]\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[cache]\ndir = \"{}\"\n",
            state.display()
        ),
    )
    .expect("write config");
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
        .arg("-c")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let stderr = child.stderr.take().expect("stderr");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("ready") {
            break;
        }
    }
    let ready = t.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    (ready, rss)
}

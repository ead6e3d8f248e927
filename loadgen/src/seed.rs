//! `seed`: writes a policy journal with N cached enforce policies `d{i}.example`, through the
//! daemon's own journal writer, so that a daemon started on that directory answers them from its
//! cache (RFC 8461 §3.2: a policy stays valid for `max_age` after its fetch).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_sts_policyd::cache::PolicyEntry;
use mta_sts_policyd::cache::journal::{Record, Store};
use mta_sts_policyd::policy::parse_policy;

use crate::cli::{SeedArgs, fail};

/// Upper bound of `--domains`, so that no typo fills the disk.
const MAX_SEED: u64 = 10_000_000;

fn seed_record(i: u64, now: SystemTime) -> Record {
    let domain = format!("d{i}.example");
    let body = format!(
        "version: STSv1\nmode: enforce\nmx: mx1.{domain}\nmx: mx2.{domain}\nmax_age: 604800\n"
    );
    let policy = parse_policy(body.as_bytes()).expect("seed policy parses");
    Record::Policy {
        domain: domain.into(),
        entry: Arc::new(PolicyEntry::new("seed1".into(), policy, now)),
    }
}

pub fn cmd_seed(a: SeedArgs) -> i32 {
    if a.domains == 0 || a.domains > MAX_SEED {
        return fail(format!("--domains must be within 1..={MAX_SEED}"));
    }
    let journal = a.dir.join("policies.journal");
    if journal.exists() {
        return fail(format!(
            "{} exists; seed an empty directory",
            journal.display()
        ));
    }
    // Whole seconds, like the daemon's records.
    let now = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs(),
        );
    let t = Instant::now();
    let (store, loaded) = match Store::open(&a.dir, now) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    drop(loaded);
    for i in 0..a.domains - 1 {
        let r = seed_record(i, now);
        // Every 8192 records wait for durability, so that the writer's queue (and this
        // process's memory) stays small; the writer still commits up to 4096 at a time.
        if (i + 1) % 8192 == 0 {
            if let Err(e) = store.write_blocking(r) {
                return fail(e);
            }
        } else {
            store.write_nowait(r);
        }
    }
    // The writer is FIFO: once the last record is durable, so is every one before it.
    if let Err(e) = store.write_blocking(seed_record(a.domains - 1, now)) {
        return fail(e);
    }
    let stats = store.stats();
    drop(store);
    let elapsed = t.elapsed();
    println!(
        "seeded {} domains (d0.example..d{}.example, enforce, 2 mx, max_age 604800) in {:.0} ms: \
         journal {} records, {} bytes, {}",
        a.domains,
        a.domains - 1,
        elapsed.as_secs_f64() * 1e3,
        stats.journal_records,
        stats.journal_bytes,
        journal.display()
    );
    if stats.write_errors > 0 || stats.journal_records as u64 != a.domains {
        return fail(format!(
            "journal incomplete: {} records, {} write errors",
            stats.journal_records, stats.write_errors
        ));
    }
    0
}

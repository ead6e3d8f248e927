//! `seed`: writes a policy journal with N cached enforce policies `d{i}.example`, each with
//! `--mx` mx lines, through the daemon's own journal writer and `Record` encoding, so that a
//! daemon started on that directory answers them from its cache (RFC 8461 §3.2: a policy stays
//! valid for `max_age` after its fetch).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_sts_policyd::cache::PolicyEntry;
use mta_sts_policyd::cache::journal::{Record, Store, StoreStats};
use mta_sts_policyd::policy::parse_policy;

use crate::cli::{SeedArgs, fail};

/// Upper bound of `--domains`, so that no typo fills the disk.
const MAX_SEED: u64 = 10_000_000;
/// Upper bound of `--mx`: real policies list a handful; this keeps a body far below the 64 KiB
/// limit of RFC 8461 §3.3.
pub const MAX_MX: usize = 64;

/// The `i`-th mx pattern of `domain`'s policy: `mx1.<domain>`, `mx2.<domain>`, then the
/// wildcard `*.backup.<domain>` (RFC 8461 §3.2 allows a leading `*.`), then `mx3.<domain>`,
/// `mx4.<domain>`, ... The shapes real policies have: a few named hosts and a wildcard.
fn mx_pattern(i: usize, domain: &str) -> String {
    match i {
        0 | 1 => format!("mx{}.{domain}", i + 1),
        2 => format!("*.backup.{domain}"),
        _ => format!("mx{i}.{domain}"),
    }
}

/// The policy body of `domain` with `mx` mx lines (RFC 8461 §3.2 field order of its example).
fn policy_body(domain: &str, mx: usize) -> String {
    let mut body = String::from("version: STSv1\nmode: enforce\n");
    for i in 0..mx {
        body.push_str("mx: ");
        body.push_str(&mx_pattern(i, domain));
        body.push('\n');
    }
    body.push_str("max_age: 604800\n");
    body
}

fn seed_record(i: u64, mx: usize, now: SystemTime) -> Result<Record, String> {
    let domain = format!("d{i}.example");
    let policy = parse_policy(policy_body(&domain, mx).as_bytes())
        .map_err(|e| format!("seed policy of {domain}: {e}"))?;
    Ok(Record::Policy {
        domain: domain.into(),
        entry: Arc::new(PolicyEntry::new("seed1".into(), policy, now)),
    })
}

/// Writes `domains` policies into a journal in `dir` (which must not hold one yet) and returns
/// the writer's statistics once every record is durable.
fn seed_dir(dir: &Path, domains: u64, mx: usize, now: SystemTime) -> Result<StoreStats, String> {
    if domains == 0 || domains > MAX_SEED {
        return Err(format!("--domains must be within 1..={MAX_SEED}"));
    }
    if mx == 0 || mx > MAX_MX {
        // RFC 8461 §3.2: mode enforce needs at least one mx line.
        return Err(format!("--mx must be within 1..={MAX_MX}"));
    }
    let journal = journal_path(dir);
    if journal.exists() {
        return Err(format!(
            "{} exists; seed an empty directory",
            journal.display()
        ));
    }
    let (store, loaded) = Store::open(dir, now).map_err(|e| e.to_string())?;
    drop(loaded);
    for i in 0..domains - 1 {
        let r = seed_record(i, mx, now)?;
        // Every 8192 records wait for durability, so that the writer's queue (and this
        // process's memory) stays small; the writer still commits up to 4096 at a time.
        if (i + 1) % 8192 == 0 {
            store.write_blocking(r).map_err(|e| e.to_string())?;
        } else {
            store.write_nowait(r);
        }
    }
    // The writer is FIFO: once the last record is durable, so is every one before it.
    store
        .write_blocking(seed_record(domains - 1, mx, now)?)
        .map_err(|e| e.to_string())?;
    let stats = store.stats();
    drop(store);
    if stats.write_errors > 0 || stats.journal_records as u64 != domains {
        return Err(format!(
            "journal incomplete: {} records, {} write errors",
            stats.journal_records, stats.write_errors
        ));
    }
    Ok(stats)
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("policies.journal")
}

/// Now, in whole seconds, like the daemon's records.
fn now_whole_seconds() -> Result<SystemTime, String> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

pub fn cmd_seed(a: SeedArgs) -> i32 {
    let now = match now_whole_seconds() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let t = Instant::now();
    let stats = match seed_dir(&a.dir, a.domains, a.mx, now) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let elapsed = t.elapsed();
    println!(
        "seeded {} domains (d0.example..d{}.example, enforce, {} mx, max_age 604800) in {:.0} ms: \
         journal {} records, {} bytes, {}",
        a.domains,
        a.domains - 1,
        a.mx,
        elapsed.as_secs_f64() * 1e3,
        stats.journal_records,
        stats.journal_bytes,
        journal_path(&a.dir).display()
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    use mta_sts_policyd::policy::Mode;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TmpDir(PathBuf);

    impl TmpDir {
        fn new() -> TmpDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "loadgen-seed-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("create temporary directory");
            TmpDir(path)
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn patterns(e: &PolicyEntry) -> Vec<String> {
        e.policy.mx.iter().map(|m| m.policy_form()).collect()
    }

    /// The entry `seed` writes for `d{i}.example` with `mx` mx lines.
    fn entry(i: u64, mx: usize) -> (mta_sts_policyd::cache::Name, Arc<PolicyEntry>) {
        let now = now_whole_seconds().expect("clock");
        match seed_record(i, mx, now).expect("record") {
            Record::Policy { domain, entry } => (domain, entry),
            _ => panic!("not a policy record"),
        }
    }

    #[test]
    fn three_mx_lines_two_hosts_and_a_wildcard_rfc8461_3_2() {
        let (domain, entry) = entry(7, 3);
        assert_eq!(&*domain, "d7.example");
        assert_eq!(entry.policy.mode, Mode::Enforce);
        assert_eq!(entry.policy.max_age, 604_800);
        assert_eq!(
            patterns(&entry),
            ["mx1.d7.example", "mx2.d7.example", "*.backup.d7.example"]
        );
        let mx: Vec<_> = entry.policy.mx.iter().collect();
        assert!(!mx[0].is_wildcard() && !mx[1].is_wildcard() && mx[2].is_wildcard());
        // RFC 8461 §4.1: the wildcard covers exactly one extra label.
        assert!(mx[2].matches("b1.backup.d7.example"));
        assert!(!mx[2].matches("backup.d7.example"));
    }

    #[test]
    fn mx_count_is_as_asked_with_one_wildcard_at_most() {
        for n in [1, 2, 3, 5, MAX_MX] {
            let (_, entry) = entry(0, n);
            let p = patterns(&entry);
            assert_eq!(p.len(), n);
            assert_eq!(p[0], "mx1.d0.example");
            assert_eq!(
                entry.policy.mx.iter().filter(|m| m.is_wildcard()).count(),
                usize::from(n >= 3)
            );
            let mut unique = p.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), n, "no duplicate patterns: {p:?}");
        }
        assert_eq!(
            patterns(&entry(0, 5).1),
            [
                "mx1.d0.example",
                "mx2.d0.example",
                "*.backup.d0.example",
                "mx3.d0.example",
                "mx4.d0.example"
            ]
        );
    }

    #[test]
    fn the_daemons_journal_loader_reads_back_every_seeded_policy() {
        let dir = TmpDir::new();
        let now = now_whole_seconds().expect("clock");
        let stats = seed_dir(&dir.0, 20_000, 3, now).expect("seed");
        assert_eq!(stats.journal_records, 20_000);
        assert_eq!(stats.write_errors, 0);

        let (store, loaded) = Store::open(&dir.0, now).expect("reopen");
        assert_eq!(loaded.policies.len(), 20_000);
        assert_eq!((loaded.skipped, loaded.expired), (0, 0));
        assert!(loaded.negatives.is_empty());
        // A freshly seeded journal holds exactly the live records: no rewrite at open.
        assert_eq!(store.stats().compactions, 0);
        let mut seen = vec![false; 20_000];
        for (domain, entry) in &loaded.policies {
            let i: usize = domain
                .strip_prefix('d')
                .and_then(|d| d.strip_suffix(".example"))
                .and_then(|d| d.parse().ok())
                .expect("a seeded domain name");
            assert!(!seen[i], "{domain} twice");
            seen[i] = true;
            assert_eq!(
                patterns(entry),
                [
                    format!("mx1.{domain}"),
                    format!("mx2.{domain}"),
                    format!("*.backup.{domain}")
                ]
            );
            assert_eq!(entry.fetched, now);
            assert!(entry.is_valid(now));
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn refuses_a_directory_that_already_holds_a_journal_and_bad_counts() {
        let dir = TmpDir::new();
        let now = now_whole_seconds().expect("clock");
        assert!(seed_dir(&dir.0, 0, 3, now).is_err());
        assert!(seed_dir(&dir.0, 10, 0, now).is_err());
        assert!(seed_dir(&dir.0, 10, MAX_MX + 1, now).is_err());
        seed_dir(&dir.0, 10, 3, now).expect("first seed");
        let e = seed_dir(&dir.0, 10, 3, now).expect_err("second seed");
        assert!(e.contains("exists"), "{e}");
    }
}

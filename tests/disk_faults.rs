//! A full or read-only file system under the policy journal: answers keep coming from memory,
//! the failure is counted and logged, and once space or write access is back the journal is
//! rewritten with everything, including the policies whose writes failed. The full disk needs a
//! small tmpfs, so it runs only where `mount` is allowed (root); the read-only start uses a
//! tmpfs remounted read-only as root (file modes do not stop root) and a mode 0555 directory
//! otherwise.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::World;
use common::harness::{ConfigText, TestDaemon, enforce_body};
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn enospc_keeps_serving_counts_and_recovers() {
    let w = World::start().await;
    let domains: Vec<String> = (0..60).map(|i| format!("d{i}.test")).collect();
    for d in &domains {
        w.good_domain(d, "1", &enforce_body(&[&format!("mx.{d}")]))
            .await;
    }
    let fs = w.dir().join("smallfs");
    std::fs::create_dir_all(&fs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): disk-full test skipped");
        return;
    }
    let _mount = Mount(fs.clone());
    let state = fs.join("state");
    let d = ConfigText::of(&w).state_dir(&state).start().await;

    // Fill the file system.
    let filler = fs.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    // New policies: the journal's last page fills, then appends fail. Every one is answered.
    let errors = |d: &TestDaemon| d.daemon.resolver().metrics().snapshot()["mta_sts_store_write_errors_total"];
    let mut answered = Vec::new();
    for dom in &domains[..50] {
        assert_eq!(
            d.ask(dom).await,
            format!("OK secure match=mx.{dom} servername=hostname")
        );
        answered.push(dom.clone());
        if errors(&d) > 0 {
            break;
        }
    }
    let failed_at = answered.len();
    assert!(
        errors(&d) >= 1,
        "no write error after {failed_at} new policies"
    );

    // Space again: the next retry (at most a second after the failure, backing off from
    // there) brings the journal up to date, failed records included.
    std::fs::remove_file(&filler).unwrap();
    let last = &domains[55];
    assert_eq!(
        d.ask(last).await,
        format!("OK secure match=mx.{last} servername=hostname")
    );
    answered.push(last.clone());
    let journal = state.join("policies.journal");
    let missing = |text: &str| {
        answered
            .iter()
            .find(|dom| !text.contains(&format!("\"d\":\"{dom}\"")))
            .cloned()
    };
    let journal = wait_for(&journal, |text| missing(text).is_none()).await;
    if let Some(dom) = missing(&journal) {
        panic!("{dom} missing");
    }
    eprintln!(
        "ENOSPC: first failed write at new policy #{failed_at}; {} error(s) counted; all {} answered policies in the journal after recovery",
        errors(&d),
        answered.len()
    );
    d.daemon.shutdown().await;
}

/// The journal's text once `done` says so, or after 30 s (a few retries) as it is then.
async fn wait_for(journal: &Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(journal).unwrap_or_default();
        if done(&text) || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(socket: &Path) -> Value {
    let lines = control::request(socket, &json!({"verb": "status"}), None)
        .await
        .unwrap();
    lines.last().cloned().unwrap()
}

/// Makes the state directory unwritable and writable again: as root by remounting its own
/// tmpfs, otherwise with the directory's mode (the journal then cannot be replaced).
enum Lock {
    Mount(std::path::PathBuf),
    Mode(std::path::PathBuf),
}

impl Lock {
    fn set(&self, writable: bool) {
        match self {
            Lock::Mount(fs) => {
                let how = if writable { "remount,rw" } else { "remount,ro" };
                let ok = Command::new("mount").args(["-o", how]).arg(fs).status();
                assert!(ok.is_ok_and(|s| s.success()), "mount -o {how}");
            }
            Lock::Mode(dir) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = if writable { 0o700 } else { 0o555 };
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_read_only_state_directory_starts_from_the_journal_and_catches_up() {
    let w = World::start().await;
    for d in ["old.test", "new.test"] {
        w.good_domain(d, "1", &enforce_body(&[&format!("mx.{d}")]))
            .await;
    }
    let ok = |d: &str| format!("OK secure match=mx.{d} servername=hostname");
    let fs = w.dir().join("statefs");
    std::fs::create_dir_all(&fs).unwrap();
    let state = fs.join("state");
    let (lock, _mount) = if nix::unistd::geteuid().is_root() {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&fs)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("root, but cannot mount a tmpfs here: read-only start test skipped");
            return;
        }
        (Lock::Mount(fs.clone()), Some(Mount(fs.clone())))
    } else {
        (Lock::Mode(state.clone()), None)
    };
    let cfg = ConfigText::of(&w).state_dir(&state);
    let sock = w.dir().join("control.sock");
    let journal = state.join("policies.journal");

    // A first run learns old.test; then a crash leaves a torn tail, which the next start must
    // rewrite before it can append.
    let d = cfg.start().await;
    assert_eq!(d.ask("old.test").await, ok("old.test"));
    d.daemon.shutdown().await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(b"0123abcd {\"v\"").unwrap();
    drop(f);
    lock.set(false);

    // It starts anyway, and says why the journal is read-only.
    let d = cfg.start().await;
    let st = status(&sock).await;
    let why = st["journal"]["read_only"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.starts_with(&format!("state directory {}: ", state.display())),
        "{st}"
    );
    let text = control::render("status", &[st]);
    assert!(
        text.contains(&format!("journal: read-only ({why})\n")),
        "{text}"
    );
    assert!(d.daemon.status_line().ends_with("; journal read-only"));
    assert_eq!(d.daemon.gauges().journal_read_only, 1);
    let errors = |d: &TestDaemon| d.daemon.resolver().metrics().snapshot()["mta_sts_store_write_errors_total"];
    assert!(errors(&d) >= 1, "the failed start-up write is counted");

    // Answers come from what was loaded, and new policies are answered from memory.
    assert_eq!(d.ask("old.test").await, ok("old.test"));
    assert_eq!(w.fetches("old.test"), 1, "served from the loaded journal");
    assert_eq!(d.ask("new.test").await, ok("new.test"));

    // Write access is back: a retry rewrites the journal with the policy learnt meanwhile.
    lock.set(true);
    let text = wait_for(&journal, |t| t.contains("\"d\":\"new.test\"")).await;
    assert!(text.contains("\"d\":\"old.test\""), "{text}");
    assert!(text.contains("\"d\":\"new.test\""), "{text}");
    assert!(!text.contains("0123abcd") && text.ends_with('\n'), "{text}");
    let st = status(&sock).await;
    assert_eq!(st["journal"]["read_only"], Value::Null, "{st}");
    assert!(control::render("status", &[st]).contains("journal: writable\n"));
    assert_eq!(d.daemon.gauges().journal_read_only, 0);
    eprintln!(
        "read-only start ({}): {why}; {} write error(s) counted",
        match lock {
            Lock::Mount(_) => "tmpfs remounted read-only",
            Lock::Mode(_) => "directory mode 0555",
        },
        errors(&d)
    );
    d.daemon.shutdown().await;
}

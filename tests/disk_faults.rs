//! A full disk under the policy journal: answers keep coming from memory, the failure is counted
//! and logged, and once space is back the journal is rewritten with everything, including the
//! policy whose write failed. Needs a small tmpfs, so it runs only where `mount` is allowed (root).

mod common;

use std::io::Write;
use std::process::Command;

use common::World;
use common::harness::{ConfigText, TestDaemon, enforce_body};

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

    // Space again: the next write brings the journal up to date, failed records included.
    std::fs::remove_file(&filler).unwrap();
    let last = &domains[55];
    assert_eq!(
        d.ask(last).await,
        format!("OK secure match=mx.{last} servername=hostname")
    );
    answered.push(last.clone());
    let journal = std::fs::read_to_string(state.join("policies.journal")).unwrap();
    for dom in &answered {
        assert!(
            journal.contains(&format!("\"d\":\"{dom}\"")),
            "{dom} missing"
        );
    }
    eprintln!(
        "ENOSPC: first failed write at new policy #{failed_at}; {} error(s) counted; all {} answered policies in the journal after recovery",
        errors(&d),
        answered.len()
    );
    d.daemon.shutdown().await;
}

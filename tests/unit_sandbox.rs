//! The packaged unit (systemd/mta-sts-policyd.service) forbids the chown family
//! (`SystemCallFilter=~@privileged`, systemd.exec(5), answered with EPERM). systemd is not PID 1
//! where the tests run, so the daemon cannot be started under the real filter; instead it is
//! started as the unit starts it (its own user, `Group=` as primary group, no `[daemon] user`)
//! under strace, which must record no chown, fchown, fchownat or lchown call while
//! `[control] group` names that group.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::harness::{ConfigText, SocketmapClient, good_world};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");
const UNIT: &str = include_str!("../systemd/mta-sts-policyd.service");

fn strace_available() -> bool {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // CI installs strace (.ci/run): there a missing strace is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is needed under CI=true"
        );
        eprintln!("strace is not installed: the chown check is skipped");
    }
    found
}

/// Starts `serve` under `strace -f -e trace=/chown`, waits for its socketmap answer, stops it with
/// SIGTERM and returns the chown-family calls strace recorded.
async fn chown_calls_at_start(group: &str) -> Vec<String> {
    let w = good_world().await;
    let dir = w.dir();
    let trace = dir.join(format!("strace-{group}.txt"));
    let text =
        ConfigText::of(&w).control_socket(&dir.join("ctl.sock"), &format!("group = \"{group}\""));
    let cfg = dir.join(format!("unit-{group}.toml"));
    std::fs::write(&cfg, text.as_str()).unwrap();
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=/chown", "-o"])
        .arg(&trace)
        .arg(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let stderr = strace.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no ready line; log so far: {log:#?}"));
        if line.contains("listening") && line.contains("socketmap") {
            let a = line.split("inet:").nth(1).unwrap();
            let a: String = a
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            addr = Some(a.parse().unwrap());
        }
        let ready = line.contains("ready") && addr.is_some();
        log.push(line);
        if ready {
            break;
        }
    }
    let mut c = SocketmapClient::connect(addr.unwrap()).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );
    // The daemon is strace's child: stop it, not strace, so that strace writes its whole trace.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || strace.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}; log: {log:#?}");
    std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("chown"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_forbids_the_chown_family_and_runs_with_its_own_group() {
    let lines: Vec<&str> = UNIT.lines().map(str::trim).collect();
    for needed in [
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "Group=mta-sts-policyd",
        "User=mta-sts-policyd",
    ] {
        assert!(lines.contains(&needed), "the unit lacks {needed}");
    }
}

#[tokio::test]
async fn control_group_equal_to_the_primary_group_needs_no_chown() {
    if !strace_available() {
        return;
    }
    let gid = nix::unistd::getegid();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap().name;
    let calls = chown_calls_at_start(&group).await;
    assert!(calls.is_empty(), "{calls:#?}");

    // The trace does see a chown when one is needed: as root, a group other than ours.
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let other = ["daemon", "nogroup", "adm"]
        .into_iter()
        .find(|n| {
            nix::unistd::Group::from_name(n)
                .ok()
                .flatten()
                .is_some_and(|g| g.gid != gid)
        })
        .expect("a second group");
    let calls = chown_calls_at_start(other).await;
    assert!(calls.iter().any(|l| l.contains("ctl.sock")), "{calls:#?}");
}

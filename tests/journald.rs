//! Logging under systemd: with `JOURNAL_STREAM` naming standard error (systemd.exec(5)), the
//! daemon's log events arrive as native-protocol datagrams whose fields are journal fields
//! (`DOMAIN=`, `ID=`, `MODE=`, `CLASS=`, `PRIORITY=`, `MESSAGE=`); elsewhere, and when the journal
//! socket cannot be reached, they are text on standard error. The journal here is a unix
//! datagram socket of the test, named through `MTA_STS_POLICYD_JOURNAL_SOCKET`.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness::{config_text, enforce_body};
use common::{Http, World};
use mta_sts_policyd::serve::control;
use serde_json::json;
use tokio::net::UnixDatagram;

/// One journal entry: field name to value.
type Entry = HashMap<String, String>;

/// Parses a native-protocol datagram: `NAME=value\n`, or `NAME\n` + u64 LE length + value +
/// `\n`.
fn parse(mut d: &[u8]) -> Entry {
    let mut out = Entry::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').expect("field ends");
        let head = &d[..nl];
        if let Some(eq) = head.iter().position(|&b| b == b'=') {
            out.insert(
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                String::from_utf8_lossy(&head[eq + 1..]).into_owned(),
            );
            d = &d[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(head).into_owned();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.insert(
                name,
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            );
            assert_eq!(rest[8 + len], b'\n');
            d = &rest[8 + len + 1..];
        }
    }
    out
}

struct Daemon {
    child: Child,
    stderr: PathBuf,
    control: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the daemon's standard error is set up.
enum Journal<'a> {
    /// No `JOURNAL_STREAM`: a service started by hand or by another supervisor.
    Absent,
    /// `JOURNAL_STREAM` names standard error; the journal listens at this socket.
    At(&'a Path),
}

/// Starts `serve` with standard error in a file; waits until the control socket answers.
async fn start(w: &World, journal: Journal<'_>) -> Daemon {
    let cfg = w.dir().join("serve.toml");
    std::fs::write(&cfg, config_text(w, "")).unwrap();
    let stderr = w.dir().join("stderr.log");
    let file = std::fs::File::create(&stderr).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"));
    cmd.arg("-c")
        .arg(&cfg)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(file);
    if let Journal::At(socket) = journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env("MTA_STS_POLICYD_JOURNAL_SOCKET", socket);
    }
    let child = cmd.spawn().unwrap();
    let control = w.dir().join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while control::request(&control, &json!({"verb": "status"}), None)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Daemon {
        child,
        stderr,
        control,
    }
}

/// A world with a good domain and one whose policy fetch fails (HTTP 503).
async fn world() -> World {
    let w = World::start().await;
    w.good_domain("good.test", "id1", &enforce_body(&["mx.good.test"]))
        .await;
    w.set_sts("broken.test", "b1").await;
    w.set_http("broken.test", Http::status(503, None)).await;
    w
}

/// Real events of the daemon: a policy fetched (domain, id, mode), a fetch failure (class), an
/// eviction by the operator (a warning).
async fn events(d: &Daemon) {
    for req in [
        json!({"verb": "refresh", "domain": "good.test"}),
        json!({"verb": "refresh", "domain": "broken.test"}),
        json!({"verb": "evict", "domain": "good.test"}),
    ] {
        let r = control::request(&d.control, &req, None).await.unwrap();
        assert_eq!(r.last().unwrap()["ok"], true, "{req}: {r:?}");
    }
}

/// Reads the journal socket as journald does, from the start, so the daemon never finds it
/// full; the entries received so far.
fn collect(journal: UnixDatagram) -> Arc<Mutex<Vec<Entry>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let out = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = journal.recv(&mut buf).await {
            if n > 0 {
                out.lock().unwrap().push(parse(&buf[..n]));
            }
        }
    });
    got
}

fn find<'a>(entries: &'a [Entry], message: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m.starts_with(message)))
        .unwrap_or_else(|| panic!("no entry {message:?} in {entries:#?}"))
}

#[tokio::test]
async fn under_systemd_the_fields_of_a_log_event_are_journal_fields() {
    let w = world().await;
    let socket = w.dir().join("journal.sock");
    let got = collect(UnixDatagram::bind(&socket).unwrap());
    let d = start(&w, Journal::At(&socket)).await;
    events(&d).await;
    // Logged before the reply was sent; the reader may still be a moment behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = got.lock().unwrap().clone();
        if got
            .iter()
            .any(|e| e.get("MESSAGE").is_some_and(|m| m.starts_with("evicted")))
        {
            break got;
        }
        assert!(Instant::now() < deadline, "no eviction entry: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let fetched = find(&got, "policy fetched");
    assert_eq!(fetched["DOMAIN"], "good.test");
    assert_eq!(fetched["ID"], "id1");
    assert_eq!(fetched["MODE"], "enforce");
    assert_eq!(fetched["PRIORITY"], "6");
    assert_eq!(fetched["SYSLOG_IDENTIFIER"], "mta-sts-policyd");
    // journalctl shows MESSAGE only: it carries the fields as the text log does.
    assert!(
        fetched["MESSAGE"].contains("domain=good.test"),
        "{fetched:?}"
    );

    let failed = find(&got, "policy fetch failed");
    assert_eq!(failed["DOMAIN"], "broken.test");
    assert_eq!(failed["CLASS"], "http-status", "{failed:?}");

    let evicted = find(&got, "evicted by the operator");
    assert_eq!(evicted["DOMAIN"], "good.test");
    assert_eq!(evicted["PRIORITY"], "4");
}

/// Without `JOURNAL_STREAM`, and with it while the journal socket cannot be reached, the log is
/// text on standard error.
#[tokio::test]
async fn elsewhere_or_without_a_journal_socket_the_log_is_text_on_stderr() {
    for unreachable in [false, true] {
        let w = world().await;
        let socket = w.dir().join("journal.sock");
        let journal = UnixDatagram::bind(&socket).unwrap();
        let missing = w.dir().join("no-journal.sock");
        let d = start(
            &w,
            if unreachable {
                Journal::At(&missing)
            } else {
                Journal::Absent
            },
        )
        .await;
        events(&d).await;
        let text = std::fs::read_to_string(&d.stderr).unwrap();
        for want in [
            "policy fetched",
            "domain=",
            "good.test",
            "evicted by the operator",
        ] {
            assert!(
                text.contains(want),
                "unreachable={unreachable}: {want:?} not in {text}"
            );
        }
        let mut buf = [0u8; 1024];
        assert!(
            journal.try_recv(&mut buf).is_err(),
            "unreachable={unreachable}: a datagram arrived"
        );
    }
}

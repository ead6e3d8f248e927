//! The long control verbs against the real daemon: progress lines for `refresh --all`, `export`
//! and `import`, batched imports that give the same result as one policy at a time, and an
//! import whose client goes away (Ctrl-C): whole journalled batches stay, the rest is not
//! applied.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::World;
use common::harness::{TestDaemon, enforce_body};
use mta_sts_policyd::serve::control::{self, Seen};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

async fn ask(socket: &Path, req: Value) -> Value {
    let lines = control::request(socket, &req, None).await.unwrap();
    lines.last().cloned().unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An export line for `domain` with TXT id `id`, fetched `age` seconds ago.
fn line(domain: &str, id: &str, age: u64) -> String {
    json!({"domain": domain, "id": id, "fetched": now() - age,
           "policy": enforce_body(&[&format!("mx.{domain}")])})
    .to_string()
}

async fn cached_id(socket: &Path, domain: &str) -> Option<String> {
    let s = ask(socket, json!({"verb": "show", "domain": domain})).await;
    s["id"].as_str().map(str::to_string)
}

/// The client stops (its connection ends without `{"end":true}`) after five lines, with batches
/// of two: the two whole batches are applied and journalled, the fifth line is not.
#[tokio::test]
async fn an_interrupted_import_keeps_whole_journalled_batches_only() {
    let w = World::start().await;
    let _d = TestDaemon::start(&w).await;
    let sock = w.dir().join("control.sock");
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let mut text = json!({"verb": "import", "progress": true, "batch": 2}).to_string() + "\n";
    for i in 1..=5 {
        text += &line(&format!("d{i}.test"), "i1", 60);
        text += "\n";
    }
    s.write_all(text.as_bytes()).await.unwrap();
    // What a stopped client looks like to the daemon: the end of the stream, no "end" line.
    s.shutdown().await.unwrap();
    let mut replies = Vec::new();
    let mut lines = BufReader::new(s).lines();
    while let Some(l) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        replies.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    let (last, progress) = replies.split_last().unwrap();
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["imported"], 4, "{last}");
    assert_eq!(last["not_applied"], 1, "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("not applied"),
        "{last}"
    );
    // The first batch's progress line is sent at once; the second only if the interval passed.
    assert_eq!(
        progress[0],
        json!({"progress": {"done": 2}}),
        "{progress:?}"
    );
    assert!(
        progress[1..].is_empty() || progress[1..] == [json!({"progress": {"done": 4}})],
        "{progress:?}"
    );
    for i in 1..=4 {
        assert_eq!(
            cached_id(&sock, &format!("d{i}.test")).await.as_deref(),
            Some("i1")
        );
    }
    assert_eq!(cached_id(&sock, "d5.test").await, None);
    // Journalled before they were cached: the journal holds exactly the four.
    let st = ask(&sock, json!({"verb": "status"})).await;
    assert_eq!(st["journal"]["records"], 4, "{st}");
    assert_eq!(st["journal"]["live"], 4, "{st}");
}

/// A batch gives the answer importing line by line gives, also when a domain comes twice in one
/// batch (older then newer, newer then older) or is already cached with a fresher fetch.
#[tokio::test]
async fn a_batched_import_equals_importing_one_line_at_a_time() {
    let lines = vec![
        line("twice-up.test", "old", 600),
        line("twice-up.test", "new", 60),
        line("twice-down.test", "new", 60),
        line("twice-down.test", "old", 600),
        line("cached.test", "stale", 900),
        line("once.test", "one", 60),
    ];
    let mut results = Vec::new();
    for batch in [1, 1024] {
        let w = World::start().await;
        let _d = TestDaemon::start(&w).await;
        let sock = w.dir().join("control.sock");
        let first = control::request(
            &sock,
            &json!({"verb": "import"}),
            Some(vec![line("cached.test", "fresh", 30)]),
        )
        .await
        .unwrap();
        assert_eq!(first.last().unwrap()["imported"], 1);
        let r = control::request(
            &sock,
            &json!({"verb": "import", "batch": batch}),
            Some(lines.clone()),
        )
        .await
        .unwrap();
        let r = r.last().unwrap().clone();
        let mut ids = Vec::new();
        for d in [
            "twice-up.test",
            "twice-down.test",
            "cached.test",
            "once.test",
        ] {
            ids.push(cached_id(&sock, d).await);
        }
        let st = ask(&sock, json!({"verb": "status"})).await;
        results.push((r, ids, st["journal"]["live"].clone()));
    }
    let (r, ids, live) = &results[0];
    assert_eq!(
        (r["imported"].as_u64(), r["kept"].as_u64()),
        (Some(4), Some(2)),
        "{r}"
    );
    assert_eq!(
        ids,
        &[
            Some("new".to_string()),
            Some("new".to_string()),
            Some("fresh".to_string()),
            Some("one".to_string())
        ]
    );
    assert_eq!(live, &json!(4));
    assert_eq!(results[0], results[1], "batch of 1 and of 1024 differ");
}

/// `refresh --all` and `export` asked for progress: lines with done and total before the reply;
/// the export's first line gives the count of policies that follow.
#[tokio::test]
async fn long_verbs_send_progress_when_asked() {
    let w = World::start().await;
    let mut domains = Vec::new();
    for i in 0..3 {
        let d = format!("p{i}.test");
        w.good_domain(&d, "id1", &enforce_body(&[&format!("mx.{d}")]))
            .await;
        domains.push(d);
    }
    let d = TestDaemon::start(&w).await;
    for domain in &domains {
        d.ask(domain).await;
    }
    let sock = w.dir().join("control.sock");

    let mut seen = Vec::new();
    let r = control::request_with(
        &sock,
        &json!({"verb": "refresh", "all": true, "progress": true}),
        None,
        |s| {
            if let Seen::Progress(p) = s {
                seen.push(p.clone());
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        r.len(),
        1,
        "progress lines are not part of the reply: {r:?}"
    );
    assert_eq!(r[0]["refreshed"], 3, "{r:?}");
    assert_eq!(seen.first(), Some(&json!({"done": 0, "total": 3})));
    assert_eq!(seen.last(), Some(&json!({"done": 3, "total": 3})));

    let (mut totals, mut data) = (Vec::new(), 0);
    let r = control::request_with(
        &sock,
        &json!({"verb": "export", "progress": true}),
        None,
        |s| match s {
            Seen::Progress(p) => totals.push(p["total"].clone()),
            Seen::Line => data += 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(totals, [json!(3)]);
    assert_eq!(data, 3);
    assert_eq!(r.len(), 4, "three policies and the summary: {r:?}");
    assert_eq!(r[3]["count"], 3);

    // Without "progress", the replies are as before: no progress line.
    let r = control::request(&sock, &json!({"verb": "export"}), None)
        .await
        .unwrap();
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|l| l.get("progress").is_none()), "{r:?}");
}

/// Ctrl-C while the daemon works: the client exits 130 (as a shell reports SIGINT) and says what
/// the daemon keeps. The "daemon" here reads the whole request and never answers, so the
/// signal always arrives mid-request.
#[tokio::test]
async fn ctrl_c_stops_the_client_with_status_130_and_says_what_the_daemon_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let file = dir.path().join("import.jsonl");
    std::fs::write(
        &file,
        [line("a.test", "i1", 60), line("b.test", "i1", 60)].join("\n"),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
        .args(["ctl", "import"])
        .arg(&file)
        .arg("--socket")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut lines = BufReader::new(conn).lines();
    let mut got = Vec::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.contains("\"end\"") {
            break;
        }
        got.push(l);
    }
    assert_eq!(got.len(), 3, "the request and two policies: {got:?}");
    // The client waits for the reply with its SIGINT handler in place.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("Importing the file again is safe"),
        "{err}"
    );
}

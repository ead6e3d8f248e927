//! The binary itself: exit codes and messages of `check-config`, `query` against the test world,
//! and `serve` as a child process answering Postfix and stopping on SIGTERM.

mod common;

use std::process::Command;

use common::World;
use common::harness::{SocketmapClient, config_text, enforce_body, good_world};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");

#[test]
fn check_config_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dns]\ntimeout = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("dns.timeout"),
        "{err}"
    );

    std::fs::write(
        &bad,
        "[socketmap]\nlisten = [\"inet:127.0.0.1:1\"]\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));

    let missing = dir.path().join("missing.toml");
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("defaults") && text.contains("inet:127.0.0.1:8461"),
        "{text}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", "-c", example])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "EX_USAGE for bad arguments");
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn query_prints_record_policy_answers_and_reasons() {
    let w = World::start().await;
    w.good_domain("good.test", "abc123", &enforce_body(&["mx.good.test"]))
        .await;
    w.set_sts("broken.test", "1").await;
    w.set_http("broken.test", common::Http::status(404, None))
        .await;
    let cfg = w.dir().join("query.toml");
    std::fs::write(&cfg, config_text(&w, "")).unwrap();
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("-c")
                .arg(&cfg)
                .arg("query")
                .args(args)
                .output()
                .unwrap()
        })
    };

    let out = run(vec!["GOOD.test".into()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("v=STSv1; id=abc123"), "{text}");
    assert!(text.contains("mode: enforce"), "{text}");
    assert!(
        text.contains(
            "answer socketmap:default: 48:OK secure match=mx.good.test servername=hostname,"
        ),
        "{text}"
    );
    assert!(
        text.contains("answer tcp_table: 200 secure%20match=mx.good.test%20servername=hostname"),
        "{text}"
    );

    let out = run(vec!["broken.test".into(), "--json".into()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "fetch-failed");
    assert!(
        v["reason"].as_str().unwrap().contains("HTTP status 404"),
        "{v}"
    );
    assert_eq!(v["answers"]["socketmap:default"], "9:NOTFOUND ,");
    assert_eq!(v["answers"]["tcp_table"], "500 not%20found");

    let out = run(vec![".good.test".into(), "--json".into()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "skipped");
    assert!(v["reason"].as_str().unwrap().contains("parent"), "{v}");
}

#[tokio::test]
async fn serve_answers_postfix_and_stops_on_sigterm() {
    let w = good_world().await;
    let cfg = w.dir().join("serve.toml");
    std::fs::write(&cfg, config_text(&w, "")).unwrap();
    let (mut child, socketmap, _logs) = common::harness::serve_child(BIN, &cfg);
    let mut c = SocketmapClient::connect(socketmap).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}

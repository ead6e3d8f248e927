//! The binary itself: exit codes and messages of `check-config`, `query` against the test world,
//! and `serve` as a child process answering Postfix and stopping on SIGTERM.

mod common;

use std::path::Path;
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

    // Without --config, an absent default file means the defaults (only checkable where the
    // machine has no such file).
    if !Path::new("/etc/mta-sts-policyd/config.toml").exists() {
        let out = Command::new(BIN).arg("check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("defaults") && text.contains("inet:127.0.0.1:8461"),
            "{text}"
        );
    }

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
    // Values as the configuration file spells them, so they can be pasted back into it.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on_lookup_error=\"notfound\"") && text.contains("negative_ttl \"1h\""),
        "{text}"
    );

    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "EX_USAGE for bad arguments");
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// A file named with `--config` must exist: a typo never starts the daemon on the defaults.
#[test]
fn a_named_missing_config_file_is_an_error_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.toml");
    for args in [
        &["serve"][..],
        &["check-config"],
        &["query", "example.com"],
        &["ctl", "status"],
        &["ctl", "reload"],
    ] {
        let out = bounded(
            Command::new(BIN)
                .arg("-c")
                .arg(&missing)
                .args(args)
                .env("RUST_LOG", "info"),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: EX_CONFIG: {err}");
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("configuration error"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A directory where the file should be: unreadable, the same error.
    let out = Command::new(BIN)
        .arg("-c")
        .arg(dir.path())
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&dir.path().display().to_string()));
}

/// Runs `cmd` to its end; one still running after 15 s (a `serve` that started after all) is
/// killed and fails the test.
fn bounded(cmd: &mut Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after 15 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
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

/// `ctl` errors a new user meets first name what was tried and the way out.
#[test]
fn ctl_errors_name_the_path_and_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = Command::new(BIN)
        .args(["ctl", "status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "EX_UNAVAILABLE: {err}");
    assert!(err.contains(&*sock.to_string_lossy()), "{err}");
    assert!(
        err.contains("-c FILE") && err.contains("--socket PATH"),
        "{err}"
    );

    let missing = dir.path().join("policies.jsonl");
    let out = Command::new(BIN)
        .args(["ctl", "import"])
        .arg(&missing)
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
}

//! Every control verb end to end against the real daemon, plus the `ctl` client's table output
//! and a peer that is not allowed.

mod common;

use std::path::Path;

use common::World;
use common::harness::{ConfigText, TestDaemon, config_text, enforce_body};
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

async fn ask(socket: &Path, req: Value) -> Value {
    let lines = control::request(socket, &req, None).await.unwrap();
    lines.last().cloned().unwrap()
}

async fn world() -> World {
    let w = World::start().await;
    w.good_domain("good.test", "id1", &enforce_body(&["mx.good.test"]))
        .await;
    w.good_domain(
        "testing.test",
        "t1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    w
}

#[tokio::test]
async fn control_verbs() {
    let w = world().await;
    let d = TestDaemon::start(&w).await;
    let sock = w.dir().join("control.sock");
    for key in ["good.test", "testing.test", "none.test"] {
        d.ask(key).await;
    }
    d.ask("good.test").await;

    let st = ask(&sock, json!({"verb": "status"})).await;
    assert_eq!(st["ok"], true);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["entries"]["enforce"], 1);
    assert_eq!(st["entries"]["testing"], 1);
    assert_eq!(st["entries"]["negative"], 1);
    assert!(st["listeners"].as_array().unwrap().len() == 2);

    let l = ask(&sock, json!({"verb": "list"})).await;
    assert_eq!(l["count"], 3);
    let l = ask(&sock, json!({"verb": "list", "mode": "enforce"})).await;
    assert_eq!(l["entries"][0]["domain"], "good.test");
    assert_eq!(l["count"], 1);
    let l = ask(&sock, json!({"verb": "list", "expiring_within": "2d"})).await;
    assert_eq!(l["count"], 2, "both policies have max_age 1 day: {l}");
    let l = ask(&sock, json!({"verb": "list", "mode": "bogus"})).await;
    assert_eq!(l["ok"], false);

    let s = ask(&sock, json!({"verb": "show", "domain": "GOOD.test."})).await;
    assert_eq!(s["domain"], "good.test");
    assert_eq!(s["id"], "id1");
    assert_eq!(s["mode"], "enforce");
    assert_eq!(s["hits"], 1);
    assert_eq!(s["last_error"], Value::Null);
    assert!(s["policy"].as_str().unwrap().contains("mx: mx.good.test"));
    assert_eq!(
        s["answers"]["socketmap:default"],
        "48:OK secure match=mx.good.test servername=hostname,"
    );
    assert_eq!(
        s["answers"]["socketmap:strict"],
        s["answers"]["socketmap:default"]
    );
    assert_eq!(
        s["answers"]["tcp_table"],
        "200 secure%20match=mx.good.test%20servername=hostname"
    );
    let s = ask(&sock, json!({"verb": "show", "domain": "testing.test"})).await;
    assert_eq!(s["answers"]["socketmap:default"], "9:NOTFOUND ,");
    assert!(
        s["answers"]["socketmap:strict"]
            .as_str()
            .unwrap()
            .contains("OK secure")
    );

    // refresh: a new id is fetched now and the answer reflects it.
    w.set_sts("good.test", "id2").await;
    w.serve_policy("good.test", &enforce_body(&["mx2.good.test"]))
        .await;
    let r = ask(&sock, json!({"verb": "refresh", "domain": "good.test"})).await;
    assert_eq!(r["id"], "id2", "{r}");
    assert_eq!(
        d.ask("good.test").await,
        "OK secure match=mx2.good.test servername=hostname"
    );
    // A failing refresh keeps the policy and shows the error.
    w.set_http("good.test", common::Http::status(503, None))
        .await;
    w.set_sts("good.test", "id3").await;
    let r = ask(&sock, json!({"verb": "refresh", "domain": "good.test"})).await;
    assert_eq!(r["id"], "id2");
    assert!(
        r["last_error"]["reason"].as_str().unwrap().contains("503"),
        "{r}"
    );
    let all = ask(&sock, json!({"verb": "refresh", "all": true})).await;
    assert_eq!(
        all["refreshed"].as_u64().unwrap() + all["failed"].as_u64().unwrap(),
        2
    );

    let stats = ask(&sock, json!({"verb": "stats"})).await;
    assert!(
        stats["metrics"]["mta_sts_cache_hits_total"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // export, then import into a second daemon: merged by freshest fetch.
    let lines = control::request(&sock, &json!({"verb": "export"}), None)
        .await
        .unwrap();
    assert_eq!(lines.last().unwrap()["count"], 2);
    let exported: Vec<String> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.to_string())
        .collect();
    let w2 = World::start().await;
    let d2 = TestDaemon::start(&w2).await;
    let sock2 = w2.dir().join("control.sock");
    let imp = control::request(&sock2, &json!({"verb": "import"}), Some(exported.clone()))
        .await
        .unwrap();
    assert_eq!(imp.last().unwrap()["imported"], 2, "{imp:?}");
    // The second world has no DNS or web records: the answers come from the import.
    assert_eq!(
        d2.ask("good.test").await,
        "OK secure match=mx2.good.test servername=hostname"
    );
    let again = control::request(&sock2, &json!({"verb": "import"}), Some(exported))
        .await
        .unwrap();
    assert_eq!(again.last().unwrap()["imported"], 0);
    assert_eq!(again.last().unwrap()["kept"], 2);

    let e = ask(&sock, json!({"verb": "evict", "domain": "testing.test"})).await;
    assert_eq!(e["evicted"], true);
    let s = ask(&sock, json!({"verb": "show", "domain": "testing.test"})).await;
    assert_eq!(s["cached"], false);

    let p = ask(&sock, json!({"verb": "purge"})).await;
    assert_eq!(p["ok"], false, "purge needs --yes");
    let p = ask(&sock, json!({"verb": "purge", "yes": true})).await;
    assert_eq!(p["purged"], 2);
    assert_eq!(ask(&sock, json!({"verb": "list"})).await["count"], 0);

    let r = ask(&sock, json!({"verb": "reload"})).await;
    assert_eq!(r["ok"], false, "no reload channel in-process: {r}");
    let u = ask(&sock, json!({"verb": "frobnicate"})).await;
    assert!(u["error"].as_str().unwrap().contains("unknown verb"));
}

#[tokio::test]
async fn ctl_client_prints_tables_and_json() {
    let w = world().await;
    let d = TestDaemon::start(&w).await;
    d.ask("good.test").await;
    let cfg = w.dir().join("ctl.toml");
    std::fs::write(&cfg, config_text(&w, "")).unwrap();
    let cfg1 = cfg.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .arg("-c")
            .arg(&cfg1)
            .args(["ctl", "list"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    assert!(out.starts_with("DOMAIN"), "{out}");
    assert!(
        out.contains("good.test") && out.contains("enforce"),
        "{out}"
    );
    let cfg2 = w.dir().join("ctl.toml");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .arg("-c")
            .arg(&cfg2)
            .args(["ctl", "show", "good.test", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "enforce");
}

/// An imported fetch time more than a minute ahead of the daemon's clock is refused, line by
/// line: it would win every freshest-fetch merge against real fetches (RFC 8461 §3.2 counts
/// max_age from the fetch).
#[tokio::test]
async fn import_refuses_a_fetch_time_in_the_future() {
    let w = World::start().await;
    let d = TestDaemon::start(&w).await;
    let sock = w.dir().join("control.sock");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let line = |domain: &str, fetched: u64| {
        json!({"domain": domain, "id": "i1", "fetched": fetched,
               "policy": enforce_body(&[&format!("mx.{domain}")])})
        .to_string()
    };
    let lines = [
        line("past.test", now - 600),
        line("future.test", now + 3600),
        line("skewed.test", now + 30),
        line("far.test", u64::from(u32::MAX) * 1000),
    ];
    let file = w.dir().join("import.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, out) = tokio::task::spawn_blocking({
        let sock = sock.clone();
        move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
                .args(["ctl", "import"])
                .arg(&file)
                .arg("--socket")
                .arg(&sock)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("imported: 2"), "{out}");
    assert!(
        out.contains("future.test: \"fetched\" is 3") && out.contains("far.test: "),
        "{out}"
    );
    let r = control::request(&sock, &json!({"verb": "import"}), Some(lines.to_vec()))
        .await
        .unwrap();
    let r = r.last().unwrap();
    assert_eq!(r["invalid"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["kept"], 2, "{r}");
    for (domain, cached) in [
        ("past.test", true),
        ("skewed.test", true),
        ("future.test", false),
        ("far.test", false),
    ] {
        let s = ask(&sock, json!({"verb": "show", "domain": domain})).await;
        assert_eq!(s["cached"], cached, "{domain}: {s}");
    }
    assert_eq!(
        d.ask("past.test").await,
        "OK secure match=mx.past.test servername=hostname"
    );
}

#[tokio::test]
async fn a_peer_that_is_not_allowed_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot run a client as another user; the uid check is unit-tested");
        return;
    }
    let w = world().await;
    // A directory and socket that another user can reach, so that the uid check decides.
    let dir = tempfile::Builder::new()
        .prefix("ctl-peer-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("control.sock");
    let _d = ConfigText::of(&w)
        .control_socket(&sock, "mode = \"0666\"")
        .start()
        .await;
    let sock2 = sock.clone();
    // The build tree may sit in a directory the other user cannot enter (/root): run a copy.
    let bin = dir.path().join("mta-sts-policyd");
    std::fs::copy(env!("CARGO_BIN_EXE_mta-sts-policyd"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&bin)
            .args(["-c", "/nonexistent.toml", "ctl", "status", "--socket"])
            .arg(&sock2)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("permission denied"), "{text}");
    // Root is allowed.
    assert_eq!(ask(&sock, json!({"verb": "status"})).await["ok"], true);
}

/// The `ctl list` table: every column starts at the same place on every line, however long the
/// domains, and the count line is English.
#[test]
fn list_table_is_aligned_and_counts_in_english() {
    let reply = json!({"ok": true, "count": 2, "entries": [
        {"domain": "a.test", "kind": "policy", "mode": "enforce", "id": "id1",
         "expires": "2026-12-07T00:00:00Z", "hits": 3},
        {"domain": "a-much-longer-domain-name-than-forty-characters.example", "kind": "negative",
         "reason": "no TXT record", "until": "2026-12-06T01:00:00Z", "hits": 12345},
    ]});
    let text = control::render("list", &[reply]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let start = |l: &str, word: &str| l.find(word).unwrap();
    for (col, words) in [
        ("KIND", ["enforce", "negative"]),
        ("ID/REASON", ["id1", "no TXT record"]),
        ("EXPIRES/UNTIL", ["2026-12-07", "2026-12-06"]),
    ] {
        let at = start(lines[0], col);
        assert_eq!(start(lines[1], words[0]), at, "{col}:\n{text}");
        assert_eq!(start(lines[2], words[1]), at, "{col}:\n{text}");
    }
    // HITS is right-aligned: every row ends in the same column.
    assert_eq!(lines[0].len(), lines[1].len(), "{text}");
    assert_eq!(lines[0].len(), lines[2].len(), "{text}");
    assert_eq!(lines[3], "2 entries");
    let one = json!({"ok": true, "count": 1, "entries": [
        {"domain": "a.test", "kind": "policy", "mode": "enforce", "id": "id1",
         "expires": "2026-12-07T00:00:00Z", "hits": 0}]});
    assert!(control::render("list", &[one]).ends_with("\n1 entry\n"));
    let none = json!({"ok": true, "count": 0, "entries": []});
    assert!(control::render("list", &[none]).ends_with("\n0 entries\n"));
}

/// Runs the binary with `args` and returns (status, stdout, stderr).
async fn run_bin(args: Vec<std::ffi::OsString>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// README's exit codes: an unusable value of a verb, or an import of which no line could be
/// used, is a failed request (1), not a success and not a command-line syntax error (64).
#[tokio::test]
async fn a_bad_list_mode_and_an_all_invalid_import_exit_1() {
    let w = World::start().await;
    let _d = TestDaemon::start(&w).await;
    let sock = w.dir().join("control.sock");
    let args = |rest: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = rest.iter().map(Into::into).collect();
        a.push("--socket".into());
        a.push(sock.clone().into());
        a
    };
    let (code, _, err) = run_bin(args(&["ctl", "list", "--mode", "bogus"])).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("\"bogus\"") && err.contains("enforce"),
        "{err}"
    );
    let (code, out, err) = run_bin(args(&["ctl", "list", "--mode", "enforce"])).await;
    assert_eq!(code, Some(0), "{out}{err}");

    let file = w.dir().join("broken.jsonl");
    std::fs::write(&file, "not json\n{\"domain\": \"x.test\"}\n\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let (code, out, err) = run_bin(args(&["ctl", "import", &file])).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("2 invalid"), "{err}");
    assert!(
        out.contains("imported: 0"),
        "the reply is still printed: {out}"
    );
}

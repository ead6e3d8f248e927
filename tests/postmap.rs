//! Postfix's own client against the daemon: `postmap -q` through `socketmap:` and `tcp:`.
//! Runs where Postfix is installed (CI installs it and sets CI=true, which makes a missing
//! `postmap` a failure rather than a skip).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::World;
use common::harness::{TestDaemon, enforce_body};

fn postmap_available() -> bool {
    let found = Command::new("postmap")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .is_ok()
        || Path::new("/usr/sbin/postmap").exists();
    if !found && std::env::var_os("CI").is_some() {
        panic!("postmap is not installed, but CI must run this test (apt-get install postfix)");
    }
    if !found {
        eprintln!("postmap not installed; skipping (install postfix to run this test)");
    }
    found
}

fn postmap_bin() -> &'static str {
    if Path::new("/usr/sbin/postmap").exists() {
        "/usr/sbin/postmap"
    } else {
        "postmap"
    }
}

/// Runs `postmap -c <dir> -q <key> <table>` (or `-q -` with `stdin`) in a blocking thread.
async fn postmap(confdir: &Path, key: &str, table: String, stdin: Option<String>) -> Output {
    let confdir = confdir.to_path_buf();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(postmap_bin());
        cmd.arg("-c").arg(&confdir).arg("-q").arg(&key).arg(&table);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn postmap");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("postmap output")
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn postmap_gets_the_secure_answer_through_socketmap_and_tcp() {
    if !postmap_available() {
        return;
    }
    let w = World::start().await;
    w.good_domain(
        "good.test",
        "1",
        &enforce_body(&["mx1.good.test", "*.good.test"]),
    )
    .await;
    w.good_domain(
        "testing.test",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    let d = TestDaemon::start(&w).await;
    // postmap needs a config directory with a main.cf; an empty one means Postfix defaults.
    let confdir = w.dir().join("postfix");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::write(confdir.join("main.cf"), "").unwrap();
    let socketmap = format!("socketmap:inet:{}:postfix", d.socketmap);
    let tcp = format!("tcp:{}", d.tcp_table);
    let want = "secure match=mx1.good.test:.good.test servername=hostname\n";

    for table in [&socketmap, &tcp] {
        let out = postmap(&confdir, "good.test", table.clone(), None).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "{table}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{table}: {:?}", out.status);
        assert!(
            out.stderr.is_empty(),
            "{table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // No policy: postmap's clean "not found" (exit 1, no warning), for every kind of miss.
        for key in ["testing.test", "nothing.test", ".good.test", "[192.0.2.1]"] {
            let out = postmap(&confdir, key, table.clone(), None).await;
            assert_eq!(out.status.code(), Some(1), "{table} {key}");
            assert!(out.stdout.is_empty(), "{table} {key}");
            assert!(
                out.stderr.is_empty(),
                "{table} {key}: NOTFOUND must not warn: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Several keys on one connection (postmap -q -), including upper case and a smart host.
        let out = postmap(
            &confdir,
            "-",
            table.clone(),
            Some("GOOD.TEST\nnothing.test\n[good.test]:25\n".into()),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("GOOD.TEST\t{want}[good.test]:25\t{want}"),
            "{table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

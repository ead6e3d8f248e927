//! Started as root with `[daemon] user`, the daemon binds, hands its state to that user, drops
//! privileges for good, and goes on serving and persisting. Runs only as root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::harness::{ConfigText, SocketmapClient, good_world, serve_child};

/// One test at a time: a binary copied while another test forks can fail to start with
/// ETXTBSY (the copy's descriptor is inherited until the other child's exec).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn runs_as_the_configured_user_after_binding() {
    let _serial = SERIAL.lock().await;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: privilege dropping cannot be exercised");
        return;
    }
    let w = good_world().await;
    // A directory the unprivileged user can traverse, for its state and the control socket.
    let dir = tempfile::Builder::new()
        .prefix("privdrop-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    let text = ConfigText::of(&w)
        .append("[daemon]\nuser = \"nobody\"\n")
        .state_dir(&state)
        .control_socket(&dir.path().join("control.sock"), "");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text.as_str()).unwrap();
    let bin = dir.path().join("mta-sts-policyd");
    std::fs::copy(env!("CARGO_BIN_EXE_mta-sts-policyd"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut child, addr, _logs) = serve_child(bin.to_str().unwrap(), &cfg);

    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "real, effective, saved and fs uid are all nobody: {uid_line}"
    );
    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );
    // The journal is owned by the user and holds the policy just answered.
    let journal = state.join("policies.journal");
    assert_eq!(std::fs::metadata(&journal).unwrap().uid(), 65534);
    assert!(
        std::fs::read_to_string(&journal)
            .unwrap()
            .contains("good.test")
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What a process of the daemon user can leave in the state directory for the next root start.
enum Plant {
    Symlink,
    HardLink,
}

/// Started as root with `[daemon] user`, the daemon refuses a state directory in which that user
/// planted a link to a file outside (the journal, the compaction's temporary file, the lock, the
/// control socket), naming the path, and leaves the file outside as it was: root never follows
/// such a link, truncates its target or hands it to the user.
#[tokio::test]
async fn links_planted_in_the_state_directory_are_refused_not_followed() {
    let _serial = SERIAL.lock().await;
    use std::os::unix::fs::{chown, symlink};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: a root start with [daemon] user cannot be exercised");
        return;
    }
    let w = good_world().await;
    let cases = [
        ("policies.journal.tmp", Plant::Symlink),
        ("policies.journal", Plant::HardLink),
        ("policies.journal", Plant::Symlink),
        ("policies.journal.tmp", Plant::HardLink),
        ("lock", Plant::Symlink),
        ("lock", Plant::HardLink),
        ("control.sock", Plant::Symlink),
    ];
    for (name, plant) in cases {
        let dir = tempfile::Builder::new()
            .prefix("rootstart-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "precious\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A journal with a torn tail, owned by the user: opening it compacts through the
        // temporary file.
        let journal = state.join("policies.journal");
        if name != "policies.journal" {
            std::fs::write(&journal, "mta-sts-policyd journal v1\n0123abcd {\"v\"").unwrap();
            chown(&journal, Some(65534), Some(65534)).unwrap();
        }
        let planted = state.join(name);
        match plant {
            Plant::Symlink => symlink(&target, &planted).unwrap(),
            Plant::HardLink => std::fs::hard_link(&target, &planted).unwrap(),
        }
        chown(&state, Some(65534), Some(65534)).unwrap();
        let before = std::fs::metadata(&target).unwrap();

        let text = ConfigText::of(&w)
            .append("[daemon]\nuser = \"nobody\"\n")
            .state_dir(&state)
            .control_socket(&state.join("control.sock"), "");
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, text.as_str()).unwrap();
        let (code, stderr) = run_to_exit(&cfg);

        let case = format!(
            "{name} as a {}",
            match plant {
                Plant::Symlink => "symbolic link",
                Plant::HardLink => "hard link",
            }
        );
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "precious\n",
            "{case}: the file outside keeps its content"
        );
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "{case}: the file outside keeps its owner and mode"
        );
        let code = code.unwrap_or_else(|| panic!("{case}: the daemon started: {stderr}"));
        assert_ne!(code, 0, "{case}: {stderr}");
        assert!(
            stderr.contains(&planted.display().to_string()),
            "{case}: the error names the path: {stderr}"
        );
    }
}

/// A state directory others may write to is refused on a root start, whatever is in it.
#[tokio::test]
async fn a_state_directory_writable_by_others_is_refused_on_a_root_start() {
    let _serial = SERIAL.lock().await;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: a root start cannot be exercised");
        return;
    }
    let w = good_world().await;
    let dir = tempfile::Builder::new()
        .prefix("rootstart-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let text = ConfigText::of(&w)
        .append("[daemon]\nuser = \"nobody\"\n")
        .state_dir(&state)
        .control_socket(&dir.path().join("control.sock"), "");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text.as_str()).unwrap();
    let (code, stderr) = run_to_exit(&cfg);
    assert_eq!(code, Some(73), "{stderr}");
    assert!(stderr.contains("writable by group or others"), "{stderr}");
}

/// Runs `serve` as root until it exits (its status and stderr) or, after 15 s, kills it (`None`:
/// it started).
fn run_to_exit(cfg: &std::path::Path) -> (Option<i32>, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
        .arg("-c")
        .arg(cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr)
}

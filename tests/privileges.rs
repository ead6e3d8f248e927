//! Started as root with `[daemon] user`, the daemon binds, hands its state to that user, drops
//! privileges for good, and goes on serving and persisting. Runs only as root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::harness::{ConfigText, SocketmapClient, good_world, serve_child};

#[tokio::test]
async fn runs_as_the_configured_user_after_binding() {
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

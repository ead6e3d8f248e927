//! sd_notify against a fake `$NOTIFY_SOCKET` (path and abstract namespace), and signals as the
//! main loop sees them. Socket activation is tested in the module (its pure core and the
//! adoption of real descriptors); an end-to-end run with inherited fds belongs to the binary.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mta_sts_policyd::service::{self, Notifier, Signal, Signals};

/// A stand-in for systemd's notify socket.
struct FakeSystemd {
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn new(socket: UnixDatagram) -> FakeSystemd {
        // A lost datagram must fail the test, not hang it.
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        FakeSystemd { socket }
    }

    /// The next datagram, whole.
    fn recv(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn assert_nothing_queued(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let e = self.socket.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}

#[test]
fn each_notification_is_one_datagram_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = FakeSystemd::new(UnixDatagram::bind(&path).unwrap());
    let notifier = Notifier::to_path(&path);
    assert!(notifier.is_enabled());

    notifier.ready("serving; cached policies: 0");
    notifier.status("serving; cached policies: 1234");
    let before = service::monotonic_usec().unwrap();
    notifier.reloading();
    let after = service::monotonic_usec().unwrap();
    notifier.ready("reloaded");
    notifier.watchdog();
    notifier.stopping();
    notifier.notify("STATUS=raw\nERRNO=0");

    assert_eq!(
        systemd.recv(),
        "READY=1\nSTATUS=serving; cached policies: 0"
    );
    assert_eq!(systemd.recv(), "STATUS=serving; cached policies: 1234");
    let reloading = systemd.recv();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    let usec: u64 = usec.parse().unwrap();
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert!(after - usec < 1_000_000, "{usec} vs {after}");
    assert_eq!(systemd.recv(), "READY=1\nSTATUS=reloaded");
    assert_eq!(systemd.recv(), "WATCHDOG=1");
    assert_eq!(systemd.recv(), "STOPPING=1");
    assert_eq!(systemd.recv(), "STATUS=raw\nERRNO=0");
    systemd.assert_nothing_queued();
}

#[test]
fn status_cannot_inject_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = FakeSystemd::new(UnixDatagram::bind(&path).unwrap());
    let notifier = Notifier::to_path(&path);
    notifier.status("bad\nREADY=1");
    notifier.ready("two\r\nlines");
    assert_eq!(systemd.recv(), "STATUS=bad READY=1");
    assert_eq!(systemd.recv(), "READY=1\nSTATUS=two  lines");
}

#[test]
fn abstract_namespace_socket() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("mta-sts-policyd-test/{}/{nanos}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let systemd = FakeSystemd::new(UnixDatagram::bind_addr(&addr).unwrap());
    let notifier = Notifier::from_value(format!("@{name}"));
    assert!(notifier.is_enabled());
    notifier.ready("serving");
    notifier.watchdog();
    assert_eq!(systemd.recv(), "READY=1\nSTATUS=serving");
    assert_eq!(systemd.recv(), "WATCHDOG=1");
}

#[test]
fn path_value_is_the_same_as_to_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = FakeSystemd::new(UnixDatagram::bind(&path).unwrap());
    Notifier::from_value(path.as_os_str()).stopping();
    assert_eq!(systemd.recv(), "STOPPING=1");
}

#[test]
fn a_missing_receiver_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::to_path(&dir.path().join("nobody"));
    assert!(notifier.is_enabled());
    notifier.ready("x");
    notifier.reloading();
    notifier.stopping();
}

#[test]
fn disabled_notifier_sends_nothing() {
    let notifier = Notifier::disabled();
    assert!(!notifier.is_enabled());
    notifier.ready("x");
    notifier.watchdog();
}

// Every signal test lives in this one function: signals go to the whole process, so two tests
// sending them in parallel would see each other's.
#[tokio::test]
async fn signals_arrive_as_reload_and_stop() {
    use nix::sys::signal::{Signal as Sig, kill};
    use nix::unistd::getpid;

    // Installed before anything is sent: SIGHUP's and SIGTERM's default action is to exit.
    let mut signals = Signals::new().unwrap();
    let next = async |signals: &mut Signals| {
        tokio::time::timeout(Duration::from_secs(5), signals.next())
            .await
            .expect("signal not delivered")
    };
    for (sent, expected) in [
        (Sig::SIGHUP, Signal::Reload),
        (Sig::SIGTERM, Signal::Stop),
        (Sig::SIGINT, Signal::Stop),
        (Sig::SIGHUP, Signal::Reload),
        // A second stop is reported again, for the caller to exit at once.
        (Sig::SIGTERM, Signal::Stop),
    ] {
        kill(getpid(), sent).unwrap();
        assert_eq!(next(&mut signals).await, expected, "{sent}");
    }
}

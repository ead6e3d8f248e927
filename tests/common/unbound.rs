//! A real validating resolver for the DANE tests: unbound over a fake DNSSEC hierarchy made in a
//! temporary directory, offline.
//!
//! The root zone `.` (its key is unbound's only trust anchor) delegates `test.` with a DS;
//! `test.` delegates `signed.test.` with a DS and `plain.test.` without one (an insecure
//! delegation, RFC 4035 §5.2). Keys come from `ldns-keygen` (ECDSA P-256, one combined signing
//! key per zone), signatures from `ldns-signzone` (NSEC), DS records from `ldns-key2ds`. unbound
//! serves all four zones to its own iterator (`auth-zone` with `for-upstream: yes`), so it
//! resolves and validates them as if they were on the network, and answers clients with `AD=1`
//! for `signed.test` data (RFC 4035 §3.2.3).
//!
//! Two names exist for failure paths:
//!  - [`BOGUS`] (`bogus.signed.test`): its A and MX records were changed after signing, so their
//!    signatures fail and unbound answers SERVFAIL (RFC 4035 §5.5), at once;
//!  - [`TIMEOUT`] (`timeout.signed.test`, an insecure delegation): unbound is told (`stub-zone`)
//!    to ask a UDP socket on 127.0.0.1 that never answers; unbound keeps retrying for well over
//!    30 s, so a client sees no answer within any test's timeout.
//!
//! Needs `/usr/sbin/unbound` (or `unbound` on PATH) and `ldns-keygen`, `ldns-signzone`,
//! `ldns-key2ds` (Debian: unbound, ldnsutils). [`Unbound::available`] skips without them, and
//! fails the test under `CI=true`.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A name whose signed data is bogus: SERVFAIL from a validating resolver.
pub const BOGUS: &str = "bogus.signed.test";
/// A name under a delegation to a server that never answers.
pub const TIMEOUT: &str = "timeout.signed.test";

/// A running unbound. Dropping it kills the process and removes its directory.
pub struct Unbound {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    child: Child,
    // Held open and never read: the server TIMEOUT is delegated to.
    _silent: UdpSocket,
    dir: tempfile::TempDir,
}

const PROGRAMS: [&str; 4] = ["unbound", "ldns-keygen", "ldns-signzone", "ldns-key2ds"];

/// `name` on PATH or in /usr/sbin, /usr/bin.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let bin = program(prog).unwrap_or_else(|| panic!("Unbound: {prog} not found"));
    let out = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("Unbound: cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "Unbound: {prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new signing key for `zone` (KSK flag, used for everything): its base name.
fn keygen(dir: &Path, zone: &str) -> String {
    // /dev/urandom: /dev/random may block on an idle CI machine.
    run(
        dir,
        "ldns-keygen",
        &["-a", "ECDSAP256SHA256", "-k", "-r", "/dev/urandom", zone],
    )
}

/// The DS record (SHA-256) of a key, one zone-file line.
fn ds(dir: &Path, key: &str) -> String {
    let file = run(dir, "ldns-key2ds", &["-n", "-2", &format!("{key}.key")]);
    file.lines().next().unwrap_or_default().to_string()
}

fn sign(dir: &Path, zone_file: &str, origin: &str, key: &str) -> String {
    let out = format!("{zone_file}.signed");
    run(
        dir,
        "ldns-signzone",
        &["-f", &out, "-o", origin, zone_file, key],
    );
    out
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("Unbound: cannot create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("Unbound: cannot write {}: {e}", path.display()));
}

fn zone_head(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL 300\n\
         @ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n\
         @ IN NS ns.test.\n"
    )
}

/// Changes the A and MX data of [`BOGUS`] in a signed zone file without re-signing.
fn break_bogus(dir: &Path, file: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Unbound: cannot read {}: {e}", path.display()));
    let owner = format!("{BOGUS}.");
    let mut changed = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 && f[0] == owner {
                match f[3] {
                    "A" => {
                        changed += 1;
                        return format!("{owner} {} IN A 192.0.2.99", f[1]);
                    }
                    "MX" => {
                        changed += 1;
                        return format!("{owner} {} IN MX 99 mx.signed.test.", f[1]);
                    }
                    _ => {}
                }
            }
            line.to_string()
        })
        .collect();
    assert_eq!(changed, 2, "Unbound: {BOGUS} A and MX not found in {file}");
    write(dir, file, &(out.join("\n") + "\n"));
}

/// A free port on 127.0.0.1 for both UDP and TCP (at the time of asking).
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("Unbound: bind UDP");
        let port = udp.local_addr().expect("Unbound: local addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("Unbound: no port free for both UDP and TCP");
}

/// `. SOA` with RD, as raw bytes (id 0x5151).
fn probe_query() -> Vec<u8> {
    let mut q = vec![0x51, 0x51, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

impl Unbound {
    /// Whether unbound and the ldns tools are installed. Under `CI=true` their absence fails the
    /// test instead (CI installs them: unbound, ldnsutils).
    pub fn available() -> bool {
        let missing: Vec<&str> = PROGRAMS
            .iter()
            .copied()
            .filter(|p| program(p).is_none())
            .collect();
        if missing.is_empty() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!(
                "{missing:?} not installed, but CI must run this test (apt-get install unbound ldnsutils)"
            );
        }
        eprintln!("{missing:?} not installed; skipping (apt-get install unbound ldnsutils)");
        false
    }

    /// Builds the hierarchy and starts unbound; returns once it answers. `signed_records` and
    /// `plain_records` are extra zone-file lines for `signed.test.` and `plain.test.` (`$ORIGIN`
    /// is the zone, `$TTL` 300, so `mx IN A 192.0.2.25` and absolute names both work), e.g.
    /// MX, A, AAAA, TLSA, CNAME records. The SOA of each zone has MINIMUM 300 (the negative TTL).
    pub fn start(signed_records: &str, plain_records: &str) -> Unbound {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("mta-sts-unbound-")
            .tempdir()
            .expect("Unbound: cannot create a temporary directory");
        let d = dir.path();

        let root_key = keygen(d, ".");
        let test_key = keygen(d, "test.");
        let signed_key = keygen(d, "signed.test.");

        write(
            d,
            "signed.zone",
            &format!(
                "{}\
                 {BOGUS}. IN A 192.0.2.1\n\
                 {BOGUS}. IN MX 10 mx.signed.test.\n\
                 {TIMEOUT}. IN NS ns.test.\n\
                 {signed_records}\n",
                zone_head("signed.test.")
            ),
        );
        let signed_file = sign(d, "signed.zone", "signed.test.", &signed_key);
        break_bogus(d, &signed_file);

        write(
            d,
            "plain.zone",
            &format!("{}{plain_records}\n", zone_head("plain.test.")),
        );

        write(
            d,
            "test.zone",
            &format!(
                "{}ns IN A 127.0.0.1\n\
                 signed IN NS ns.test.\n\
                 {}\n\
                 plain IN NS ns.test.\n",
                zone_head("test."),
                ds(d, &signed_key)
            ),
        );
        let test_file = sign(d, "test.zone", "test.", &test_key);

        write(
            d,
            "root.zone",
            &format!(
                "$ORIGIN .\n$TTL 300\n\
                 . IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n\
                 . IN NS ns.test.\n\
                 test. IN NS ns.test.\n\
                 ns.test. IN A 127.0.0.1\n\
                 {}\n",
                ds(d, &test_key)
            ),
        );
        let root_file = sign(d, "root.zone", ".", &root_key);
        std::fs::copy(d.join(format!("{root_key}.key")), d.join("root.key"))
            .expect("Unbound: cannot copy the root key");

        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("Unbound: bind silent");
        let silent_port = silent.local_addr().expect("Unbound: silent addr").port();

        for attempt in 1.. {
            let port = free_port();
            write(
                d,
                "unbound.conf",
                &config(d, port, silent_port, &root_file, &test_file, &signed_file),
            );
            let mut child = spawn(d);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if wait_ready(&mut child, addr) {
                eprintln!("unbound on {addr} ready in {:?}", started.elapsed());
                return Unbound {
                    addr,
                    child,
                    _silent: silent,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(d.join("unbound.log")).unwrap_or_default();
            // Another test may have taken the port between free_port() and unbound's bind.
            assert!(attempt < 5, "Unbound: did not start; its log:\n{log}");
        }
        unreachable!()
    }

    /// The temporary directory (zones, keys, `unbound.conf`, `unbound.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// unbound's log so far (validation failures are logged at `val-log-level: 2`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

/// Starts unbound on `dir/unbound.conf`, logging to `dir/unbound.log`. From a copy of the binary
/// when possible: Debian and Ubuntu ship an AppArmor profile for `/usr/sbin/unbound` that
/// forbids reading a temporary directory; a copy elsewhere is not confined by it. The original
/// when the copy cannot run (a `noexec` temporary directory).
fn spawn(dir: &Path) -> Child {
    let bin = program("unbound").expect("Unbound: unbound not found");
    let copy = dir.join("unbound-bin");
    let candidates = if std::fs::copy(&bin, &copy).is_ok() {
        vec![copy, bin]
    } else {
        vec![bin]
    };
    let mut last = None;
    for b in candidates {
        let log = std::fs::File::create(dir.join("unbound.log")).expect("Unbound: log file");
        match Command::new(&b)
            .args(["-d", "-c"])
            .arg(dir.join("unbound.conf"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("Unbound: log file"))
            .stderr(log)
            .spawn()
        {
            Ok(child) => return child,
            Err(e) => last = Some(format!("{}: {e}", b.display())),
        }
    }
    panic!(
        "Unbound: cannot start unbound: {}",
        last.unwrap_or_default()
    )
}

fn config(dir: &Path, port: u16, silent_port: u16, root: &str, test: &str, signed: &str) -> String {
    format!(
        r#"server:
  username: ""
  chroot: ""
  pidfile: ""
  directory: "{dir}"
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  verbosity: 1
  val-log-level: 2
  num-threads: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "validator iterator"
  trust-anchor-file: "{dir}/root.key"
  trust-anchor-signaling: no
  root-hints: ""
  # RFC 6761 reserves test.; unbound answers it from a static local zone unless told not to.
  local-zone: "test." nodefault
  # The TIMEOUT delegation points at 127.0.0.1.
  do-not-query-localhost: no
auth-zone:
  name: "."
  zonefile: "{root}"
  for-upstream: yes
  for-downstream: no
  fallback-enabled: no
auth-zone:
  name: "test."
  zonefile: "{test}"
  for-upstream: yes
  for-downstream: no
auth-zone:
  name: "signed.test."
  zonefile: "{signed}"
  for-upstream: yes
  for-downstream: no
auth-zone:
  name: "plain.test."
  zonefile: "plain.zone"
  for-upstream: yes
  for-downstream: no
stub-zone:
  name: "{TIMEOUT}."
  stub-addr: 127.0.0.1@{silent_port}
"#,
        dir = dir.display()
    )
}

/// Polls `. SOA` until unbound answers (true) or exits or 10 s pass (false).
fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("Unbound: bind probe");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("Unbound: probe timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = sock.send_to(&probe_query(), addr);
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && from == addr
            && n >= 12
            && buf[..2] == [0x51, 0x51]
        {
            return true;
        }
    }
    false
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The daemon's contract with its service manager: signals (SIGHUP, SIGTERM, SIGINT), `sd_notify`
//! (readiness, status, reload, stop, watchdog) and socket activation (`sd_listen_fds`). No domain
//! logic: nothing here knows about policies, caches or Postfix.
//!
//! Both systemd protocols are implemented natively on std and nix, without libsystemd: their wire
//! formats are small and documented (`sd_notify(3)`, `sd_listen_fds(3)`), and linking a C library
//! for them would add a build and runtime dependency for nothing. This file holds the crate's only
//! `unsafe` code: adopting the descriptors systemd passes and removing the `LISTEN_*` variables
//! afterwards ([`take_activated`]).

use crate::proto::Protocol;
use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::unistd::{Gid, Uid};
use tracing::{debug, warn};

/// How long one notification may wait for room in the receiver's queue. `sd_notify(3)` sends
/// blocking; we bound it because the callers run on the event loop, and a lost notification is
/// what `sd_notify` callers get on any error anyway.
const NOTIFY_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `SD_LISTEN_FDS_START` (`sd_listen_fds(3)`): the first inherited descriptor.
const LISTEN_FDS_START: RawFd = 3;

/// The variables of the socket activation protocol, removed once read so that children do not
/// inherit them (`sd_listen_fds(3)`).
const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Set when the inherited descriptors have been adopted: a second adoption would give two owners
/// (and two `close`s) to one descriptor.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// `sd_notify` over `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), one datagram
/// per call, without libsystemd (`sd_notify(3)`). A notifier without a target does nothing, so
/// callers never need to know whether they run under systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for in `$NOTIFY_SOCKET`; a no-op one when it is unset. The
    /// variable is left in place: `sd_notify(3)` only removes it when asked to, and children of a
    /// `Type=notify` service are not allowed to notify anyway (`NotifyAccess=main`,
    /// `systemd.service(5)`).
    pub fn from_env() -> Notifier {
        match env::var_os("NOTIFY_SOCKET") {
            Some(value) => Notifier::from_value(value),
            None => Notifier::disabled(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier for a `$NOTIFY_SOCKET` value: `/absolute/path`, or `@name` for the abstract
    /// namespace (the `@` stands for the leading NUL byte). An empty value gives a no-op notifier;
    /// anything else systemd would reject too (a relative path, `vsock:` which this daemon does
    /// not speak) gives a no-op notifier and a warning, since systemd will then wait for a
    /// `READY=1` that never comes.
    pub fn from_value(value: impl AsRef<OsStr>) -> Notifier {
        let bytes = value.as_ref().as_bytes();
        let addr = match bytes.first() {
            None => return Notifier::disabled(),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(b'/') => SocketAddr::from_pathname(Path::new(value.as_ref())),
            Some(_) => {
                warn!(
                    notify_socket = %value.as_ref().to_string_lossy(),
                    "NOTIFY_SOCKET is neither an absolute path nor @abstract; not notifying systemd"
                );
                return Notifier::disabled();
            }
        };
        match addr {
            Ok(addr) => Notifier::to_addr(addr),
            Err(e) => {
                warn!(
                    notify_socket = %value.as_ref().to_string_lossy(),
                    error = %e,
                    "unusable NOTIFY_SOCKET; not notifying systemd"
                );
                Notifier::disabled()
            }
        }
    }

    /// A notifier sending to the datagram socket at `path` (tests, and callers that know the
    /// socket without the environment).
    pub fn to_path(path: &Path) -> Notifier {
        match SocketAddr::from_pathname(path) {
            Ok(addr) => Notifier::to_addr(addr),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "unusable notify socket path");
                Notifier::disabled()
            }
        }
    }

    fn to_addr(addr: SocketAddr) -> Notifier {
        // One unbound socket for the daemon's lifetime, sending with an explicit address each
        // time: unlike connect(), that follows systemd if it re-creates the socket (daemon-reexec).
        // The receiver sets SO_PASSCRED, so the kernel attaches our pid for NotifyAccess=main.
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_write_timeout(Some(NOTIFY_SEND_TIMEOUT)).map(|()| s));
        match socket {
            Ok(socket) => Notifier {
                target: Some(Target { socket, addr }),
            },
            Err(e) => {
                warn!(error = %e, "cannot create the notify socket; not notifying systemd");
                Notifier::disabled()
            }
        }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` as it is ("VAR=value" lines) in one datagram. Errors are ignored, as
    /// `sd_notify(3)` callers do, and logged at debug.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = target.socket.send_to_addr(state.as_bytes(), &target.addr) {
            debug!(error = %e, state, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line: start-up or a reload has finished (`sd_notify(3)`):
    /// only once the configuration is loaded, the cache read and every listener bound or received.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=<status>`, shown by `systemctl status` (`sd_notify(3)`).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `RELOADING=1` and `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>` in one datagram (`sd_notify(3)`):
    /// `Type=notify-reload` relates the two, so they must not arrive apart. Send `ready` when the
    /// reload is done.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(usec) => self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}")),
            None => {
                // Still worth sending: systemd ≥ 217 understands RELOADING=1 on its own.
                debug!("CLOCK_MONOTONIC unreadable; sending RELOADING=1 without MONOTONIC_USEC");
                self.notify("RELOADING=1");
            }
        }
    }

    /// `STOPPING=1`: shutdown has begun (`sd_notify(3)`).
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// `WATCHDOG=1`: the event loop is alive (`sd_notify(3)`, `sd_watchdog_enabled(3)`).
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// How often to send [`Notifier::watchdog`]: `WATCHDOG_USEC / 2` when `$WATCHDOG_USEC` is set
    /// and `$WATCHDOG_PID` is unset or our pid (`sd_watchdog_enabled(3)`); `None` when the watchdog
    /// is off or the variables are malformed.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec = env::var("WATCHDOG_USEC").ok();
        let pid = env::var("WATCHDOG_PID").ok();
        watchdog_from(usec.as_deref(), pid.as_deref(), std::process::id())
    }
}

/// `watchdog_interval` on explicit values, so tests need not touch the process environment.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    // sd_watchdog_enabled(3): a malformed value is an error, 0 and "infinity" (u64::MAX) mean
    // off, a pid other than ours means the watchdog is someone else's.
    let usec: u64 = usec?.parse().ok()?;
    if usec == 0 || usec == u64::MAX {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.parse().ok().filter(|&p| p != 0)?;
        if pid != my_pid {
            return None;
        }
    }
    // Half the timeout, as sd_watchdog_enabled(3) recommends; at least 1 µs because
    // tokio::time::interval panics on a zero period.
    Some(Duration::from_micros((usec / 2).max(1)))
}

/// `CLOCK_MONOTONIC` now, in µs: the clock systemd compares `MONOTONIC_USEC` against.
pub fn monotonic_usec() -> Option<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let sec = u64::try_from(ts.tv_sec()).ok()?;
    let nsec = u64::try_from(ts.tv_nsec()).ok()?;
    sec.checked_mul(1_000_000)?.checked_add(nsec / 1_000)
}

/// `STATUS=` takes one line (`sd_notify(3)`); a newline would also start a new assignment, so
/// control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What the main loop is asked to do by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload (`systemctl reload`; `Type=notify-reload` sends it, `systemd.service(5)`).
    Reload,
    /// SIGTERM or SIGINT: shut down (`systemctl stop` sends SIGTERM, `systemd.kill(5)`).
    Stop,
}

/// A stream of SIGHUP ([`Signal::Reload`]) and SIGTERM/SIGINT ([`Signal::Stop`]) for the main
/// loop. Handlers stay installed for the life of the process, so a second SIGTERM during the
/// drain is another `Stop` rather than the default kill: the caller decides what it means.
#[derive(Debug)]
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must be called inside the tokio runtime.
    pub fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal. Stop is checked first: when both are pending, reloading first would only
    /// delay the shutdown.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            biased;
            Some(()) = self.term.recv() => Signal::Stop,
            Some(()) = self.int.recv() => Signal::Stop,
            Some(()) = self.hup.recv() => Signal::Reload,
            // recv() ends only when the runtime shuts down; there is nothing left to report.
            else => std::future::pending().await,
        }
    }
}

/// A listening socket handed over by systemd.
#[derive(Debug)]
pub enum InheritedListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Sockets handed over by systemd socket activation (`sd_listen_fds(3)`), sorted by their
/// `FileDescriptorName=` (`systemd.socket(5)`). Each one is a non-blocking listening stream socket
/// with `FD_CLOEXEC` set, ready for `tokio::net::{TcpListener, UnixListener}::from_std`. Never
/// `shutdown(2)` them: systemd holds a copy that a later start of the daemon gets again.
#[derive(Debug, Default)]
pub struct Activated {
    /// Postfix listeners, by protocol: `FileDescriptorName=` the protocol's name (or the name
    /// without `_`, as in `tcptable`, which the unit files use).
    pub postfix: Vec<(Protocol, InheritedListener)>,
    /// `FileDescriptorName=control`.
    pub control: Vec<InheritedListener>,
}

impl Activated {
    /// Takes the sockets passed for `protocol`.
    pub fn take(&mut self, protocol: Protocol) -> Vec<InheritedListener> {
        let (mine, rest) = std::mem::take(&mut self.postfix)
            .into_iter()
            .partition(|(p, _)| *p == protocol);
        self.postfix = rest;
        mine.into_iter().map(|(_, l)| l).collect()
    }
}

/// Why the inherited sockets cannot be used; the daemon must not start: a socket it cannot place
/// (unknown name, wrong type) is a unit file mistake, and serving without it would hide that.
#[derive(Debug)]
pub struct ActivationError(pub String);

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket activation: {}", self.0)
    }
}

impl std::error::Error for ActivationError {}

/// Which listener an inherited descriptor is for, from its name in `$LISTEN_FDNAMES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Postfix(Protocol),
    Control,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Postfix(p) => f.write_str(p.name()),
            Role::Control => f.write_str("control"),
        }
    }
}

impl Role {
    fn from_name(name: &str) -> Option<Role> {
        if name == "control" {
            return Some(Role::Control);
        }
        // Unit files name the tcp_table socket "tcptable"; the config section is "tcp_table".
        Protocol::all()
            .find(|p| p.name() == name || p.name().replace('_', "") == name)
            .map(Role::Postfix)
    }
}

/// Takes the sockets systemd passed: fds `3 … 3+$LISTEN_FDS-1` when `$LISTEN_PID` is our pid, named
/// by `$LISTEN_FDNAMES` (`sd_listen_fds(3)`, `systemd.socket(5)`). `Ok(None)` when the process was
/// not socket-activated; then the daemon binds its configured addresses.
///
/// Call it first thing in `main`, before the tokio runtime or any other thread starts: removing
/// the `LISTEN_*` variables (`sd_listen_fds(3)`) is only sound while no other thread can read the
/// environment. It checks that, and leaves the variables in place (with a warning) otherwise;
/// children would ignore them anyway, since `$LISTEN_PID` names this process.
pub fn take_activated() -> Result<Option<Activated>, ActivationError> {
    let [listen_pid, listen_fds, names] = LISTEN_VARS.map(env_value);
    let (listen_pid, listen_fds, names) = (listen_pid?, listen_fds?, names?);
    if listen_pid.is_none() && listen_fds.is_none() && names.is_none() {
        return Ok(None);
    }
    let plan = activated_from(
        listen_pid.as_deref(),
        listen_fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    .unwrap_or_default();
    for &(role, fd) in &plan {
        check_inherited_fd(role, fd)?;
    }
    if !plan.is_empty() && ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(ActivationError(
            "the inherited sockets were already taken".into(),
        ));
    }
    let unset_env = single_threaded();
    if !unset_env {
        warn!("other threads are running; leaving LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set");
    }
    // Like sd_listen_fds(3) with unset_environment: the variables are removed whatever they
    // said, even when they were meant for another process.
    let raw: Vec<RawFd> = plan.iter().map(|&(_, fd)| fd).collect();
    let owned = adopt_inherited(&raw, unset_env);
    if plan.is_empty() {
        return Ok(None);
    }
    let roles = plan.iter().map(|&(role, _)| role);
    into_activated(roles.zip(owned)).map(Some)
}

/// An environment variable as UTF-8; `None` when unset.
fn env_value(name: &str) -> Result<Option<String>, ActivationError> {
    match env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(env::VarError::NotPresent) => Ok(None),
        Err(env::VarError::NotUnicode(_)) => Err(ActivationError(format!("{name} is not UTF-8"))),
    }
}

/// The pure part of [`take_activated`]: validates the three variables and maps each inherited fd
/// number to its role. `Ok(None)` when the variables are not for this process or pass no fds.
fn activated_from(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Option<Vec<(Role, RawFd)>>, ActivationError> {
    let Some(listen_pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = listen_pid
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ActivationError(format!("LISTEN_PID={listen_pid:?} is not a pid")))?;
    if pid != my_pid {
        // Set for another process, e.g. a socket-activated parent that forked and exec'd us: the
        // descriptors, if any, are not ours.
        return Ok(None);
    }
    let Some(listen_fds) = listen_fds else {
        return Ok(None);
    };
    let count: usize = listen_fds
        .parse()
        .map_err(|_| ActivationError(format!("LISTEN_FDS={listen_fds:?} is not a number")))?;
    if count == 0 {
        return Ok(None);
    }
    // The last fd number must fit in an int (sd_listen_fds(3) checks the same).
    if i32::try_from(count)
        .ok()
        .and_then(|c| c.checked_add(LISTEN_FDS_START))
        .is_none()
    {
        return Err(ActivationError(format!("LISTEN_FDS={count} is too large")));
    }
    let names: Vec<&str> = match names {
        Some(names) => names.split(':').collect(),
        // Launchers older than systemd 227 pass no names; a single socket can only be meant for
        // the main protocol.
        None if count == 1 => vec!["socketmap"],
        None => {
            return Err(ActivationError(format!(
                "LISTEN_FDNAMES is unset with LISTEN_FDS={count}; name each socket with \
                 FileDescriptorName="
            )));
        }
    };
    if names.len() != count {
        return Err(ActivationError(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
            names.len()
        )));
    }
    let mut plan = Vec::with_capacity(count);
    for (fd, name) in (LISTEN_FDS_START..).zip(names) {
        let role = Role::from_name(name).ok_or_else(|| {
            ActivationError(format!(
                "unknown socket name {name:?} for fd {fd} (set FileDescriptorName= to socketmap, \
                 tcptable or control)"
            ))
        })?;
        plan.push((role, fd));
    }
    Ok(Some(plan))
}

/// Checks that `fd` is open and is a socket before anything takes ownership of it: a forged or
/// stale environment (an exec that kept our pid) must give an error, not a wrapped closed fd.
fn check_inherited_fd(role: Role, fd: RawFd) -> Result<(), ActivationError> {
    let link = format!("/proc/self/fd/{fd}");
    match std::fs::read_link(&link) {
        Ok(target) if target.as_os_str().as_bytes().starts_with(b"socket:") => Ok(()),
        Ok(target) => Err(ActivationError(format!(
            "fd {fd} ({role}) is not a socket: {}",
            target.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new("/proc/self/fd").is_dir() => {
            Err(ActivationError(format!("fd {fd} ({role}) is not open")))
        }
        Err(e) => Err(ActivationError(format!(
            "cannot check fd {fd}: {link}: {e}"
        ))),
    }
}

/// Whether this is the process's only thread, which is when the environment may be changed.
/// Unknown (no /proc) counts as no.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Removes the `LISTEN_*` variables (if `unset_env`) and takes ownership of the inherited
/// descriptors `fds`. The crate's only `unsafe` code; lib.rs denies it everywhere else.
#[allow(unsafe_code)]
fn adopt_inherited(fds: &[RawFd], unset_env: bool) -> Vec<OwnedFd> {
    if unset_env {
        for name in LISTEN_VARS {
            // SAFETY: remove_var is unsafe because another thread could read the environment at
            // the same time. `unset_env` is true only when single_threaded() has just seen one
            // thread in /proc/self/task, and this thread starts none before returning.
            unsafe { env::remove_var(name) };
        }
    }
    fds.iter()
        .map(|&fd| {
            // SAFETY: from_raw_fd needs an open descriptor that nothing else owns or will close.
            // Open: check_inherited_fd has just found it in /proc/self/fd, as a socket, and only
            // an owner could have closed it since, of which there is none yet. Ours: the number
            // comes from activated_from, i.e. from 3..3+LISTEN_FDS with LISTEN_PID equal to our
            // pid, which is the range the service manager passed to this process
            // (sd_listen_fds(3)). Once: this is the only place that wraps inherited descriptors,
            // and ADOPTED lets take_activated reach it once per process, whatever the
            // environment says afterwards.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

/// Sorts the adopted descriptors by role after making each a proper listener.
fn into_activated(
    fds: impl IntoIterator<Item = (Role, OwnedFd)>,
) -> Result<Activated, ActivationError> {
    let mut activated = Activated::default();
    for (role, fd) in fds {
        let listener = prepare_listener(fd).map_err(|e| ActivationError(format!("{role}: {e}")))?;
        match role {
            Role::Postfix(p) => activated.postfix.push((p, listener)),
            Role::Control => activated.control.push(listener),
        }
    }
    Ok(activated)
}

/// Sets `FD_CLOEXEC` (systemd passes the descriptors without it, so that they survive its exec,
/// `sd_listen_fds(3)`), checks that it is a listening stream socket (`systemd.socket(5)`), and
/// makes it non-blocking for tokio.
fn prepare_listener(fd: OwnedFd) -> Result<InheritedListener, String> {
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("cannot set FD_CLOEXEC: {e}"))?;
    let listener = classify(fd)?;
    match &listener {
        InheritedListener::Tcp(l) => l.set_nonblocking(true),
        InheritedListener::Unix(l) => l.set_nonblocking(true),
    }
    .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
    Ok(listener)
}

/// Tells a TCP listener from a Unix one and rejects what cannot serve Postfix: anything but a
/// listening stream socket (`systemd.socket(5)`: `ListenStream=`, `Accept=no`).
fn classify(fd: OwnedFd) -> Result<InheritedListener, String> {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| format!("not a socket: {e}"))?;
    if ty != SockType::Stream {
        return Err(format!("{ty:?}, not SOCK_STREAM (use ListenStream=)"));
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| e.to_string())?;
    if !listening {
        return Err("not listening (use Accept=no)".into());
    }
    let unix = UnixListener::from(fd);
    if unix.local_addr().is_ok() {
        return Ok(InheritedListener::Unix(unix));
    }
    let tcp = TcpListener::from(OwnedFd::from(unix));
    match tcp.local_addr() {
        Ok(_) => Ok(InheritedListener::Tcp(tcp)),
        Err(e) => Err(format!("not an AF_UNIX, AF_INET or AF_INET6 socket: {e}")),
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs (postfix-tlspol) and
/// most servers do: outside systemd (whose unit sets `LimitNOFILE`) the soft limit is often
/// 1024, below the default `limits.max_connections`. Returns (before, after).
pub fn raise_open_files_limit() -> Result<(u64, u64), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))?;
    Ok((soft, hard))
}

/// The uid and gid `[daemon] user` and `group` name (default group: the user's primary one).
pub fn daemon_ids(user: &str, group: Option<&str>) -> Result<(Uid, Gid), String> {
    use nix::unistd::{Group, User};
    let u = User::from_name(user)
        .map_err(|e| format!("[daemon] user {user:?}: {e}"))?
        .ok_or_else(|| format!("[daemon] user {user:?} does not exist"))?;
    let gid = match group {
        None => u.gid,
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("[daemon] group {g:?}: {e}"))?
                .ok_or_else(|| format!("[daemon] group {g:?} does not exist"))?
                .gid
        }
    };
    Ok((u.uid, gid))
}

/// Switches the whole process (every thread: glibc's setuid/setgid apply process-wide) to
/// `user` and `group` (default: the user's primary group), after handing the `sockets` it
/// created to them. Only root can do this; a process already running as `user` is left as it
/// is. The state directory is not among the paths: [`prepare_state_dir`] hands it over through
/// descriptors.
pub fn drop_privileges(user: &str, group: Option<&str>, sockets: &[&Path]) -> Result<(), String> {
    use nix::unistd::{getuid, setgid, setgroups, setuid};
    let (uid, gid) = daemon_ids(user, group)?;
    if getuid() == uid {
        return Ok(());
    }
    if !getuid().is_root() {
        return Err(format!(
            "[daemon] user {user:?}: only root can switch users (running as uid {})",
            getuid()
        ));
    }
    for path in sockets {
        // lchown(2): a socket in a directory the user can write to may have been replaced by a
        // symbolic link since it was bound; following it would hand the target to the user.
        match std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot hand {} to {user}: {e}", path.display())),
        }
    }
    // Order matters: supplementary groups and the gid while still root, the uid last.
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(uid).map_err(|e| format!("setuid: {e}"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("privileges could be regained after dropping them".into());
    }
    tracing::info!(
        user,
        uid = uid.as_raw(),
        gid = gid.as_raw(),
        "privileges dropped"
    );
    Ok(())
}

/// Makes the state directory safe for root to use and hands it to `uid`:`gid` (root itself
/// when no `[daemon] user` is set). Runs as root, in a directory that a process of the daemon
/// user may have prepared (`gid` `None`: the group stays as it is), so nothing here follows a symbolic link or acts on a path twice:
/// the directory and each of `files` in it are opened with `O_NOFOLLOW` (files relative to
/// the directory's descriptor), checked on the descriptor, and `fchown`ed through it. Creates
/// the directory (0700) when missing; never creates or truncates a file.
///
/// Refused, with the path and the reason: a directory or file that is a symbolic link, owned
/// by someone else than root or `uid`, or writable by group or others; a file that is not a
/// regular file or has more than one hard link (a link to a file outside, such as
/// `/etc/shadow`, that `fchown` would hand over).
pub fn prepare_state_dir(
    dir: &Path,
    uid: Uid,
    gid: Option<Gid>,
    files: &[&str],
) -> Result<(), String> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::{Mode, SFlag, fstat};
    use nix::unistd::fchown;
    use std::os::unix::fs::DirBuilderExt;
    let shown = dir.display();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("state directory {shown}: cannot create: {e}"))?;
    }
    let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let dirfd = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | nofollow,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => {
            format!("state directory {shown} is a symbolic link; name the directory itself")
        }
        e => format!("state directory {shown}: cannot open: {e}"),
    })?;
    let check = |what: &str, st: &nix::sys::stat::FileStat| -> Result<(), String> {
        if st.st_uid != 0 && st.st_uid != uid.as_raw() {
            return Err(format!(
                "{what} is owned by uid {}, neither root nor the daemon user (uid {uid}); \
                 refusing to use it as root",
                st.st_uid
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(format!(
                "{what} is writable by group or others (mode {:o}); make it 0700 or 0750",
                st.st_mode & 0o7777
            ));
        }
        Ok(())
    };
    // Only what is not owned yet is changed: a read-only state directory still starts.
    let owned = |st: &nix::sys::stat::FileStat| {
        st.st_uid == uid.as_raw() && gid.is_none_or(|g| g.as_raw() == st.st_gid)
    };
    let st = fstat(&dirfd).map_err(|e| format!("state directory {shown}: {e}"))?;
    check(&format!("state directory {shown}"), &st)?;
    for name in files {
        let path = dir.join(name);
        let shown = path.display();
        let fd = match openat(
            &dirfd,
            *name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | nofollow,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(nix::errno::Errno::ELOOP) => {
                return Err(format!(
                    "{shown} is a symbolic link; refusing to follow it as root (remove it)"
                ));
            }
            Err(e) => return Err(format!("{shown}: cannot open: {e}")),
        };
        let st = fstat(&fd).map_err(|e| format!("{shown}: {e}"))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(format!("{shown} is not a regular file (remove it)"));
        }
        if st.st_nlink != 1 {
            return Err(format!(
                "{shown} has {} hard links; refusing to hand it over as root (remove it)",
                st.st_nlink
            ));
        }
        check(&shown.to_string(), &st)?;
        if !owned(&st) {
            fchown(&fd, Some(uid), gid).map_err(|e| format!("cannot hand {shown} over: {e}"))?;
        }
    }
    if !owned(&st) {
        fchown(&dirfd, Some(uid), gid)
            .map_err(|e| format!("cannot hand state directory {shown} over: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(name: &str) -> Protocol {
        Protocol::from_name(name).expect("registered")
    }
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    const US: u32 = 4242;

    fn plan(names: Option<&str>, fds: &str) -> Result<Option<Vec<(Role, RawFd)>>, ActivationError> {
        activated_from(Some("4242"), Some(fds), names, US)
    }

    #[test]
    fn watchdog_is_half_the_timeout_for_us() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_from(Some("30000000"), None, US), half);
        assert_eq!(watchdog_from(Some("30000000"), Some("4242"), US), half);
        assert_eq!(
            watchdog_from(Some("1"), None, US),
            Some(Duration::from_micros(1))
        );
    }

    #[test]
    fn watchdog_is_off_when_unset_malformed_or_someone_elses() {
        assert_eq!(watchdog_from(None, None, US), None);
        assert_eq!(watchdog_from(None, Some("4242"), US), None);
        assert_eq!(watchdog_from(Some("30000000"), Some("4243"), US), None);
        assert_eq!(watchdog_from(Some("0"), None, US), None);
        assert_eq!(watchdog_from(Some(&u64::MAX.to_string()), None, US), None);
        for bad in ["", "30s", "-1", " 30000000", "3e7"] {
            assert_eq!(watchdog_from(Some(bad), None, US), None, "{bad:?}");
        }
        for bad_pid in ["", "0", "x", "-4242"] {
            assert_eq!(watchdog_from(Some("30000000"), Some(bad_pid), US), None);
        }
    }

    #[test]
    fn activation_maps_names_to_fds_from_3() {
        assert_eq!(
            plan(Some("socketmap:tcptable:control:tcp_table:socketmap"), "5").unwrap(),
            Some(vec![
                (Role::Postfix(proto("socketmap")), 3),
                (Role::Postfix(proto("tcp_table")), 4),
                (Role::Control, 5),
                (Role::Postfix(proto("tcp_table")), 6),
                (Role::Postfix(proto("socketmap")), 7),
            ])
        );
    }

    #[test]
    fn activation_is_not_ours_without_our_pid_or_fds() {
        assert!(
            activated_from(None, Some("1"), Some("socketmap"), US)
                .unwrap()
                .is_none()
        );
        assert!(
            activated_from(Some("4243"), Some("1"), Some("socketmap"), US)
                .unwrap()
                .is_none()
        );
        assert!(
            activated_from(Some("4242"), None, Some("socketmap"), US)
                .unwrap()
                .is_none()
        );
        assert!(plan(Some(""), "0").unwrap().is_none());
        // Another process's variables are not checked any further.
        assert!(
            activated_from(Some("4243"), Some("x"), Some("bogus"), US)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn activation_without_names_is_socketmap_only_for_one_fd() {
        assert_eq!(
            plan(None, "1").unwrap(),
            Some(vec![(Role::Postfix(proto("socketmap")), 3)])
        );
        let e = plan(None, "2").unwrap_err();
        assert!(e.0.contains("LISTEN_FDNAMES is unset"), "{e}");
    }

    #[test]
    fn activation_rejects_malformed_variables() {
        for pid in ["", "x", "0", "-4242", " 4242"] {
            let e = activated_from(Some(pid), Some("1"), None, US).unwrap_err();
            assert!(e.0.contains("LISTEN_PID"), "{e}");
        }
        for fds in ["", "x", "-1", "1 "] {
            let e = plan(None, fds).unwrap_err();
            assert!(e.0.contains("LISTEN_FDS"), "{e}");
        }
        let e = plan(Some("socketmap"), "4294967296").unwrap_err();
        assert!(e.0.contains("LISTEN_FDS"), "{e}");
        let e = plan(Some("socketmap"), &(i32::MAX as usize).to_string()).unwrap_err();
        assert!(e.0.contains("too large"), "{e}");
    }

    #[test]
    fn activation_rejects_wrong_name_counts() {
        let e = plan(Some("socketmap:control"), "1").unwrap_err();
        assert!(e.0.contains("2 names for LISTEN_FDS=1"), "{e}");
        let e = plan(Some("socketmap"), "2").unwrap_err();
        assert!(e.0.contains("1 names for LISTEN_FDS=2"), "{e}");
    }

    #[test]
    fn activation_rejects_unknown_names() {
        // The default name, when FileDescriptorName= is missing, is the unit's
        // (`systemd.socket(5)`).
        let e = plan(Some("socketmap:mta-sts-policyd.socket"), "2").unwrap_err();
        assert!(e.0.contains("\"mta-sts-policyd.socket\" for fd 4"), "{e}");
        let e = plan(Some("socketmap::control"), "3").unwrap_err();
        assert!(e.0.contains("\"\" for fd 4"), "{e}");
        let e = plan(Some("SocketMap"), "1").unwrap_err();
        assert!(e.0.contains("\"SocketMap\""), "{e}");
    }

    #[test]
    fn inherited_fd_must_be_an_open_socket() {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        check_inherited_fd(Role::Postfix(proto("socketmap")), socket.as_raw_fd()).unwrap();
        let file = tempfile::tempfile().unwrap();
        let e =
            check_inherited_fd(Role::Postfix(proto("socketmap")), file.as_raw_fd()).unwrap_err();
        assert!(e.0.contains("is not a socket"), "{e}");
        let closed = {
            let s = TcpListener::bind("127.0.0.1:0").unwrap();
            s.as_raw_fd()
        };
        // The number may be reused by a parallel test, but then it is a socket or a file.
        if let Err(e) = check_inherited_fd(Role::Postfix(proto("socketmap")), closed) {
            assert!(
                e.0.contains("not open") || e.0.contains("not a socket"),
                "{e}"
            );
        }
        let e = check_inherited_fd(Role::Control, i32::MAX).unwrap_err();
        assert!(e.0.contains("not open"), "{e}");
    }

    #[test]
    fn adopted_descriptors_become_listeners_by_role() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let unix = UnixListener::bind(&path).unwrap();
        // Ownership leaves the std types as plain numbers, exactly as if inherited, so this runs
        // the real adoption (environment untouched).
        let raw = [tcp.into_raw_fd(), unix.into_raw_fd()];
        let owned = adopt_inherited(&raw, false);
        let activated = into_activated(
            [Role::Postfix(proto("tcp_table")), Role::Control]
                .into_iter()
                .zip(owned),
        )
        .unwrap();
        let mut activated = activated;
        assert!(activated.take(proto("socketmap")).is_empty());
        match activated.take(proto("tcp_table")).as_slice() {
            [InheritedListener::Tcp(l)] => {
                assert_eq!(l.local_addr().unwrap(), tcp_addr);
                let flags = fcntl(l, FcntlArg::F_GETFD).unwrap();
                assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
                // Non-blocking: no client, so accept returns at once.
                let e = l.accept().unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            }
            other => panic!("{other:?}"),
        }
        match activated.control.as_slice() {
            [InheritedListener::Unix(l)] => {
                assert_eq!(l.local_addr().unwrap().as_pathname(), Some(path.as_path()));
                UnixStream::connect(&path).unwrap();
                l.accept().unwrap();
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_listeners_are_rejected() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = prepare_listener(udp.into()).unwrap_err();
        assert!(e.contains("ListenStream"), "{e}");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let e = prepare_listener(client.into()).unwrap_err();
        assert!(e.contains("Accept=no"), "{e}");

        let (a, _b) = UnixStream::pair().unwrap();
        let e = prepare_listener(a.into()).unwrap_err();
        assert!(e.contains("Accept=no"), "{e}");

        let file = tempfile::tempfile().unwrap();
        let e = prepare_listener(file.into()).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");

        let e = into_activated([(
            Role::Postfix(proto("socketmap")),
            OwnedFd::from(tempfile::tempfile().unwrap()),
        )])
        .unwrap_err();
        assert!(
            e.to_string().starts_with("socket activation: socketmap: "),
            "{e}"
        );
    }

    #[test]
    fn role_names() {
        assert_eq!(
            Role::from_name("socketmap"),
            Some(Role::Postfix(proto("socketmap")))
        );
        assert_eq!(
            Role::from_name("tcptable"),
            Some(Role::Postfix(proto("tcp_table")))
        );
        assert_eq!(
            Role::from_name("tcp_table"),
            Some(Role::Postfix(proto("tcp_table")))
        );
        assert_eq!(Role::from_name("control"), Some(Role::Control));
        assert_eq!(Role::from_name("tcp-table"), None);
    }

    #[test]
    fn monotonic_clock_is_read() {
        let a = monotonic_usec().unwrap();
        let b = monotonic_usec().unwrap();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nREADY=1\r\tb"), "a READY=1  b");
        assert_eq!(
            one_line("cached policies: 3 – ok"),
            "cached policies: 3 – ok"
        );
    }

    #[test]
    fn notify_socket_values() {
        assert!(!Notifier::from_value("").is_enabled());
        assert!(!Notifier::from_value("run/notify").is_enabled());
        assert!(!Notifier::from_value("vsock:2:1234").is_enabled());
        assert!(!Notifier::from_value(format!("/{}", "x".repeat(200))).is_enabled());
        assert!(Notifier::from_value("/run/systemd/notify").is_enabled());
        assert!(Notifier::from_value("@/org/freedesktop/systemd1/notify/1").is_enabled());
        assert!(!Notifier::disabled().is_enabled());
        // Sending to nowhere is ignored.
        Notifier::from_value("/nonexistent/notify").ready("x");
        Notifier::disabled().ready("x");
    }
}

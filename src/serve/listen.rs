//! Listening sockets, for every server the daemon runs (Postfix lookups, control, metrics):
//! binding, including the replacement of a stale unix socket left by a crash, adopting a socket
//! passed by systemd, and one capped accept loop.
//!
//! The cap is a semaphore permit taken *before* accepting, so that it is a real bound: beyond
//! it clients wait in the kernel's accept queue instead of being accepted and cut off. (The
//! Postfix listeners instead close their longest-idle connection at the cap: `idle.rs`.) Failed
//! accepts (EMFILE, ENFILE, ENOBUFS ...) back off instead of spinning and are logged at most
//! every few seconds.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::ListenAddr;
use crate::service::InheritedListener;

/// Back-off after a failed accept: retrying at once would spin on EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-failure warning per this interval.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// A bound listening socket. Unix sockets remember their path so it can be removed at shutdown.
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed at stop when we created the socket; None for a socket systemd passed
    /// (it owns the path).
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    /// Binds one configured address.
    pub async fn bind(addr: &ListenAddr, unix_mode: u32) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::Unix(path) => Ok(Listener::Unix(
                bind_unix(path, unix_mode).await?,
                Some(path.clone()),
            )),
        }
    }

    /// A listening socket passed by systemd (socket activation).
    pub fn inherited(l: InheritedListener) -> io::Result<Listener> {
        match l {
            InheritedListener::Tcp(t) => {
                t.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(t)?))
            }
            InheritedListener::Unix(u) => {
                u.set_nonblocking(true)?;
                Ok(Listener::Unix(UnixListener::from_std(u)?, None))
            }
        }
    }

    /// The address actually bound (the real port when the config said 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => Ok(ListenAddr::Tcp(l.local_addr()?)),
            Listener::Unix(_, Some(p)) => Ok(ListenAddr::Unix(p.clone())),
            Listener::Unix(l, None) => {
                let a = l.local_addr()?;
                let p = a.as_pathname().map(Path::to_path_buf).unwrap_or_default();
                Ok(ListenAddr::Unix(p))
            }
        }
    }

    /// The socket file to remove at stop: only one this process created.
    fn owned_path(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, p) => p.as_deref(),
            Listener::Tcp(_) => None,
        }
    }
}

/// Binds a unix socket at `path` with `mode`. A stale socket file left by a crash is replaced,
/// but a socket another process still answers on is not stolen, and a file that is not a
/// socket is never removed.
pub async fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    // Not through a link: in a directory another user can write to, the socket may have been
    // replaced by one since bind(2), and root would change the mode of its target.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)?;
    Ok(l)
}

/// A socket that accepts connections of one stream type.
pub trait Accept: Send + Sync {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for Listener {
    type Stream = Stream;
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Replies are small and answered one by one: Nagle would only add latency.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }
}

/// A connection accepted on a [`Listener`], TCP or unix.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How a server's accept loop is bounded and named in logs.
pub struct Cap {
    /// For log lines: "socketmap", "control", "metrics" ...
    pub name: &'static str,
    /// One permit per open connection.
    pub permits: Arc<Semaphore>,
    /// The configured limit, for the warning when it is reached.
    pub limit: usize,
}

/// Accepts connections on `listener` until `shutdown` turns true (or its sender is gone), at
/// most `cap.limit` open at once, and spawns `handle(stream)` for each, holding its permit for
/// as long as the returned future runs. Removes a unix socket file this process created when it
/// stops.
pub async fn serve<L, F, Fut>(
    listener: L,
    cap: Cap,
    mut shutdown: watch::Receiver<bool>,
    mut handle: F,
) where
    L: Accept + OwnedPath,
    F: FnMut(L::Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut cap_warned = false;
    let mut failures = AcceptFailures::new(cap.name);
    loop {
        let permit: OwnedSemaphorePermit = match cap.permits.clone().try_acquire_owned() {
            Ok(p) => {
                cap_warned = false;
                p
            }
            Err(_) => {
                if !cap_warned {
                    warn!(
                        listener = cap.name,
                        limit = cap.limit,
                        "connection limit reached; new clients wait in the accept queue"
                    );
                    cap_warned = true;
                }
                tokio::select! {
                    p = cap.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok(stream) => {
                let work = handle(stream);
                tokio::spawn(async move {
                    let _permit = permit;
                    work.await;
                });
            }
            Err(e) => failures.back_off(&e).await,
        }
    }
    stopped(&listener, cap.name);
}

/// Failed accepts (EMFILE, ENFILE, ENOBUFS ...) of one listener: each backs off instead of
/// spinning, and they are logged at most every [`ACCEPT_WARN_EVERY`].
pub struct AcceptFailures {
    name: &'static str,
    count: u64,
    last_warn: Option<Instant>,
}

impl AcceptFailures {
    pub fn new(name: &'static str) -> AcceptFailures {
        AcceptFailures {
            name,
            count: 0,
            last_warn: None,
        }
    }

    /// Records a failed accept and waits before the next try.
    pub async fn back_off(&mut self, e: &io::Error) {
        self.count += 1;
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY)
        {
            warn!(listener = self.name, error = %e, failures = self.count,
                  "accept failed; backing off (check the file descriptor limit)");
            self.last_warn = Some(Instant::now());
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// What an accept loop does when it stops: removes the unix socket file this process created.
pub fn stopped<L: OwnedPath>(listener: &L, name: &'static str) {
    if let Some(p) = listener.owned_path() {
        let _ = std::fs::remove_file(p);
    }
    debug!(listener = name, "listener stopped");
}

/// The socket file a listener created and removes when it stops.
pub trait OwnedPath {
    fn owned_path(&self) -> Option<&Path>;
}

impl OwnedPath for Listener {
    fn owned_path(&self) -> Option<&Path> {
        Listener::owned_path(self)
    }
}

impl OwnedPath for TcpListener {
    fn owned_path(&self) -> Option<&Path> {
        None
    }
}

/// A unix listener with the path it removes at stop (None: someone else owns the file).
pub struct OwnedUnix(pub UnixListener, pub Option<PathBuf>);

impl Accept for OwnedUnix {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

impl OwnedPath for OwnedUnix {
    fn owned_path(&self) -> Option<&Path> {
        self.1.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_stale_unix_socket_is_replaced_a_live_one_and_a_plain_file_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Stale: bound, then dropped without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind_unix(&path, 0o660).await.unwrap();
        let e = bind_unix(&path, 0o660).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(live);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let e = bind_unix(&plain, 0o660).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&plain).unwrap(), b"x");
    }

    #[tokio::test]
    async fn the_cap_holds_and_a_freed_permit_admits_the_next_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let permits = Arc::new(Semaphore::new(2));
        let served = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let (release_tx, release) = watch::channel(0usize);
        let s = served.clone();
        let server = tokio::spawn(serve(
            listener,
            Cap {
                name: "test",
                permits: permits.clone(),
                limit: 2,
            },
            stop,
            move |mut stream: TcpStream| {
                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                let mut release = release.clone();
                async move {
                    // Hold the connection until told that `n` may go.
                    let _ = release.wait_for(|&r| r >= n).await;
                    let _ = stream.write_all(b"bye").await;
                }
            },
        ));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            served.load(Ordering::SeqCst),
            2,
            "the third waits in the queue"
        );
        release_tx.send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(served.load(Ordering::SeqCst), 3, "a freed permit admits it");
        release_tx.send(3).unwrap();
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_removes_the_socket_file_it_created_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = Listener::bind(&ListenAddr::Unix(path.clone()), 0o600)
            .await
            .unwrap();
        let (tx, rx) = watch::channel(false);
        let cap = Cap {
            name: "test",
            permits: Arc::new(Semaphore::new(1)),
            limit: 1,
        };
        let task = tokio::spawn(serve(l, cap, rx, |_s: Stream| async {}));
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!path.exists());

        let path = dir.path().join("passed.sock");
        let l = OwnedUnix(UnixListener::bind(&path).unwrap(), None);
        let (tx, rx) = watch::channel(false);
        let cap = Cap {
            name: "test",
            permits: Arc::new(Semaphore::new(1)),
            limit: 1,
        };
        let task = tokio::spawn(serve(l, cap, rx, |_s: UnixStream| async {}));
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(path.exists(), "a socket it did not create stays");
    }
}

//! Addresses and sockets: the loopback-only targets, connecting to them and listening on them.
//!
//! Postfix-style `inet:IP:PORT` and `unix:/path` (as in `socketmap:inet:...` of
//! `socketmap_table(5)`); only loopback TCP is accepted, so that loadgen never loads another
//! machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "inet:{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Loopback TCP or a unix socket; any other address is refused.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(format!("{s}: the unix socket path must be absolute"));
        }
        return Ok(Target::Unix(p));
    }
    let a = s.strip_prefix("inet:").unwrap_or(s);
    let addr: SocketAddr = a
        .parse()
        .map_err(|_| format!("{s}: expected inet:IP:PORT or unix:/path"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{s}: loopback addresses only"));
    }
    Ok(Target::Tcp(addr))
}

pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub async fn connect(t: &Target) -> std::io::Result<Conn> {
    let c = async {
        match t {
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Target::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).await?)),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, c).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

pub async fn bind(t: &Target) -> std::io::Result<(Bound, String)> {
    match t {
        Target::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            let shown = format!("inet:{}", l.local_addr()?);
            Ok((Bound::Tcp(l), shown))
        }
        Target::Unix(p) => {
            use std::os::unix::fs::FileTypeExt;
            // A stale socket of an earlier run; never anything else.
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(p)?;
            }
            let l = UnixListener::bind(p)?;
            Ok((Bound::Unix(l), format!("unix:{}", p.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_absolute_unix_paths_are_targets() {
        assert!(matches!(
            parse_target("inet:127.0.0.1:8461"),
            Ok(Target::Tcp(_))
        ));
        assert!(matches!(parse_target("[::1]:8461"), Ok(Target::Tcp(_))));
        assert!(matches!(
            parse_target("unix:/run/x.sock"),
            Ok(Target::Unix(_))
        ));
        assert!(parse_target("inet:192.0.2.1:8461").is_err());
        assert!(parse_target("unix:x.sock").is_err());
        assert!(parse_target("localhost:8461").is_err());
    }
}

//! Starting the real daemon in-process against a [`World`](super::World), and raw protocol clients
//! that speak socketmap and tcp_table byte for byte, as Postfix does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::config::{Config, ListenAddr};
use mta_sts_policyd::daemon::Daemon;
use mta_sts_policyd::discovery::NetSource;
use mta_sts_policyd::discovery::dns::Dns;
use mta_sts_policyd::discovery::https::Fetcher;
use mta_sts_policyd::proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::World;

/// Short timeouts keep failure tests fast; the defaults are for the real internet.
pub const DNS_TIMEOUT: &str = "2s";
pub const HTTPS_TIMEOUT: &str = "3s";

/// The config text for a daemon in `world`, with `extra` appended (more `[maps.*]` tables, ...).
pub fn config_text(world: &World, extra: &str) -> String {
    config_text_map(world, "default", extra)
}

/// As [`config_text`], with `tcp_map` as the tcp_table profile.
pub fn config_text_map(world: &World, tcp_map: &str, extra: &str) -> String {
    format!(
        r#"
[socketmap]
listen = ["inet:127.0.0.1:0"]
[tcp_table]
listen = ["inet:127.0.0.1:0"]
map = "{tcp_map}"
[dns]
nameservers = ["{dns}"]
timeout = "{DNS_TIMEOUT}"
[https]
timeout = "{HTTPS_TIMEOUT}"
ca_files = ["{ca}"]
port = {port}
# The test world lives on 127.0.0.1.
allow_private_addresses = true
[cache]
dir = "{state}"
[control]
socket = "{control}"
[maps.strict]
strict_testing = true
[maps.tlsrpt]
tlsrpt = true
[maps.nosni]
servername = false
{extra}
"#,
        dns = world.dns_addr(),
        ca = world.ca_file().display(),
        port = world.https_port(),
        state = world.dir().join("state").display(),
        control = world.dir().join("control.sock").display(),
    )
}

pub struct TestDaemon {
    pub daemon: Daemon,
    pub socketmap: SocketAddr,
    pub tcp_table: SocketAddr,
}

impl TestDaemon {
    pub async fn start(world: &World) -> TestDaemon {
        TestDaemon::start_with(world, "").await
    }

    pub async fn start_with(world: &World, extra: &str) -> TestDaemon {
        let config = Config::parse(&config_text(world, extra), Some(Path::new("test.toml")))
            .expect("test config must be valid");
        TestDaemon::from_config(config).await
    }

    pub async fn from_config(config: Config) -> TestDaemon {
        let config = Arc::new(config);
        let dns = Dns::new(&config.dns).expect("resolver");
        let fetcher = Fetcher::new(&config.https, dns.clone()).expect("fetcher");
        let source = Arc::new(NetSource::new(dns, fetcher));
        let opts = mta_sts_policyd::daemon::Options::new(source, Arc::new(SystemClock));
        let daemon = Daemon::start(config, opts).await.expect("daemon starts");
        let tcp = |p| match daemon.addrs(p).first() {
            Some(ListenAddr::Tcp(a)) => *a,
            other => panic!("no TCP listener for {p:?}: {other:?}"),
        };
        let socketmap = tcp(Protocol::from_name("socketmap").expect("registered"));
        let tcp_table = tcp(Protocol::from_name("tcp_table").expect("registered"));
        TestDaemon {
            daemon,
            socketmap,
            tcp_table,
        }
    }

    pub async fn socketmap(&self) -> SocketmapClient {
        SocketmapClient::connect(self.socketmap).await
    }

    pub async fn tcp_table(&self) -> TcpTableClient {
        TcpTableClient::connect(self.tcp_table).await
    }

    /// One lookup on a fresh socketmap connection with map "postfix"; the reply payload.
    pub async fn ask(&self, key: &str) -> String {
        self.socketmap()
            .await
            .query("postfix", key.as_bytes())
            .await
    }
}

/// How long a test waits for any single reply before failing.
pub const REPLY_WAIT: Duration = Duration::from_secs(20);

pub struct SocketmapClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v.push(b',');
    v
}

impl SocketmapClient {
    /// A client on a connection opened elsewhere.
    pub fn from_stream(stream: TcpStream) -> SocketmapClient {
        SocketmapClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> SocketmapClient {
        SocketmapClient {
            stream: TcpStream::connect(addr).await.expect("connect socketmap"),
            buf: Vec::new(),
        }
    }

    /// Sends `<map> <key>` and returns the reply payload (e.g. `NOTFOUND ` or `OK secure ...`).
    pub async fn query(&mut self, map: &str, key: &[u8]) -> String {
        let mut payload = format!("{map} ").into_bytes();
        payload.extend_from_slice(key);
        self.send_raw(&netstring(&payload)).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("connection closed instead of answering {map} {key:?}"))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next reply payload, or None when the server closed the connection.
    pub async fn reply(&mut self) -> Option<String> {
        tokio::time::timeout(REPLY_WAIT, self.read_reply())
            .await
            .expect("no reply within REPLY_WAIT")
    }

    async fn read_reply(&mut self) -> Option<String> {
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .expect("length digits")
                    .parse()
                    .expect("length");
                if self.buf.len() > colon + len + 1 {
                    assert_eq!(self.buf[colon + 1 + len], b',', "netstring must end in ','");
                    let payload =
                        String::from_utf8(self.buf[colon + 1..colon + 1 + len].to_vec()).unwrap();
                    self.buf.drain(..colon + len + 2);
                    return Some(payload);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True when the server has closed the connection (EOF within a short wait).
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

pub struct TcpTableClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpTableClient {
    pub async fn connect(addr: SocketAddr) -> TcpTableClient {
        TcpTableClient {
            stream: TcpStream::connect(addr).await.expect("connect tcp_table"),
            buf: Vec::new(),
        }
    }

    /// Sends `get <encoded key>\n`; returns the reply line without its LF.
    pub async fn get(&mut self, key: &[u8]) -> String {
        let line = format!(
            "get {}\n",
            mta_sts_policyd::proto::tcp_table::encode_key(key)
        );
        self.send_raw(line.as_bytes()).await;
        self.line().await.expect("tcp_table reply")
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(REPLY_WAIT, async {
            loop {
                if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8(self.buf[..lf].to_vec()).unwrap();
                    self.buf.drain(..=lf);
                    return Some(line);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no reply within REPLY_WAIT")
    }
}

/// The policy body most tests serve.
pub fn enforce_body(mx: &[&str]) -> String {
    let mut s = String::from("version: STSv1\nmode: enforce\n");
    for m in mx {
        s.push_str(&format!("mx: {m}\n"));
    }
    s.push_str("max_age: 86400\n");
    s
}

/// Starts `<bin> -c <config> serve` as a child process and waits for its `listening` (socketmap)
/// and `ready` log lines; returns the child, the socketmap address the kernel chose, and the
/// rest of its log lines.
pub fn serve_child(
    bin: &str,
    config: &Path,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    serve_child_env(bin, config, &[])
}

/// As [`serve_child`], with extra environment variables.
pub fn serve_child_env(
    bin: &str,
    config: &Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the daemon");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("daemon log line");
        if line.contains("listening") && line.contains("socketmap") {
            let a = line.split("inet:").nth(1).expect("inet address");
            let a: String = a
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            addr = Some(a.parse().expect("socket address"));
        }
        if line.contains("ready") && addr.is_some() {
            break;
        }
    }
    (child, addr.expect("socketmap address"), rx)
}

//! Starting the real daemon in-process against a [`World`](super::World), and raw protocol clients
//! that speak socketmap and tcp_table byte for byte, as Postfix does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::config::{Config, ListenAddr};
use mta_sts_policyd::daemon::{Daemon, Options};
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

/// Replaces the one occurrence of `from` in `text`; panics unless there is exactly one, so that an
/// edit that matched nothing cannot leave a test running on the unedited config.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in the harness config:\n{text}"
    );
    text.replace(from, to)
}

/// The harness config of a [`World`] as text, edited before a daemon starts on it: other DNS or
/// HTTPS servers, another state directory or control socket, any other one-place edit.
#[derive(Clone, Debug)]
pub struct ConfigText {
    text: String,
    dns_addr: String,
    https_port: u16,
    ca_file: PathBuf,
    state_dir: PathBuf,
    control_socket: PathBuf,
}

impl ConfigText {
    /// [`config_text`]`(world, "")`.
    pub fn of(world: &World) -> ConfigText {
        ConfigText::of_map(world, "default")
    }

    /// [`config_text_map`]`(world, tcp_map, "")`.
    pub fn of_map(world: &World, tcp_map: &str) -> ConfigText {
        ConfigText {
            text: config_text_map(world, tcp_map, ""),
            dns_addr: world.dns_addr().to_string(),
            https_port: world.https_port(),
            ca_file: world.ca_file().to_path_buf(),
            state_dir: world.dir().join("state"),
            control_socket: world.dir().join("control.sock"),
        }
    }

    /// Replaces the one occurrence of `from` (see [`replace_once`]).
    pub fn replace(mut self, from: &str, to: &str) -> ConfigText {
        self.text = replace_once(&self.text, from, to);
        self
    }

    /// `[dns] nameservers = ["<addr>"]` instead of the world's DNS server.
    pub fn nameserver(self, addr: &str) -> ConfigText {
        let from = format!("nameservers = [\"{}\"]", self.dns_addr);
        self.replace(&from, &format!("nameservers = [\"{addr}\"]"))
    }

    /// `[https] port` instead of the world's HTTPS port.
    pub fn https_port(self, port: u16) -> ConfigText {
        let from = format!("port = {}", self.https_port);
        self.replace(&from, &format!("port = {port}"))
    }

    /// `[https] ca_files = ["<file>"]` instead of the world's root CA.
    pub fn ca_file(self, file: &Path) -> ConfigText {
        let from = format!("ca_files = [\"{}\"]", self.ca_file.display());
        self.replace(&from, &format!("ca_files = [\"{}\"]", file.display()))
    }

    /// `[cache] dir` instead of `<world dir>/state`.
    pub fn state_dir(self, dir: &Path) -> ConfigText {
        let from = self.state_dir.display().to_string();
        self.replace(&from, &dir.display().to_string())
    }

    /// `[control] socket` instead of `<world dir>/control.sock`, followed by `lines` (more keys of
    /// the `[control]` table, or nothing).
    pub fn control_socket(self, path: &Path, lines: &str) -> ConfigText {
        let from = format!("socket = \"{}\"", self.control_socket.display());
        let mut to = format!("socket = \"{}\"", path.display());
        if !lines.is_empty() {
            to = format!("{to}\n{lines}");
        }
        self.replace(&from, &to)
    }

    /// Appends `lines` (whole lines, each ending in a newline) at the end of the config.
    pub fn append(mut self, lines: &str) -> ConfigText {
        self.text.push_str(lines);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed config; panics when the edits made it invalid.
    pub fn config(&self) -> Config {
        Config::parse(&self.text, Some(Path::new("test.toml")))
            .unwrap_or_else(|e| panic!("test config must be valid: {e:?}\n{}", self.text))
    }

    /// The daemon started in-process on this config.
    pub async fn start(&self) -> TestDaemon {
        TestDaemon::from_config(self.config()).await
    }
}

/// The daemon's real network source for `config` (DNS resolver and HTTPS fetcher) and the system
/// clock, as `serve` builds them.
pub fn daemon_options(config: &Config) -> Options {
    let dns = Dns::new(&config.dns).expect("resolver");
    let fetcher = Fetcher::new(&config.https, dns.clone()).expect("fetcher");
    let source = Arc::new(NetSource::new(dns, fetcher));
    Options::new(source, Arc::new(SystemClock))
}

/// The HTTPS fetcher alone, with its own resolver, for `config`.
pub fn fetcher(config: &Config) -> Fetcher {
    let dns = Dns::new(&config.dns).expect("resolver");
    Fetcher::new(&config.https, dns).expect("fetcher")
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
        let opts = daemon_options(&config);
        TestDaemon::with_options(config, opts).await
    }

    /// The daemon on `config` with `opts` (another clock, another source).
    pub async fn with_options(config: Config, opts: Options) -> TestDaemon {
        let daemon = Daemon::start(Arc::new(config), opts)
            .await
            .expect("daemon starts");
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

/// A world in which `good.test` publishes (id 1) an enforce policy for `mx.good.test`: what most
/// tests ask for first.
pub async fn good_world() -> World {
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    w
}

/// [`good_world`] and a daemon on it with the harness config.
pub async fn good_world_and_daemon() -> (World, TestDaemon) {
    let w = good_world().await;
    let d = TestDaemon::start(&w).await;
    (w, d)
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

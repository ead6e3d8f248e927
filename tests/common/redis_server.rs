//! A real `redis-server` for the fleet tests: its own instance on a free loopback port, no
//! persistence, in a temporary directory, killed on drop. Runs where Redis is installed (CI
//! installs it and sets CI=true, which makes a missing `redis-server` a failure, not a skip).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS_SERVER: &str = "redis-server";

/// Whether `redis-server` can run here; under CI=true its absence fails the test.
pub fn redis_available() -> bool {
    let found = Command::new(REDIS_SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!(
            "redis-server is not installed, but CI must run this test (apt-get install redis-server)"
        );
    }
    if !found {
        eprintln!("redis-server not installed; skipping (install redis-server to run this test)");
    }
    found
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// A server with these extra arguments (`["--requirepass", "x"]`, `["--maxmemory", ...]`).
    pub async fn start(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new(REDIS_SERVER)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: the server vanishes without closing connections politely.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new server on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A direct connection for the test itself (with `password`, if the server wants one).
    pub async fn conn(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to redis-server")
    }

    /// `GET key` as text (None when absent).
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn(None).await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("GET")
    }

    /// Waits until `key` satisfies `want` (up to 10 s); its last value.
    pub async fn wait_for(&self, key: &str, want: impl Fn(Option<&str>) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.get(key).await;
            if want(v.as_deref()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{key} never became as wanted: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[fleet]` section for a server.
pub fn fleet_section(url: &str, extra: &str) -> String {
    format!("[fleet]\nredis = \"{url}\"\n{extra}")
}

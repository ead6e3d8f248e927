//! A fleet of daemons on one real `redis-server` (`[fleet]`): a domain one daemon discovered is
//! answered by another without its own DNS and HTTPS; one refresh per domain per interval across
//! the fleet (fetches counted on the test HTTPS server) and a vanished lease holder taken over;
//! fleet-wide `ctl evict` and `ctl purge`; garbage under a domain's key; a wrong password. The
//! outage under load is in `fleet_outage.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::World;
use common::harness::{ConfigText, TestDaemon, daemon_options, enforce_body};
use common::redis_server::{RedisServer, fleet_section, redis_available};
use mta_sts_policyd::clock::Clock;
use mta_sts_policyd::metrics::{FleetError, FleetLookup};
use mta_sts_policyd::resolve::refresh;
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

const SECURE_GOOD: &str = "OK secure match=mx.good.test servername=hostname";
const KEY_GOOD: &str = "mta-sts:policy:good.test";

/// The harness config of `w` with its own state directory and control socket (`name`), and
/// `fleet` appended.
fn config(w: &World, name: &str, fleet: &str) -> ConfigText {
    let dir = w.dir().join(name);
    ConfigText::of(w)
        .state_dir(&dir)
        .control_socket(&w.dir().join(format!("{name}.sock")), "")
        .append(fleet)
}

async fn ctl(socket: &Path, req: Value) -> Value {
    let lines = control::request(socket, &req, None).await.expect("control");
    lines.last().cloned().expect("a reply")
}

/// Waits until `cond` holds (up to 10 s).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policy_id(d: &TestDaemon, domain: &str) -> Option<String> {
    let r = d.daemon.resolver();
    r.cache()
        .valid_policy(domain, r.clock().now())
        .map(|e| e.id.to_string())
}

#[tokio::test]
async fn second_daemon_answers_a_domain_only_the_first_discovered_with_its_dns_and_https_unreachable()
 {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = fleet_section(&redis.url(), "");
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let a = config(&w, "a", &fleet).start().await;
    // B: nothing answers on port 9 (DNS and HTTPS): all it knows comes from the fleet.
    let b = config(&w, "b", &fleet)
        .nameserver("127.0.0.1:9")
        .https_port(9)
        .start()
        .await;

    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    assert_eq!(a.ask("none.test").await, "NOTFOUND ");
    let shared = redis.wait_for(KEY_GOOD, |v| v.is_some()).await.unwrap();
    assert!(shared.contains("\"id\":\"1\""), "{shared}");
    redis
        .wait_for("mta-sts:policy:none.test", |v| {
            v.is_some_and(|v| v.contains("\"t\":\"negative\""))
        })
        .await;

    assert_eq!(b.ask("good.test").await, SECURE_GOOD);
    assert_eq!(b.ask("none.test").await, "NOTFOUND ");
    let counters = b.daemon.resolver().metrics().fleet();
    assert_eq!(counters.lookups(FleetLookup::Hit), 2);
    assert_eq!(w.fetches("good.test"), 1, "only A fetched");
    assert_eq!(w.dns_queries("_mta-sts.good.test"), 1, "only A asked DNS");
    // Taken like a fetched policy: on B's own disk (RFC 8461 §10.2 trust on first use).
    assert_eq!(policy_id(&b, "good.test").as_deref(), Some("1"));
    b.daemon.shutdown().await;
    let journal = std::fs::read_to_string(w.dir().join("b").join("policies.journal")).unwrap();
    assert!(
        journal.contains("good.test") && journal.contains("none.test"),
        "{journal}"
    );
    a.daemon.shutdown().await;
}

/// A clock that the test moves forward: both daemons "live" a refresh interval in a moment.
#[derive(Default)]
struct Skewed(AtomicU64);

impl Skewed {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs(), Ordering::Relaxed);
    }
}

impl Clock for Skewed {
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.0.load(Ordering::Relaxed))
    }
}

async fn skewed_daemon(c: ConfigText) -> (TestDaemon, Arc<Skewed>) {
    let clock = Arc::new(Skewed::default());
    let config = c.config();
    let mut opts = daemon_options(&config);
    opts.clock = clock.clone();
    (TestDaemon::with_options(config, opts).await, clock)
}

const DAY: Duration = Duration::from_secs(86_400);
const WEEK_POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 604800\n";
const WEEK_POLICY_2: &str =
    "version: STSv1\nmode: enforce\nmx: mx.good.test\nmx: mx2.good.test\nmax_age: 604800\n";

#[tokio::test]
async fn one_refresh_per_domain_per_interval_across_two_daemons_and_a_vanished_lease_holder_is_taken_over()
 {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = fleet_section(&redis.url(), "");
    let w = World::start().await;
    w.good_domain("good.test", "1", WEEK_POLICY).await;
    let (a, clock_a) = skewed_daemon(config(&w, "a", &fleet)).await;
    let (b, clock_b) = skewed_daemon(config(&w, "b", &fleet)).await;
    let txt = || w.dns_queries("_mta-sts.good.test");

    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    assert_eq!(b.ask("good.test").await, SECURE_GOOD);
    assert_eq!((w.fetches("good.test"), txt()), (1, 1));
    let (ra, rb) = (a.daemon.resolver().clone(), b.daemon.resolver().clone());

    // One interval later the domain publishes a new policy; both daemons' checks are due.
    w.good_domain("good.test", "2", WEEK_POLICY_2).await;
    clock_a.advance(DAY);
    clock_b.advance(DAY);
    tokio::join!(
        refresh::due(&ra, "good.test"),
        refresh::due(&rb, "good.test")
    );
    assert_eq!(
        (w.fetches("good.test"), txt()),
        (2, 2),
        "one TXT query and one fetch for the fleet, not one per daemon"
    );
    redis
        .wait_for(KEY_GOOD, |v| v.is_some_and(|v| v.contains("\"id\":\"2\"")))
        .await;
    // The other daemon looks again when the lease ends, and takes the new policy.
    tokio::join!(
        refresh::due(&ra, "good.test"),
        refresh::due(&rb, "good.test")
    );
    assert_eq!(policy_id(&a, "good.test").as_deref(), Some("2"));
    assert_eq!(policy_id(&b, "good.test").as_deref(), Some("2"));
    assert_eq!((w.fetches("good.test"), txt()), (2, 2));

    // The next interval: the TXT id is unchanged (RFC 8461 §3.1: no fetch); one check.
    let before = redis.get(KEY_GOOD).await;
    clock_a.advance(DAY);
    clock_b.advance(DAY);
    tokio::join!(
        refresh::due(&ra, "good.test"),
        refresh::due(&rb, "good.test")
    );
    assert_eq!((w.fetches("good.test"), txt()), (2, 3));
    redis.wait_for(KEY_GOOD, |v| v != before.as_deref()).await;
    tokio::join!(
        refresh::due(&ra, "good.test"),
        refresh::due(&rb, "good.test")
    );
    assert_eq!((w.fetches("good.test"), txt()), (2, 3));

    // A lease holder that vanished: nobody refreshes until its lease ends, then one does.
    let mut c = redis.conn(None).await;
    let _: () = redis::cmd("SET")
        .arg("mta-sts:lease:good.test")
        .arg("a-host-that-vanished")
        .arg("PX")
        .arg(1500)
        .query_async(&mut c)
        .await
        .unwrap();
    clock_a.advance(DAY);
    clock_b.advance(DAY);
    refresh::due(&ra, "good.test").await;
    assert_eq!(txt(), 3, "the lease is held elsewhere");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    refresh::due(&ra, "good.test").await;
    assert_eq!(txt(), 4, "the lease ended: this host takes over");
    a.daemon.shutdown().await;
    b.daemon.shutdown().await;
}

#[tokio::test]
async fn a_newer_local_policy_wins_over_an_older_shared_one() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = fleet_section(&redis.url(), "");
    let w = World::start().await;
    w.good_domain("good.test", "2", WEEK_POLICY).await;
    let (a, clock) = skewed_daemon(config(&w, "a", &fleet)).await;
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    // An older policy (fetched an hour before ours), confirmed "just now" by some host.
    let now = clock
        .now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let older = json!({"v": 1, "t": "policy", "d": "good.test", "id": "1",
        "fetched": now - 3600, "checked": now,
        "policy": "version: STSv1\nmode: testing\nmx: evil.example\nmax_age: 604800\n"});
    let mut c = redis.conn(None).await;
    let _: () = redis::cmd("SET")
        .arg(KEY_GOOD)
        .arg(older.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    refresh::due(a.daemon.resolver(), "good.test").await;
    assert_eq!(policy_id(&a, "good.test").as_deref(), Some("2"));
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    a.daemon.shutdown().await;
}

/// Waits until `n` daemons listen on the fleet's channel.
async fn subscribers(redis: &RedisServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = redis.conn(None).await;
    loop {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("mta-sts:ctl")
            .query_async(&mut c)
            .await
            .unwrap();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {n} daemons subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fleet_wide_evict_and_purge_reach_every_daemon_and_local_ones_do_not() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = fleet_section(&redis.url(), "");
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let a = config(&w, "a", &fleet).start().await;
    let b = config(&w, "b", &fleet).start().await;
    let (sock_a, sock_b) = (w.dir().join("a.sock"), w.dir().join("b.sock"));
    subscribers(&redis, 2).await;
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    assert_eq!(b.ask("good.test").await, SECURE_GOOD);

    let r = ctl(&sock_a, json!({"verb": "evict", "domain": "good.test"})).await;
    assert_eq!(r["evicted"], true, "{r}");
    assert_eq!(r["fleet"], "fleet-wide: sent to 1 other daemon(s)", "{r}");
    assert_eq!(redis.get(KEY_GOOD).await, None, "the shared entry is gone");
    eventually("B evicted good.test", || {
        b.daemon.resolver().cache().view("good.test").is_none()
    })
    .await;
    assert!(a.daemon.resolver().cache().view("good.test").is_none());

    // --local: this daemon only.
    assert_eq!(b.ask("good.test").await, SECURE_GOOD);
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    let r = ctl(
        &sock_b,
        json!({"verb": "evict", "domain": "good.test", "local": true}),
    )
    .await;
    assert_eq!(r["fleet"], "this daemon only (--local)", "{r}");
    assert!(b.daemon.resolver().cache().view("good.test").is_none());
    assert!(redis.get(KEY_GOOD).await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.daemon.resolver().cache().view("good.test").is_some());

    // Fleet-wide purge from B: A's cache and the shared entries empty.
    let r = ctl(&sock_b, json!({"verb": "purge", "yes": true})).await;
    assert_eq!(r["fleet"], "fleet-wide: sent to 1 other daemon(s)", "{r}");
    assert_eq!(redis.get(KEY_GOOD).await, None);
    eventually("A purged", || a.daemon.resolver().cache().is_empty()).await;

    let st = ctl(&sock_a, json!({"verb": "status"})).await;
    assert_eq!(st["fleet"]["state"], "up", "{st}");
    assert_eq!(st["fleet"]["redis"], redis.url(), "{st}");
    a.daemon.shutdown().await;
    b.daemon.shutdown().await;
}

#[tokio::test]
async fn garbage_under_a_domain_key_is_refused_and_the_domain_discovered() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = fleet_section(&redis.url(), "");
    let w = World::start().await;
    for d in ["g1", "g2", "g3", "g4", "g5"] {
        w.good_domain(
            &format!("{d}.test"),
            "1",
            &enforce_body(&[&format!("mx.{d}.test")]),
        )
        .await;
    }
    let mut c = redis.conn(None).await;
    let future = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let hostile = json!({"v": 1, "t": "policy", "d": "g2.test", "id": "1",
        "fetched": future, "checked": future,
        "policy": "version: STSv1\nmode: enforce\nmx: evil.example\nmax_age: 604800\n"});
    let wrong_domain = json!({"v": 1, "t": "negative", "d": "other.test",
        "reason": "none", "until": future});
    for (key, value) in [
        (
            "mta-sts:policy:g1.test",
            "\u{0}\u{1}not json at all".to_string(),
        ),
        ("mta-sts:policy:g2.test", hostile.to_string()),
        ("mta-sts:policy:g4.test", "x".repeat(300_000)),
        ("mta-sts:policy:g5.test", wrong_domain.to_string()),
    ] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // A value of the wrong type.
    let _: () = redis::cmd("RPUSH")
        .arg("mta-sts:policy:g3.test")
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();

    let a = config(&w, "a", &fleet).start().await;
    for d in ["g1", "g2", "g3", "g4", "g5"] {
        assert_eq!(
            a.ask(&format!("{d}.test")).await,
            format!("OK secure match=mx.{d}.test servername=hostname"),
            "{d}: discovered, not taken from the garbage"
        );
        assert_eq!(w.fetches(&format!("{d}.test")), 1);
    }
    let counters = a.daemon.resolver().metrics().fleet();
    assert_eq!(counters.errors(FleetError::Garbage), 5);
    assert_eq!(counters.lookups(FleetLookup::Hit), 0);
    // The real entries replace the garbage.
    redis
        .wait_for("mta-sts:policy:g3.test", |v| {
            v.is_some_and(|v| v.contains("mx.g3.test"))
        })
        .await;
    redis
        .wait_for("mta-sts:policy:g2.test", |v| {
            v.is_some_and(|v| !v.contains("evil"))
        })
        .await;
    a.daemon.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_counted_as_auth_never_shown_and_a_reload_with_the_right_one_joins() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&["--requirepass", "right-horse-battery"]).await;
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    w.good_domain("two.test", "1", &enforce_body(&["mx.two.test"]))
        .await;
    let pw = w.dir().join("redis.password");
    std::fs::write(&pw, "wrong-staple\n").unwrap();
    let fleet = fleet_section(
        &redis.url(),
        &format!("password_file = \"{}\"\n", pw.display()),
    );
    let text = config(&w, "a", &fleet);
    let mut a = text.start().await;
    let sock = w.dir().join("a.sock");

    assert_eq!(
        a.ask("good.test").await,
        SECURE_GOOD,
        "answered as without [fleet]"
    );
    let counters = a.daemon.resolver().metrics().fleet();
    // The lookup's miss and the publish after its discovery: the handshake's AUTH fails.
    eventually("an auth error counted", || {
        counters.errors(FleetError::Auth) >= 1
    })
    .await;
    let st = ctl(&sock, json!({"verb": "status"})).await;
    assert_eq!(st["fleet"]["state"], "down", "{st}");
    assert!(
        st["fleet"]["last_error"]
            .as_str()
            .unwrap_or("")
            .starts_with("auth"),
        "{st}"
    );
    let shown = st.to_string();
    assert!(
        !shown.contains("wrong-staple") && !shown.contains("right-horse"),
        "{shown}"
    );
    let metrics = a.daemon.resolver().metrics().render(&a.daemon.gauges());
    assert!(
        metrics.contains("mta_sts_fleet_errors_total{kind=\"auth\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("\nmta_sts_fleet_up 0\n"), "{metrics}");

    // The right password, and a reload: the daemon joins.
    std::fs::write(&pw, "right-horse-battery\n").unwrap();
    let config = text.config();
    let source = daemon_options(&config).source;
    let summary = a.daemon.reload(config, source).await.unwrap();
    assert!(summary.contains("[fleet] applied"), "{summary}");
    assert_eq!(
        a.ask("two.test").await,
        "OK secure match=mx.two.test servername=hostname"
    );
    let mut c = redis.conn(Some("right-horse-battery")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = redis::cmd("GET")
            .arg("mta-sts:policy:two.test")
            .query_async(&mut c)
            .await
            .unwrap();
        if v.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never published after the reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = ctl(&sock, json!({"verb": "status"})).await;
    assert_eq!(st["fleet"]["state"], "up", "{st}");
    a.daemon.shutdown().await;
}

#[tokio::test]
async fn a_full_server_refuses_the_publish_as_oom_and_lookups_go_on() {
    if !redis_available() {
        return;
    }
    let redis =
        RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]).await;
    // Filled up to the limit, with ever smaller values: every later write is refused with OOM.
    let mut c = redis.conn(None).await;
    let mut full = false;
    let mut n = 0;
    for size in [256 << 10, 16 << 10, 1 << 10, 64] {
        full = false;
        for _ in 0..4096 {
            n += 1;
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("filler{n}"))
                .arg("x".repeat(size))
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                assert_eq!(e.code(), Some("OOM"), "{e}");
                full = true;
                break;
            }
        }
    }
    assert!(full, "the server never filled up");
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let a = config(&w, "a", &fleet_section(&redis.url(), ""))
        .start()
        .await;
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    let counters = a.daemon.resolver().metrics().fleet();
    eventually("the publish refused as OOM", || {
        counters.errors(FleetError::Oom) == 1
    })
    .await;
    assert_eq!(counters.publishes(), (0, 1));
    assert_eq!(redis.get(KEY_GOOD).await, None);
    // The server answers reads: it is up, and the breaker stays closed.
    let st = ctl(&w.dir().join("a.sock"), json!({"verb": "status"})).await;
    assert_eq!(st["fleet"]["state"], "up", "{st}");
    assert_eq!(st["fleet"]["breaker"], "closed", "{st}");
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    a.daemon.shutdown().await;
}

#[tokio::test]
async fn a_redis_unix_socket_url_is_used() {
    if !redis_available() {
        return;
    }
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("redis.sock");
    let redis = RedisServer::start(&["--unixsocket", &sock.display().to_string()]).await;
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let url = format!("redis+unix://{}", sock.display());
    let a = config(&w, "a", &fleet_section(&url, "")).start().await;
    assert_eq!(a.ask("good.test").await, SECURE_GOOD);
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    a.daemon.shutdown().await;
}

#[tokio::test]
async fn a_silent_server_costs_a_miss_at_most_the_timeout_and_the_breaker_stops_asking() {
    // Accepts connections and never answers: the slowest kind of broken server.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let w = World::start().await;
    for i in 0..8 {
        w.good_domain(
            &format!("d{i}.test"),
            "1",
            &enforce_body(&[&format!("mx.d{i}.test")]),
        )
        .await;
    }
    let url = format!("redis://127.0.0.1:{port}/0");
    let a = config(&w, "a", &fleet_section(&url, "")).start().await;
    for i in 0..8 {
        let start = Instant::now();
        let reply = a.ask(&format!("d{i}.test")).await;
        let took = start.elapsed();
        assert_eq!(
            reply,
            format!("OK secure match=mx.d{i}.test servername=hostname")
        );
        // The discovery on loopback takes milliseconds; the fleet adds at most its 50 ms.
        assert!(took < Duration::from_millis(50 + 450), "d{i}: {took:?}");
    }
    let c = a.daemon.resolver().metrics().fleet();
    assert!(
        c.errors(FleetError::Timeout) >= 3,
        "{}",
        c.errors(FleetError::Timeout)
    );
    assert!(
        c.lookups(FleetLookup::Skipped) >= 1,
        "the breaker opened and later misses did not ask"
    );
    let st = ctl(&w.dir().join("a.sock"), json!({"verb": "status"})).await;
    assert_eq!(st["fleet"]["state"], "down", "{st}");
    a.daemon.shutdown().await;
}

#[test]
fn check_config_shows_the_fleet_but_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis.password");
    std::fs::write(&pw, "hunter2-staple\n").unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = \"{}\"\n[fleet]\nredis = \"redis://cache.example:6379/2\"\npassword_file = \"{}\"\n",
            dir.path().join("state").display(),
            pw.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
        .arg("-c")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("fleet: redis://cache.example:6379/2, key_prefix \"mta-sts:\", timeout \"50ms\", password from"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// DANE states are shared like policies: a second daemon whose DNS answers nothing gives the
/// DANE answer the first one learnt, from the fleet cache (and keeps it on its own disk).
#[tokio::test]
async fn a_dane_state_learnt_by_one_daemon_is_answered_by_another_without_dns() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start(&[]).await;
    let fleet = format!(
        "{}\n[maps.dane]\ndane = true\n",
        fleet_section(&redis.url(), "")
    );
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    w.set_mx("good.test", &[(10, "mx.good.test")]).await;
    w.set_a("mx.good.test", std::net::Ipv4Addr::new(192, 0, 2, 25))
        .await;
    w.set_tlsa("_25._tcp.mx.good.test", &[(3, 1, 1, &[0xab; 32])])
        .await;
    w.sign("good.test");
    let a = config(&w, "a", &fleet).start().await;
    let b = config(&w, "b", &fleet)
        .nameserver("127.0.0.1:9")
        .https_port(9)
        .start()
        .await;
    let ask = |d: &TestDaemon| {
        let addr = d.socketmap;
        async move {
            common::harness::SocketmapClient::connect(addr)
                .await
                .query("dane", b"good.test")
                .await
        }
    };
    assert_eq!(ask(&a).await, "OK dane-only");
    let shared = redis
        .wait_for("mta-sts:dane:good.test", |v| v.is_some())
        .await
        .unwrap();
    assert!(shared.contains("\"verdict\":\"dane-only\""), "{shared}");
    redis.wait_for(KEY_GOOD, |v| v.is_some()).await;
    let queries = w.dns_queries("_25._tcp.mx.good.test");
    assert_eq!(ask(&b).await, "OK dane-only");
    assert_eq!(
        b.ask("good.test").await,
        SECURE_GOOD,
        "the plain map: MTA-STS"
    );
    assert_eq!(
        w.dns_queries("_25._tcp.mx.good.test"),
        queries,
        "B asked no DNS"
    );
    b.daemon.shutdown().await;
    let journal = std::fs::read_to_string(w.dir().join("b").join("policies.journal")).unwrap();
    assert!(journal.contains("\"d\":\"dane:good.test\""), "{journal}");

    // A fleet-wide evict takes the shared DANE state too.
    let sock = w.dir().join("a.sock");
    let e = ctl(&sock, json!({"verb": "evict", "domain": "good.test"})).await;
    assert_eq!(e["evicted"], true, "{e}");
    redis
        .wait_for("mta-sts:dane:good.test", |v| v.is_none())
        .await;
    a.daemon.shutdown().await;
}

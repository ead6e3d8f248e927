//! The operator's monitoring files in `packaging/monitoring/`, checked with the real Prometheus
//! tools: the alert rules pass `promtool check rules`, their unit tests pass `promtool test
//! rules` and cover every alert both firing and not firing, and every query of the Grafana
//! dashboard, evaluated by a real Prometheus server scraping a real daemon under load, returns
//! data. Runs where Debian's `prometheus` package is installed (CI installs it and sets CI=true,
//! which makes a missing `promtool` or `prometheus` a failure rather than a skip).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Http;
use common::harness::{TestDaemon, good_world};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The scrape (and rule evaluation) interval of the test server, and the data source's
/// "scrape interval" Grafana would be told: it sets `$__interval`'s floor and `$__rate_interval`.
const SCRAPE_SECS: u64 = 1;
/// The job name the alert rules and the README expect.
const JOB: &str = "mta-sts-policyd";
/// The dashboard's time range (its `time.from`), as `$__range` renders it.
const RANGE: &str = "21600s";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring")
}

fn read(name: &str) -> String {
    let path = monitoring_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The program `name` from Debian's `prometheus` package, or None (a skip) outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .or_else(|| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
                .then(|| PathBuf::from(name))
        });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{name} is not installed, but CI must run this test (apt-get install prometheus)"
            );
        }
        eprintln!("{name} not installed; skipping (apt-get install prometheus to run this test)");
    }
    found
}

/// Runs `promtool ARGS` in `packaging/monitoring/`; panics with its output unless it succeeds.
fn promtool(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alert names of the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool_bin) = tool("promtool") else {
        return;
    };
    let out = promtool(&promtool_bin, &["check", "rules", "prometheus-alerts.yml"]);
    let names = alert_names(&read("prometheus-alerts.yml"));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{out}"
    );
}

#[test]
fn every_alert_has_a_summary_description_severity_and_runbook() {
    let rules = read("prometheus-alerts.yml");
    let names = alert_names(&rules);
    assert_eq!(
        names,
        [
            "MtaStsPolicydDown",
            "MtaStsPolicydNotScraped",
            "MtaStsLookupsAnsweredTemp",
            "MtaStsJournalWriteErrors",
            "MtaStsPolicyDowngrade",
            "MtaStsDiscoveryFailureRatioHigh",
            "MtaStsCacheNearlyFull",
            "MtaStsPoliciesExpiringWithoutRefresh",
            "MtaStsFleetCacheUnavailable",
        ]
    );
    // Each rule's text runs from its `- alert:` line to the next one.
    let mut blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert_eq!(blocks.len(), names.len());
    for (name, block) in names.iter().zip(blocks.drain(..)) {
        for key in ["summary:", "description:", "runbook:", "severity:"] {
            assert!(block.contains(key), "{name} has no {key}");
        }
    }
}

/// Unit tests by alert: (cases where it must fire, cases where it must not).
fn unit_test_cases(tests: &str) -> BTreeMap<String, (usize, usize)> {
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current
                .take()
                .expect("exp_alerts follows an alertname line");
            let entry = cases.entry(name).or_default();
            if rest.trim() == "[]" {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    cases
}

#[test]
fn every_alert_has_unit_tests_that_fire_and_do_not_fire_and_promtool_passes_them() {
    let names: BTreeSet<String> = alert_names(&read("prometheus-alerts.yml"))
        .into_iter()
        .collect();
    let cases = unit_test_cases(&read("prometheus-alerts.test.yml"));
    let tested: BTreeSet<String> = cases.keys().cloned().collect();
    assert_eq!(
        tested, names,
        "unit tests name exactly the alerts of the rules file"
    );
    for (name, (fires, quiet)) in &cases {
        assert!(*fires >= 1, "{name}: no case where it fires");
        assert!(*quiet >= 1, "{name}: no case where it does not fire");
    }
    let Some(promtool_bin) = tool("promtool") else {
        return;
    };
    let out = promtool(
        &promtool_bin,
        &["test", "rules", "prometheus-alerts.test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_unit_test_coverage_check_tells_firing_from_quiet_cases() {
    let text = "
      - eval_time: 4m
        alertname: A
        exp_alerts: []
      - eval_time: 8m
        alertname: A
        exp_alerts:
          - exp_labels: {severity: critical}
      - eval_time: 8m
        alertname: B
        exp_alerts: []
";
    let cases = unit_test_cases(text);
    assert_eq!(cases["A"], (1, 1));
    assert_eq!(cases["B"], (0, 1));
}

/// Every panel of the dashboard, rows included, nested in collapsed rows or not.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON")
}

#[test]
fn dashboard_has_stable_ids_the_rows_and_a_query_per_panel() {
    let d = dashboard();
    assert_eq!(d["uid"], "mta-sts-policyd");
    let panels = all_panels(&d);
    let rows: Vec<(u64, &str)> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| {
            (
                p["id"].as_u64().expect("id"),
                p["title"].as_str().expect("title"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (100, "Lookups"),
            (200, "Cache"),
            (300, "Discovery"),
            (400, "Journal"),
            (500, "Connections"),
            (600, "DANE"),
            (700, "Fleet"),
        ]
    );
    let mut ids = BTreeSet::new();
    let mut row = 0;
    for p in &panels {
        let id = p["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        if p["type"] == "row" {
            row = id;
            continue;
        }
        // A panel's id is its row's id plus its place: new rows (DANE, fleet) take 600, 700, ...
        assert!(id > row && id < row + 100, "panel {id} is not in row {row}");
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "panel {id} has no description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("mta_sts_") || expr.contains("up{"), "{expr}");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {id}");
        }
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
}

/// `value` as Grafana's Prometheus data source puts a multi-value or include-all variable into a
/// query: backslashes doubled, regex metacharacters escaped for a `=~"..."` matcher.
fn grafana_regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str("\\\\");
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `value` as Grafana puts a single-value variable into a Prometheus query.
fn grafana_plain_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\\\'")
}

/// `expr` with the dashboard's variables replaced the way Grafana does for this job and one
/// selected instance, scraped every [`SCRAPE_SECS`]: `$__interval` at its floor, the scrape
/// interval, and `$__rate_interval = max($__interval + scrape interval, 4 * scrape interval)`.
fn grafana_interpolate(expr: &str, instance: &str) -> String {
    let interval = SCRAPE_SECS;
    let rate_interval = (interval + SCRAPE_SECS).max(4 * SCRAPE_SECS);
    let out = expr
        .replace("$__rate_interval", &format!("{rate_interval}s"))
        .replace("$__interval", &format!("{interval}s"))
        .replace("$__range", RANGE)
        .replace("$instance", &grafana_regex_escape(instance))
        .replace("$job", &grafana_plain_escape(JOB));
    assert!(
        !out.contains('$'),
        "a variable this test does not know how to fill: {out}"
    );
    out
}

#[test]
fn grafana_escaping_matches_its_prometheus_data_source() {
    assert_eq!(
        grafana_regex_escape("127.0.0.1:9461"),
        r"127\\.0\\.0\\.1:9461"
    );
    assert_eq!(grafana_regex_escape(r"a\b|c"), r"a\\\\b\\|c");
    assert_eq!(grafana_plain_escape("mta-sts-policyd"), "mta-sts-policyd");
    assert_eq!(
        grafana_interpolate(
            r#"rate(x{job="$job", instance=~"$instance"}[$__rate_interval])"#,
            "h:1"
        ),
        r#"rate(x{job="mta-sts-policyd", instance=~"h:1"}[4s])"#
    );
}

/// A child process killed (and reaped) when dropped, so that a failing test leaves no server.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET path` on `addr`: the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        // HTTP/1.0: the server closes after the response, no chunked encoding.
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    _child: Reaped,
}

impl Prometheus {
    /// Starts `prometheus` in `dir` scraping `target` every [`SCRAPE_SECS`] and evaluating the
    /// alert rules as often; waits for `/-/ready`. Retries on a new port if the one picked was
    /// taken in the meantime.
    async fn start(bin: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = monitoring_dir().join("prometheus-alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_SECS}s\n  evaluation_interval: {SCRAPE_SECS}s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display().to_string(),
            ),
        )
        .expect("write prometheus.yml");
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("spawn prometheus");
            let mut child = Reaped(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.0.try_wait() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("prometheus exited ({status}) on attempt {attempt}:\n{last_log}");
                    break;
                }
                if let Some((200, _)) = http_get(addr, "/-/ready").await {
                    return Prometheus {
                        addr,
                        log,
                        _child: child,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 30 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus did not start:\n{last_log}");
    }

    /// The JSON answer of an API call; panics on a transport failure.
    async fn api(&self, path_and_query: &str) -> (u16, Value) {
        let (status, body) = http_get(self.addr, path_and_query)
            .await
            .unwrap_or_else(|| panic!("no answer from prometheus to {path_and_query}"));
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {body}"));
        (status, v)
    }

    /// `/api/v1/query` at the server's now: the status code and the whole answer.
    async fn query(&self, expr: &str) -> (u16, Value) {
        self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await
    }

    /// The value of each sample of an instant vector answer.
    fn values(answer: &Value) -> Vec<f64> {
        answer["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Lookups until `stop`: cache hits of a good and a testing domain (socketmap and tcp_table), a
/// fresh domain without a policy each round (a discovery, NXDOMAIN), a broken policy host, and
/// a failing lookup on a map that answers TEMP.
async fn load(d: Arc<TestDaemon>, stop: Arc<AtomicBool>) -> u64 {
    let mut sm = d.socketmap().await;
    let mut tt = d.tcp_table().await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for key in ["good.test", "testing.test", "broken.test", "none.test"] {
            sm.query("postfix", key.as_bytes()).await;
        }
        // A failed discovery is remembered for a back-off, and answered TEMP on this map.
        sm.query("failclosed", b"broken.test").await;
        sm.query("postfix", format!("fresh{n}.test").as_bytes())
            .await;
        tt.get(b"good.test").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_a_loaded_daemon() {
    let Some(prometheus_bin) = tool("prometheus") else {
        return;
    };
    let w = good_world().await;
    w.good_domain(
        "testing.test",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    w.set_sts("broken.test", "1").await;
    w.set_http("broken.test", Http::ok(Some("text/html"), "x"))
        .await;
    let d = Arc::new(
        TestDaemon::start_with(
            &w,
            "[metrics]\nlisten = \"inet:127.0.0.1:0\"\n[maps.failclosed]\non_lookup_error = \"temp\"\n",
        )
        .await,
    );
    let target = d.daemon.metrics_addr().expect("metrics listener");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(d.clone(), stop.clone()));

    let dir = tempfile::tempdir().expect("temp dir");
    let prom = Prometheus::start(&prometheus_bin, dir.path(), target).await;

    // Enough scrapes for a rate over `$__rate_interval`, and every rule evaluated once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = format!("count_over_time(up{{job=\"{JOB}\"}}[30s]) >= 6 and up{{job=\"{JOB}\"}} == 1");
    let rules_state = loop {
        let (_, scraped) = prom.query(&up).await;
        let (_, rules) = prom.api("/api/v1/rules").await;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !all.is_empty()
            && all.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001-"))
            });
        if !Prometheus::values(&scraped).is_empty() && evaluated {
            break all.into_iter().cloned().collect::<Vec<Value>>();
        }
        assert!(
            Instant::now() < deadline,
            "no 6 scrapes of the daemon and one evaluation of every rule within 30 s: {scraped}\n{rules}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The server loaded every alert, and each evaluates without error on the daemon's series.
    let loaded: Vec<&str> = rules_state
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        loaded,
        alert_names(&read("prometheus-alerts.yml")),
        "the server's rules"
    );
    for r in &rules_state {
        assert_eq!(r["health"], "ok", "rule evaluation failed: {r}");
    }

    let instance = target.to_string();
    let dash = dashboard();
    let mut failures = Vec::new();
    let mut answers: BTreeMap<(u64, String), Value> = BTreeMap::new();
    let mut queries = 0;
    for p in all_panels(&dash) {
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let id = p["id"].as_u64().expect("id");
        for t in targets {
            let expr = grafana_interpolate(t["expr"].as_str().expect("expr"), &instance);
            let (status, answer) = prom.query(&expr).await;
            queries += 1;
            let result = answer["data"]["result"].as_array();
            if status != 200 || answer["status"] != "success" {
                failures.push(format!("panel {id}: {expr}\n  -> {status} {answer}"));
            } else if result.is_none_or(|r| r.is_empty()) {
                failures.push(format!("panel {id}: {expr}\n  -> no data"));
            }
            let ref_id = t["refId"].as_str().expect("refId").to_string();
            answers.insert((id, ref_id), answer);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = loader.await.expect("the load task");
    assert!(
        failures.is_empty(),
        "{} of {queries} dashboard queries failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        prom.log()
    );
    assert!(rounds > 0);

    // The load shows where it should: found, notfound and temp answers flowing, a hit ratio
    // between 0 and 1, a finite latency, NXDOMAIN discoveries, and both Postfix connections.
    let by_label = |id: u64, label: &str| -> BTreeMap<String, f64> {
        answers[&(id, "A".to_string())]["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["metric"][label].as_str()?.to_string(),
                    s["value"][1].as_str()?.parse().ok()?,
                ))
            })
            .collect()
    };
    let answered = by_label(101, "answer");
    for a in ["found", "notfound", "temp"] {
        assert!(
            answered.get(a).is_some_and(|v| *v > 0.0),
            "{a}: {answered:?}"
        );
    }
    let hit_ratio = Prometheus::values(&answers[&(201, "A".to_string())]);
    assert!(
        hit_ratio.len() == 1 && hit_ratio[0] > 0.0 && hit_ratio[0] < 1.0,
        "{hit_ratio:?}"
    );
    let p99 = Prometheus::values(&answers[&(103, "C".to_string())]);
    assert!(
        p99.len() == 1 && p99[0].is_finite() && p99[0] > 0.0,
        "{p99:?}"
    );
    let outcomes = by_label(301, "outcome");
    assert!(
        outcomes.get("nxdomain").is_some_and(|v| *v > 0.0),
        "{outcomes:?}"
    );
    let connections = Prometheus::values(&answers[&(501, "A".to_string())]);
    assert_eq!(connections, [2.0]);
}

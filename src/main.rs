//! `mta-sts-policyd`: wiring only. Arguments → config → logging → daemon → signal loop; plus
//! the one-shot subcommands (`query`, `check-config`, `check`, `ctl`). No protocol and no policy
//! logic lives here.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use mta_sts_policyd::answer;
use mta_sts_policyd::cache::PolicyEntry;
use mta_sts_policyd::check::{self, Postfix};
use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::config::{self, Config, LogConfig};
use mta_sts_policyd::daemon::{Daemon, Options};
use mta_sts_policyd::discovery::dns::Dns;
use mta_sts_policyd::discovery::https::Fetcher;
use mta_sts_policyd::discovery::{self, Outcome};
use mta_sts_policyd::discovery::{NetSource, PolicySource};
use mta_sts_policyd::key;
use mta_sts_policyd::resolve::{Lookup, Resolution};
use mta_sts_policyd::serve::control::{self, ReloadRequest};
use mta_sts_policyd::serve::postfix;
use mta_sts_policyd::service::{self, Activated, Notifier, Signal, Signals};

/// sysexits.h: the command was used incorrectly.
const EX_USAGE: u8 = 64;
/// sysexits.h: a service is unavailable (Postfix not installed, daemon not running).
const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h: an internal software error (cannot start the runtime, cannot bind).
const EX_SOFTWARE: u8 = 70;
/// sysexits.h: a configuration error.
const EX_CONFIG: u8 = 78;

/// How often `STATUS=` is refreshed for `systemctl status`.
const STATUS_EVERY: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "mta-sts-policyd",
    version,
    about = "MTA-STS (RFC 8461) policy daemon for Postfix smtp_tls_policy_maps"
)]
struct Cli {
    /// Configuration file (a missing file means all defaults).
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: answer Postfix on the configured (or socket-activated) listeners.
    Serve,
    /// Run one discovery for DOMAIN now (no daemon, no cache) and show what Postfix would get.
    Query {
        /// A domain, or any key as Postfix would send it ("[mx.example.com]:25", ...).
        domain: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration file and print the effective settings.
    CheckConfig,
    /// Check Postfix's configuration (via postconf) against this daemon's; exit 1 on findings.
    Check {
        /// The postconf command.
        #[arg(long, default_value = "postconf")]
        postconf: String,
        /// Postfix's configuration directory (postconf -c).
        #[arg(long)]
        postfix_config: Option<PathBuf>,
    },
    /// Inspect and steer the running daemon's cache through its control socket.
    Ctl {
        #[command(subcommand)]
        verb: CtlVerb,
        /// Print the daemon's JSON replies instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// The control socket (default: [control] socket from the configuration).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CtlVerb {
    /// Version, uptime, configuration, listeners, entries by mode.
    Status,
    /// Counters and gauges (the same as /metrics).
    Stats,
    /// Cached domains.
    List {
        /// enforce, testing, none or negative.
        #[arg(long)]
        mode: Option<String>,
        /// Only policies expiring within this time ("1d", "12h").
        #[arg(long)]
        expiring_within: Option<String>,
    },
    /// One domain: TXT id, policy, times, last error, hits, and the exact answer per map.
    Show { domain: String },
    /// Run a discovery now and print the result.
    Refresh {
        domain: Option<String>,
        /// Every cached policy (bounded by [refresh] concurrency).
        #[arg(long)]
        all: bool,
    },
    /// Remove one domain from the cache and the journal.
    Evict { domain: String },
    /// Remove every entry.
    Purge {
        #[arg(long)]
        yes: bool,
    },
    /// Every cached policy as JSON lines (for `import` on another host).
    Export,
    /// Merge policies from JSON lines (a file, or standard input), keeping the freshest fetch.
    Import { file: Option<PathBuf> },
    /// Re-read the configuration file.
    Reload,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::load(&cli.config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("mta-sts-policyd: configuration error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Command::Serve => {
            // Before the runtime starts threads: adopting inherited sockets may unset LISTEN_*.
            let activated = match service::take_activated() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("mta-sts-policyd: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let logging = Logging::init(&config.log);
            run(serve(config, cli.config, activated, logging))
        }
        Command::CheckConfig => check_config(&config),
        Command::Query { domain, json } => {
            Logging::init(&config.log);
            run(query(config, domain, json))
        }
        Command::Check {
            postconf,
            postfix_config,
        } => check_postfix(&config, &postconf, postfix_config.as_deref()),
        Command::Ctl { verb, json, socket } => run(ctl(&config, verb, json, socket)),
    }
}

fn run(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("mta-sts-policyd: cannot start the runtime: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

/// Logs go to stderr: text (without timestamps under systemd, whose journal adds them) or JSON
/// lines. The level comes from `[log] level` unless `RUST_LOG` is set, and can change on reload.
struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl Logging {
    fn init(cfg: &LogConfig) -> Logging {
        let env_override = std::env::var_os("RUST_LOG").is_some();
        let filter = if env_override {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
        } else {
            EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"))
        };
        let (filter, handle) = reload::Layer::new(filter);
        let journal = std::env::var_os("JOURNAL_STREAM").is_some();
        let fmt: Box<dyn Layer<_> + Send + Sync> = if cfg.json {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
        } else if journal {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(false)
                    .without_time(),
            )
        } else {
            // Colour only for a person at a terminal, never in files or pipes.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(ansi),
            )
        };
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        Logging {
            handle,
            env_override,
        }
    }

    fn set_level(&self, level: &str) {
        if self.env_override {
            info!("RUST_LOG is set; log.level from the configuration is not applied");
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if let Err(e) = self.handle.reload(f) {
                    warn!(error = %e, "cannot change the log level");
                }
            }
            Err(e) => warn!(error = %e, level, "bad log level"),
        }
    }
}

fn net_source(config: &Config) -> Result<Arc<dyn PolicySource>, String> {
    let dns = Dns::new(&config.dns)?;
    let fetcher = Fetcher::new(&config.https, dns.clone())?;
    Ok(Arc::new(NetSource::new(dns, fetcher)))
}

/// Descriptors the daemon needs besides client connections: listeners, the journal, the
/// control socket, DNS queries and policy fetches in flight.
const FD_RESERVE: u64 = 256;

/// Raises the open-files limit and says when `limits.max_connections` cannot be reached, so an
/// operator learns it from the log at start rather than from EMFILE under load.
fn check_open_files(config: &Config) {
    let max = config.limits.max_connections as u64;
    match service::raise_open_files_limit() {
        Ok((before, after)) => {
            if after != before {
                info!(
                    from = before,
                    to = after,
                    "raised the open files limit (RLIMIT_NOFILE)"
                );
            }
            if max + FD_RESERVE > after {
                warn!(
                    limit = after,
                    max_connections = max,
                    "limits.max_connections plus {FD_RESERVE} for the daemon's own sockets exceeds \
                     the open files limit: connections past it are refused (accept backs off on \
                     EMFILE); raise LimitNOFILE / ulimit -n or lower limits.max_connections"
                );
            }
        }
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
}

async fn serve(
    config: Arc<Config>,
    path: PathBuf,
    activated: Option<Activated>,
    logging: Logging,
) -> ExitCode {
    let notifier = Notifier::from_env();
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let source = match net_source(&config) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    check_open_files(&config);
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let mut opts = Options::new(source, Arc::new(SystemClock));
    opts.activated = activated;
    opts.reload = Some(reload_tx);
    let mut daemon = match Daemon::start(config.clone(), opts).await {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            notifier.status(&format!("failed: {e}"));
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    // READY=1 only now: the cache is loaded and every listener is bound (spec F1.2).
    notifier.ready(&daemon.status_line());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into()),
        "ready"
    );
    // From the main loop, so that a stuck loop stops the pings and systemd notices (F1.6).
    let mut watchdog = Notifier::watchdog_interval().map(tokio::time::interval);
    let mut status = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Signal::Reload => reload(&mut daemon, &notifier, &logging, &path, None).await,
                Signal::Stop => break,
            },
            Some(reply) = reload_rx.recv() => {
                reload(&mut daemon, &notifier, &logging, &path, Some(reply)).await;
            }
            _ = tick(&mut watchdog) => notifier.watchdog(),
            _ = status.tick() => notifier.status(&daemon.status_line()),
        }
    }
    notifier.stopping();
    info!("stopping: finishing lookups in progress");
    tokio::select! {
        _ = daemon.shutdown() => {}
        sig = signals.next() => {
            if sig == Signal::Stop {
                warn!("second stop signal: exiting at once");
            }
        }
    }
    ExitCode::SUCCESS
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// SIGHUP or `ctl reload`: RELOADING=1, re-read the file, apply it, READY=1 (spec F1.4). An
/// invalid configuration is logged and the running one stays.
async fn reload(
    daemon: &mut Daemon,
    notifier: &Notifier,
    logging: &Logging,
    path: &Path,
    reply: Option<ReloadRequest>,
) {
    notifier.reloading();
    info!(config = %path.display(), "reloading");
    let result = match Config::load(path) {
        Err(e) => Err(format!("configuration error: {e}")),
        Ok(new) => match net_source(&new) {
            Err(e) => Err(e),
            Ok(source) => {
                let level = new.log.level.clone();
                let r = daemon.reload(new, source).await;
                if r.is_ok() {
                    logging.set_level(&level);
                }
                r
            }
        },
    };
    if let Err(e) = &result {
        error!("reload failed; the running configuration stays: {e}");
    }
    notifier.ready(&daemon.status_line());
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

fn check_config(config: &Config) -> ExitCode {
    match &config.path {
        Some(p) => println!("{}: OK", p.display()),
        None => println!("no configuration file; using the defaults"),
    }
    for a in &config.socketmap.listen {
        println!("socketmap listener: {a}");
    }
    for a in &config.tcp_table.listen {
        println!("tcp_table listener: {a} (map {:?})", config.tcp_table_map);
    }
    if config.dns.nameservers.is_empty() {
        println!("dns: system resolv.conf, timeout {:?}", config.dns.timeout);
    } else {
        let ns: Vec<String> = config
            .dns
            .nameservers
            .iter()
            .map(|a| a.to_string())
            .collect();
        println!("dns: {}, timeout {:?}", ns.join(", "), config.dns.timeout);
    }
    println!(
        "https: timeout {:?}, {} extra CA file(s), port {}, proxy {}",
        config.https.timeout,
        config.https.ca_files.len(),
        config.https.port,
        config
            .https
            .proxy
            .as_ref()
            .map(|p| format!("{}:{}", p.host, p.port))
            .unwrap_or_else(|| "none".into())
    );
    for (name, p) in &config.maps {
        println!(
            "map {name:?}: strict_testing={} servername={} tlsrpt={} on_lookup_error={:?}",
            p.answer.strict_testing, p.answer.servername, p.answer.tlsrpt, p.on_lookup_error
        );
    }
    println!(
        "cache: {}, negative_ttl {:?}, max_entries {}",
        config.cache.dir.display(),
        config.cache.negative_ttl,
        config.cache.max_entries
    );
    println!(
        "refresh: every {:?}, {} at once",
        config.refresh.interval, config.refresh.concurrency
    );
    match &config.control.socket {
        Some(p) => println!("control socket: {}", p.display()),
        None => println!("control socket: disabled"),
    }
    if let Some(m) = config.metrics_listen {
        println!("metrics: inet:{m}");
    }
    if let Err(e) = net_source(config) {
        eprintln!("mta-sts-policyd: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    ExitCode::SUCCESS
}

/// `check`: Postfix's configuration against ours. 0 clean, 1 with findings.
fn check_postfix(config: &Config, postconf: &str, dir: Option<&Path>) -> ExitCode {
    let pf = match Postfix::read(postconf, dir) {
        Ok(pf) => pf,
        Err(e) => {
            eprintln!("mta-sts-policyd: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let findings = check::analyze(&pf, config);
    print!("{}", check::render(&findings));
    if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `ctl VERB`: one request to the running daemon's control socket.
async fn ctl(config: &Config, verb: CtlVerb, json: bool, socket: Option<PathBuf>) -> ExitCode {
    let Some(socket) = socket.or_else(|| config.control.socket.clone()) else {
        eprintln!("mta-sts-policyd: the control socket is disabled ([control] socket = \"\")");
        return ExitCode::from(EX_CONFIG);
    };
    let mut input = None;
    let (name, req) = match verb {
        CtlVerb::Status => ("status", json!({"verb": "status"})),
        CtlVerb::Stats => ("stats", json!({"verb": "stats"})),
        CtlVerb::List {
            mode,
            expiring_within,
        } => (
            "list",
            json!({"verb": "list", "mode": mode, "expiring_within": expiring_within}),
        ),
        CtlVerb::Show { domain } => ("show", json!({"verb": "show", "domain": domain})),
        CtlVerb::Refresh { domain, all } => match (domain, all) {
            (_, true) => ("refresh", json!({"verb": "refresh", "all": true})),
            (Some(d), false) => ("refresh", json!({"verb": "refresh", "domain": d})),
            (None, false) => {
                eprintln!("mta-sts-policyd: ctl refresh DOMAIN, or ctl refresh --all");
                return ExitCode::from(EX_USAGE);
            }
        },
        CtlVerb::Evict { domain } => ("evict", json!({"verb": "evict", "domain": domain})),
        CtlVerb::Purge { yes } => ("purge", json!({"verb": "purge", "yes": yes})),
        CtlVerb::Export => ("export", json!({"verb": "export"})),
        CtlVerb::Import { file } => {
            let text = match &file {
                Some(f) => std::fs::read_to_string(f),
                None => std::io::read_to_string(std::io::stdin()),
            };
            match text {
                Ok(t) => input = Some(t.lines().map(str::to_string).collect()),
                Err(e) => {
                    eprintln!("mta-sts-policyd: cannot read the import: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            }
            ("import", json!({"verb": "import"}))
        }
        CtlVerb::Reload => ("reload", json!({"verb": "reload"})),
    };
    let lines = match control::request(&socket, &req, input).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mta-sts-policyd: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    if json {
        for l in &lines {
            println!("{l}");
        }
    } else {
        print!("{}", control::render(name, &lines));
    }
    let ok = lines
        .last()
        .is_some_and(|l| l["ok"].as_bool() == Some(true));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `query`: one discovery, printed with the exact answer each configured map would give.
/// Exit status 0 when the default map would answer with a policy, 1 otherwise.
async fn query(config: Arc<Config>, key: String, json: bool) -> ExitCode {
    let mut report = serde_json::Map::new();
    report.insert("key".into(), key.clone().into());
    let domain = match key::policy_domain(key.as_bytes()) {
        Ok(d) => d,
        Err(skip) => {
            let reason = format!("key is not looked up: {skip}");
            report.insert("domain".into(), serde_json::Value::Null);
            report.insert("result".into(), "skipped".into());
            report.insert("reason".into(), reason.clone().into());
            report.insert("answers".into(), answers(&config, None));
            return print_report(json, &report, &[reason], 1);
        }
    };
    report.insert("domain".into(), domain.clone().into());
    let source = match net_source(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mta-sts-policyd: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let d = discovery::discover(&*source, &domain, discovery::Known::Nothing).await;
    let mut lines = vec![format!("domain: {domain}")];
    lines.push(format!(
        "TXT _mta-sts.{domain}: {}",
        d.txt.as_deref().unwrap_or("(none usable)")
    ));
    report.insert(
        "txt".into(),
        d.txt
            .clone()
            .map(Into::into)
            .unwrap_or(serde_json::Value::Null),
    );
    report.insert("elapsed_ms".into(), (d.elapsed.as_millis() as u64).into());
    let mut policy = None;
    let (result, reason): (&str, Option<String>) = match &d.outcome {
        Outcome::Fetched { id, policy: p } => {
            report.insert("id".into(), id.clone().into());
            report.insert("mode".into(), p.mode.as_str().into());
            report.insert("max_age".into(), p.max_age.into());
            report.insert(
                "mx".into(),
                p.mx.iter()
                    .map(|m| m.policy_form())
                    .collect::<Vec<_>>()
                    .into(),
            );
            report.insert("policy".into(), p.to_text().into());
            lines.push(format!("policy (id {id}):"));
            lines.extend(p.to_text().lines().map(|l| format!("  {l}")));
            if p.max_age_clamped {
                lines.push("note: max_age above 31557600 clamped to one year".into());
            }
            policy = Some(p.clone());
            ("policy", None)
        }
        Outcome::Unchanged { .. } => ("policy", None),
        Outcome::NoPolicy(n) => ("no-policy", Some(n.to_string())),
        Outcome::DnsTemp(e) => ("dns-error", Some(format!("TXT lookup failed: {e}"))),
        Outcome::FetchFailed { id, failure } => (
            "fetch-failed",
            Some(format!(
                "TXT id {id}; {failure} [{}]",
                failure.report_class()
            )),
        ),
    };
    report.insert("result".into(), result.into());
    if let Some(r) = &reason {
        report.insert("reason".into(), r.clone().into());
        lines.push(format!("rejected: {r}"));
    }
    let entry = policy.clone().map(|p| {
        let id = match &d.outcome {
            Outcome::Fetched { id, .. } => id.clone(),
            _ => String::new(),
        };
        Arc::new(PolicyEntry::new(id, p, SystemTime::now()))
    });
    let answers = answers(&config, entry.map(|e| (domain.clone(), e)));
    for (k, v) in answers.as_object().into_iter().flatten() {
        lines.push(format!("answer {k}: {}", v.as_str().unwrap_or("")));
    }
    report.insert("answers".into(), answers);
    let found = policy.as_ref().is_some_and(|p| {
        answer::render(
            &domain,
            p,
            &config.profile(config::DEFAULT_MAP).answer,
            false,
        )
        .is_some()
    });
    print_report(json, &report, &lines, if found { 0 } else { 1 })
}

/// The exact reply bytes per socketmap map and for tcp_table.
fn answers(config: &Config, policy: Option<(String, Arc<PolicyEntry>)>) -> serde_json::Value {
    let lookup = match policy {
        Some((domain, entry)) => Lookup::Resolved {
            domain,
            resolution: Resolution::Policy(entry),
        },
        None => Lookup::Resolved {
            domain: String::new(),
            resolution: Resolution::NoPolicy,
        },
    };
    serde_json::to_value(postfix::wire_answers(config, &lookup)).unwrap_or_default()
}

fn print_report(
    json: bool,
    report: &serde_json::Map<String, serde_json::Value>,
    lines: &[String],
    code: u8,
) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("mta-sts-policyd: {e}"),
        }
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    ExitCode::from(code)
}

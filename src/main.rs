//! `mta-sts-policyd`: wiring only. Arguments → config → listeners and tasks → wait for a signal.
//! No protocol and no policy logic lives here.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use mta_sts_policyd::answer::{self, Rendered};
use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::config::{self, Config};
use mta_sts_policyd::daemon::Daemon;
use mta_sts_policyd::discovery::{self, Outcome};
use mta_sts_policyd::dns::Dns;
use mta_sts_policyd::fetch::Fetcher;
use mta_sts_policyd::key;
use mta_sts_policyd::proto::{Reply, socketmap, tcp_table};
use mta_sts_policyd::source::{NetSource, PolicySource};

/// sysexits.h: the command was used incorrectly.
const EX_USAGE: u8 = 64;
/// sysexits.h: an internal software error (cannot start the runtime, cannot bind).
const EX_SOFTWARE: u8 = 70;
/// sysexits.h: a configuration error.
const EX_CONFIG: u8 = 78;

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
    /// Run the daemon: answer Postfix on the configured listeners.
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
    init_logging();
    let config = match Config::load(&cli.config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("mta-sts-policyd: configuration error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig => check_config(&config),
        Command::Serve => run(serve(config)),
        Command::Query { domain, json } => run(query(config, domain, json)),
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

/// Logs go to stderr. Under systemd (JOURNAL_STREAM set) the journal adds its own timestamps.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn net_source(config: &Config) -> Result<Arc<dyn PolicySource>, String> {
    let dns = Dns::new(&config.dns)?;
    let fetcher = Fetcher::new(&config.https, dns.clone())?;
    Ok(Arc::new(NetSource::new(dns, fetcher)))
}

async fn serve(config: Arc<Config>) -> ExitCode {
    let source = match net_source(&config) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let daemon = match Daemon::start(config.clone(), source, Arc::new(SystemClock)).await {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into()),
        "ready"
    );
    wait_for_stop_signal().await;
    info!("stopping");
    daemon.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            // Without signal handlers the default action (exit) still stops the process.
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
        "https: timeout {:?}, {} extra CA file(s), port {}",
        config.https.timeout,
        config.https.ca_files.len(),
        config.https.port
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
    if let Err(e) = net_source(config) {
        eprintln!("mta-sts-policyd: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    ExitCode::SUCCESS
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
            report.insert("answers".into(), answers_json(&config, None));
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
    let answers = answers_json(&config, policy.as_ref().map(|p| (domain.as_str(), p)));
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
fn answers_json(
    config: &Config,
    policy: Option<(&str, &mta_sts_policyd::policy::Policy)>,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let reply = |profile: &config::MapProfile, fits: fn(&str) -> bool| match policy {
        None => Reply::NotFound,
        Some((d, p)) => match answer::render_fitting(d, p, &profile.answer, fits) {
            Rendered::Found(v) => Reply::Found(v),
            Rendered::NotFound => Reply::NotFound,
            Rendered::TooLarge => Reply::Temp("policy answer too large".into()),
        },
    };
    for (name, profile) in &config.maps {
        let mut b = bytes::BytesMut::new();
        socketmap::encode_reply(&reply(profile, socketmap::found_fits), &mut b);
        out.insert(
            format!("socketmap:{name}"),
            String::from_utf8_lossy(&b).into_owned().into(),
        );
    }
    let mut b = bytes::BytesMut::new();
    tcp_table::encode_reply(
        &reply(config.tcp_table_profile(), tcp_table::found_fits),
        &mut b,
    );
    out.insert(
        "tcp_table".into(),
        String::from_utf8_lossy(&b).trim_end().to_string().into(),
    );
    serde_json::Value::Object(out)
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

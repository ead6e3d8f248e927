//! The operator's control socket: a Unix socket of its own (never a Postfix listener), one JSON
//! request per line, peer uid checked (root, the daemon's own user, or members of
//! `[control] group`). Read-only verbs (`status`, `list`, `show`, `stats`, `export`) and mutating
//! ones (`refresh`, `evict`, `purge`, `import`, `reload`) act through the resolver's and the
//! daemon's public handles. Also the client side of `mta-sts-policyd ctl`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, LinesCodec};
use tracing::{debug, info, warn};

use crate::cache::fleet::{Command, channel};
use crate::cache::{EntryView, PolicyEntry};
use crate::key;
use crate::policy::{Mode, parse_policy};
use crate::resolve::{DaneLookup, Lookup, Resolution};
use crate::serve::control_dane;
use crate::serve::listen::{self, Cap, OwnedUnix};
use crate::serve::postfix::{self, Shared};

/// One request or export/import line. A policy is at most 64 KiB; JSON escaping can double it.
const MAX_LINE: usize = 256 * 1024;
/// An operator request is answered or abandoned within this time, except `refresh` and
/// `import`, which take as long as their work (each discovery is bounded by its own timeouts).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How far ahead of the daemon's clock an imported fetch time may lie (clocks of two hosts
/// differ a little). Beyond it the line is refused: a policy "fetched" in the future would win
/// every freshest-fetch merge against real fetches, and stay valid past its max_age.
const IMPORT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A reload request from the control socket; the main loop answers it.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What the control socket needs from the running daemon.
pub struct Control {
    pub shared: Arc<Shared>,
    pub started: SystemTime,
    /// The listeners in force, as `protocol inet:...` strings (updated on reload).
    pub listeners: Arc<RwLock<Vec<String>>>,
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    pub store: crate::cache::journal::Store,
    /// Members of this group may use the socket besides root and the daemon's user.
    pub group: Option<(String, u32)>,
}

/// Control connections served at once: operators and scripts, never Postfix; a runaway script
/// must not be able to exhaust the daemon's file descriptors.
pub const MAX_CONTROL_CONNECTIONS: usize = 32;

/// Creates the control socket: its directory if missing, the socket with `mode`, and the group
/// owner when configured. A stale socket left by a crash is replaced; a live one is not stolen.
///
/// The group is changed only when the new socket does not already have it. The kernel gives a
/// new socket file the process's gid (or the directory's, when the directory is setgid), so under
/// the packaged unit (`Group=mta-sts-policyd`) `[control] group = "mta-sts-policyd"` needs no
/// chown, which the unit's `SystemCallFilter=~@privileged` answers with EPERM. Any other group
/// comes from a socket unit with `SocketGroup=` (passed as `control`), not from this function.
pub async fn bind(path: &Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
    }
    let l = listen::bind_unix(path, mode).await?;
    if let Some(gid) = group {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(path)?.gid() != gid {
            // lchown(2): never through a link planted at the socket path.
            std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot give the socket group id {gid} ({e}); under a system call \
                         filter without the chown family, run the daemon with that group as its \
                         primary group, or pass the socket from a socket unit with \
                         SocketGroup= and FileDescriptorName=control"
                    ),
                )
            })?;
        }
    }
    Ok(l)
}

/// Resolves `[control] group` to its gid; an unknown group is a start-up error.
pub fn group_id(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("control.group: no group named {name:?}")),
        Err(e) => Err(format!("control.group {name:?}: {e}")),
    }
}

/// Serves the control socket until `shutdown`, at most [`MAX_CONTROL_CONNECTIONS`] at once;
/// removes the socket file afterwards if `path`.
pub async fn serve(
    listener: UnixListener,
    ctl: Arc<Control>,
    path: Option<PathBuf>,
    shutdown: watch::Receiver<bool>,
) {
    let cap = Cap {
        name: "control",
        permits: Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS)),
        limit: MAX_CONTROL_CONNECTIONS,
    };
    listen::serve(OwnedUnix(listener, path), cap, shutdown, move |stream| {
        let ctl = ctl.clone();
        async move {
            if let Err(e) = connection(stream, &ctl).await {
                debug!(error = %e, "control connection ended");
            }
        }
    })
    .await;
}

/// Root, our own uid, and members of the configured group (primary or supplementary) may steer
/// the daemon.
fn allowed(ctl: &Control, uid: u32, gid: u32) -> Result<(), String> {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    if let Some((name, g)) = &ctl.group {
        if gid == *g {
            return Ok(());
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let member = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*g))
            .ok()
            .flatten()
            .is_some_and(|grp| user.is_some_and(|u| grp.mem.contains(&u.name)));
        if member {
            return Ok(());
        }
        return Err(format!(
            "permission denied: uid {uid} is not root, the daemon's user, or in group {name}"
        ));
    }
    Err(format!(
        "permission denied: uid {uid} is not root or the daemon's user (see [control] group)"
    ))
}

async fn connection(stream: UnixStream, ctl: &Control) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    if let Err(e) = allowed(ctl, cred.uid(), cred.gid()) {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "control: {e}");
        send(&mut write, &json!({"ok": false, "error": e})).await?;
        return Ok(());
    }
    let mut lines = FramedRead::new(
        BufReader::new(read),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, lines.next()).await {
            Ok(Some(Ok(l))) => l,
            Ok(Some(Err(e))) => {
                let err = json!({"ok": false, "error": format!("bad request line: {e}")});
                return send(&mut write, &err).await;
            }
            Ok(None) | Err(_) => return Ok(()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let err = json!({"ok": false, "error": format!("request is not JSON: {e}")});
                send(&mut write, &err).await?;
                continue;
            }
        };
        let verb = req["verb"].as_str().unwrap_or("").to_string();
        info!(verb, uid = cred.uid(), "control request");
        match verb.as_str() {
            "export" => export(ctl, &mut write).await?,
            "import" => {
                let reply = import(ctl, &mut lines).await;
                send(&mut write, &reply).await?;
            }
            _ => {
                let reply = dispatch(ctl, &verb, &req).await;
                send(&mut write, &reply).await?;
            }
        }
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), v: &Value) -> io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn time(t: SystemTime) -> Value {
    json!(humantime::format_rfc3339_seconds(t).to_string())
}

fn domain_arg(req: &Value) -> Result<String, Value> {
    let raw = req["domain"].as_str().unwrap_or("");
    key::policy_domain(raw.as_bytes())
        .map_err(|e| json!({"ok": false, "error": format!("{raw:?}: {e}")}))
}

async fn dispatch(ctl: &Control, verb: &str, req: &Value) -> Value {
    let resolver = &ctl.shared.resolver;
    match verb {
        "status" => status(ctl),
        "stats" => {
            let m = ctl
                .shared
                .metrics
                .snapshot_with_gauges(&ctl.shared.gauges());
            json!({"ok": true, "metrics": m})
        }
        "list" => list(ctl, req),
        "show" => match domain_arg(req) {
            Ok(d) => show(ctl, &d, dane_key(req)),
            Err(e) => e,
        },
        "refresh" if req["all"].as_bool() == Some(true) => refresh_all(ctl).await,
        "refresh" => match domain_arg(req) {
            Ok(d) => {
                let dane = dane_key(req);
                if ctl.shared.config().maps.values().any(|m| m.answer.dane)
                    && let Some(k) = &dane
                {
                    tokio::join!(resolver.refresh(&d), resolver.dane().refresh(k));
                } else {
                    resolver.refresh(&d).await;
                }
                let reply = show(ctl, &d, dane);
                fleet_wide(ctl, req, Command::Refresh(d), reply).await
            }
            Err(e) => e,
        },
        "evict" => match domain_arg(req) {
            Ok(d) => {
                let dane = dane_key(req).is_some_and(|k| resolver.dane().evict(&k));
                let evicted = resolver.evict(&d) | dane;
                if evicted {
                    warn!(domain = d, "evicted by the operator");
                }
                let reply = json!({"ok": true, "domain": d, "evicted": evicted});
                fleet_wide(ctl, req, Command::Evict(d), reply).await
            }
            Err(e) => e,
        },
        "purge" if req["yes"].as_bool() == Some(true) => {
            let reply = json!({"ok": true, "purged": resolver.purge().await});
            fleet_wide(ctl, req, Command::Purge, reply).await
        }
        "purge" => {
            json!({"ok": false, "error": "purge empties the whole cache: confirm with --yes"})
        }
        "reload" => match &ctl.reload {
            None => json!({"ok": false, "error": "reload is not available in this process"}),
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                if tx.send(reply).await.is_err() {
                    return json!({"ok": false, "error": "the daemon is stopping"});
                }
                match rx.await {
                    Ok(Ok(summary)) => json!({"ok": true, "result": summary}),
                    Ok(Err(e)) => json!({"ok": false, "error": e}),
                    Err(_) => json!({"ok": false, "error": "reload was abandoned"}),
                }
            }
        },
        "" => json!({"ok": false, "error": "missing \"verb\""}),
        other => json!({"ok": false, "error": format!("unknown verb {other:?}")}),
    }
}

/// `evict`, `refresh` and `purge` reach every daemon of a fleet unless the request says
/// `"local": true`; the reply says which under `"fleet"`.
async fn fleet_wide(ctl: &Control, req: &Value, cmd: Command, mut reply: Value) -> Value {
    let Some(fleet) = ctl.shared.resolver.fleet() else {
        return reply;
    };
    reply["fleet"] = json!(match req["local"].as_bool() {
        Some(true) => "this daemon only (--local)".to_string(),
        _ => match channel::everywhere(&fleet, &cmd).await {
            Ok(n) => format!("fleet-wide: sent to {n} other daemon(s)"),
            Err(e) => {
                warn!(verb = cmd.verb(), error = %e, "not sent to the fleet");
                format!("this daemon only: the fleet cache is unavailable ({e})")
            }
        },
    });
    reply
}

fn status(ctl: &Control) -> Value {
    let config = ctl.shared.config();
    let c = ctl.shared.gauges();
    let st = ctl.store.stats();
    let uptime = SystemTime::now()
        .duration_since(ctl.started)
        .unwrap_or_default()
        .as_secs();
    let listeners = ctl
        .listeners
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": uptime,
        "config": config.path.as_ref().map(|p| p.display().to_string()),
        "cache_dir": config.cache.dir.display().to_string(),
        "listeners": listeners,
        "entries": {
            "enforce": c.entries_enforce,
            "testing": c.entries_testing,
            "none": c.entries_none,
            "negative": c.entries_negative,
        },
        "dane_states": c.dane_entries.iter().sum::<u64>(),
        "expiring_within_day": c.expiring_within_day,
        "connections": c.connections,
        "journal": {"bytes": st.journal_bytes, "records": st.journal_records, "live": st.live,
                    "compactions": st.compactions, "write_errors": st.write_errors,
                    "read_only": st.read_only},
        "fleet": ctl.shared.resolver.fleet().map_or(json!("off"), |f| f.status()),
    })
}

fn list(ctl: &Control, req: &Value) -> Value {
    let now = ctl.shared.resolver.clock().now();
    let mode = req["mode"].as_str();
    if let Some(m) = mode
        && !mode_names().contains(&m)
    {
        return json!({"ok": false, "error": format!("mode {m:?}: expected {}", mode_names().join(", "))});
    }
    if let Some(m) = mode.filter(|m| control_dane::MODES.contains(m)) {
        let rows = control_dane::rows(ctl.shared.resolver.dane().cache(), m, now);
        return json!({"ok": true, "count": rows.len(), "entries": rows});
    }
    let within = match req["expiring_within"].as_str() {
        None => None,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => Some(now + d),
            Err(e) => return json!({"ok": false, "error": format!("expiring_within {s:?}: {e}")}),
        },
    };
    let mut rows: Vec<Value> = Vec::new();
    for (domain, view) in ctl.shared.resolver.cache().views() {
        let row = match &view {
            EntryView::Policy(p) if p.entry.is_valid(now) => {
                if mode.is_some_and(|m| m != p.entry.policy.mode.as_str())
                    || within.is_some_and(|t| p.entry.expires() > t)
                {
                    continue;
                }
                json!({"domain": domain, "kind": "policy", "mode": p.entry.policy.mode.as_str(),
                       "id": p.entry.id, "expires": time(p.entry.expires()),
                       "next_check": time(p.next_check), "failures": p.failures, "hits": p.hits})
            }
            EntryView::Negative {
                reason,
                until,
                failure,
                hits,
            } if *until > now => {
                if mode.is_some_and(|m| m != "negative") || within.is_some() {
                    continue;
                }
                json!({"domain": domain, "kind": if *failure {"backoff"} else {"negative"},
                       "reason": reason.as_ref(), "until": time(*until), "hits": hits})
            }
            _ => continue,
        };
        rows.push(row);
    }
    rows.sort_by(|a, b| a["domain"].as_str().cmp(&b["domain"].as_str()));
    json!({"ok": true, "count": rows.len(), "entries": rows})
}

/// The DANE destination a request's key names (`example.com`, `[relay.example.com]:587`).
fn dane_key(req: &Value) -> Option<String> {
    let raw = req["domain"].as_str().unwrap_or("");
    crate::dane::Destination::from_key(raw.as_bytes())
        .ok()
        .map(|d| d.key())
}

fn show(ctl: &Control, domain: &str, dane_key: Option<String>) -> Value {
    let now = ctl.shared.resolver.clock().now();
    let config = ctl.shared.config();
    let view = ctl.shared.resolver.cache().view(domain);
    let dane = dane_key
        .as_deref()
        .and_then(|k| ctl.shared.resolver.dane().cache().peek(k));
    let dane_lookup = dane
        .as_ref()
        .filter(|e| e.is_valid(now))
        .map(|e| DaneLookup::State(e.clone()));
    let resolution = match &view {
        Some(EntryView::Policy(p)) if p.entry.is_valid(now) => Resolution::Policy(p.entry.clone()),
        Some(EntryView::Negative {
            reason,
            until,
            failure: true,
            ..
        }) if *until > now => Resolution::Failed(reason.clone()),
        _ => Resolution::NoPolicy,
    };
    let answers = postfix::wire_answers(
        &config,
        &Lookup::Resolved {
            domain: domain.to_string(),
            resolution,
        },
        dane_lookup.as_ref(),
    );
    let mut out =
        json!({"ok": true, "domain": domain, "cached": view.is_some(), "answers": answers});
    if let (Some(k), Some(e)) = (&dane_key, &dane) {
        out["dane"] = control_dane::view(e, now);
        out["dane"]["destination"] = json!(k);
    }
    match view {
        Some(EntryView::Policy(p)) => {
            let e = &p.entry;
            out["kind"] = json!("policy");
            out["valid"] = json!(e.is_valid(now));
            out["id"] = json!(e.id);
            out["mode"] = json!(e.policy.mode.as_str());
            out["mx"] = json!(
                e.policy
                    .mx
                    .iter()
                    .map(|m| m.policy_form())
                    .collect::<Vec<_>>()
            );
            out["policy"] = json!(e.policy.to_text());
            out["fetched"] = time(e.fetched);
            out["expires"] = time(e.expires());
            out["next_check"] = time(p.next_check);
            out["failures"] = json!(p.failures);
            out["last_error"] = match &p.last_error {
                Some((at, reason)) => json!({"at": time(*at), "reason": reason.as_ref()}),
                None => Value::Null,
            };
            out["hits"] = json!(p.hits);
        }
        Some(EntryView::Negative {
            reason,
            until,
            failure,
            hits,
        }) => {
            out["kind"] = json!(if failure { "backoff" } else { "negative" });
            out["reason"] = json!(reason.as_ref());
            out["until"] = time(until);
            out["hits"] = json!(hits);
        }
        None => {}
    }
    out
}

async fn refresh_all(ctl: &Control) -> Value {
    let resolver = ctl.shared.resolver.clone();
    let domains: Vec<String> = resolver
        .cache()
        .views()
        .into_iter()
        .filter_map(|(d, v)| matches!(v, EntryView::Policy(_)).then_some(d))
        .collect();
    // The same bound as background refresh: an operator's --all is no thundering herd either.
    let permits = Arc::new(Semaphore::new(ctl.shared.config().refresh.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for d in domains {
        let (r, permits) = (resolver.clone(), permits.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await;
            r.refresh(&d).await;
            r.cache().policy_state(&d).is_none_or(|s| s.failures == 0)
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(true) => ok += 1,
            _ => failed += 1,
        }
    }
    json!({"ok": true, "refreshed": ok, "failed": failed})
}

/// JSON lines, one policy each, then a summary line: the format `import` reads.
async fn export(ctl: &Control, w: &mut (impl AsyncWriteExt + Unpin)) -> io::Result<()> {
    let now = ctl.shared.resolver.clock().now();
    let mut n = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    for (domain, view) in ctl.shared.resolver.cache().views() {
        let EntryView::Policy(p) = view else { continue };
        if !p.entry.is_valid(now) {
            continue;
        }
        let line = json!({"domain": domain, "id": p.entry.id, "fetched": unix(p.entry.fetched),
                          "policy": p.entry.policy.to_text()});
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\n');
        n += 1;
        if buf.len() > 48 * 1024 {
            w.write_all(&buf).await?;
            buf.clear();
        }
    }
    w.write_all(&buf).await?;
    send(w, &json!({"ok": true, "count": n})).await
}

/// Reads policy lines (as `export` writes them) until `{"end":true}` or EOF; merges each by
/// freshest fetch.
async fn import<R>(ctl: &Control, lines: &mut FramedRead<R, LinesCodec>) -> Value
where
    R: tokio::io::AsyncRead + Unpin,
{
    let (mut imported, mut kept, mut invalid) = (0u64, 0u64, Vec::<String>::new());
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                invalid.push(format!("line too long or broken: {e}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                invalid.push(format!("not JSON: {e}"));
                continue;
            }
        };
        if v["end"].as_bool() == Some(true) {
            break;
        }
        if v.get("ok").is_some() {
            // The summary line of an export piped straight into import.
            continue;
        }
        match parse_entry(&v, ctl.shared.resolver.clock().now()) {
            Ok((domain, entry)) => {
                if ctl.shared.resolver.import(&domain, entry).await {
                    imported += 1;
                } else {
                    kept += 1;
                }
            }
            Err(e) => invalid.push(e),
        }
    }
    if imported > 0 {
        info!(
            imported,
            kept,
            invalid = invalid.len(),
            "policies imported by the operator"
        );
    }
    invalid.truncate(20);
    json!({"ok": true, "imported": imported, "kept": kept, "invalid": invalid})
}

fn parse_entry(v: &Value, now: SystemTime) -> Result<(String, Arc<PolicyEntry>), String> {
    let raw = v["domain"].as_str().ok_or("missing \"domain\"")?;
    let domain = key::policy_domain(raw.as_bytes()).map_err(|e| format!("{raw:?}: {e}"))?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| format!("{domain}: missing \"id\""))?;
    crate::policy::parse_sts_record(&format!("v=STSv1; id={id}"))
        .map_err(|e| format!("{domain}: bad id: {e}"))?;
    let fetched = v["fetched"]
        .as_u64()
        .ok_or_else(|| format!("{domain}: missing \"fetched\""))?;
    let text = v["policy"]
        .as_str()
        .ok_or_else(|| format!("{domain}: missing \"policy\""))?;
    let policy = parse_policy(text.as_bytes()).map_err(|e| format!("{domain}: {e}"))?;
    let fetched = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(fetched))
        .ok_or_else(|| format!("{domain}: bad \"fetched\""))?;
    // Seconds, not a date: a far-future time has no RFC 3339 form to print.
    if let Ok(ahead) = fetched.duration_since(now)
        && ahead > IMPORT_CLOCK_SKEW
    {
        return Err(format!(
            "{domain}: \"fetched\" is {}s ahead of this host's clock (more than {}s): refused",
            ahead.as_secs(),
            IMPORT_CLOCK_SKEW.as_secs()
        ));
    }
    Ok((
        domain,
        Arc::new(PolicyEntry::new(id.to_string(), policy, fetched)),
    ))
}

// ---- client --------------------------------------------------------------------------------

/// Sends one request (and, for `import`, the lines of `input`) and returns every line the
/// daemon answered, parsed.
pub async fn request(
    socket: &Path,
    req: &Value,
    input: Option<Vec<String>>,
) -> Result<Vec<Value>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    // A refused peer gets its reason and the connection closed before our request is written:
    // a failed send is reported only if the daemon said nothing.
    let mut sent = send(&mut write, req).await;
    if sent.is_ok()
        && let Some(lines) = input
    {
        for l in lines {
            sent = write.write_all(format!("{l}\n").as_bytes()).await;
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            sent = send(&mut write, &json!({"end": true})).await;
        }
    }
    let mut lines = FramedRead::new(
        BufReader::new(read),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    let mut out = Vec::new();
    while let Some(line) = lines.next().await {
        let Ok(line) = line else {
            break;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            return Err(format!("bad reply: {line:?}"));
        };
        // Every reply ends with an object that has "ok"; export lines come before it.
        let last = v.get("ok").is_some();
        out.push(v);
        if last {
            return Ok(out);
        }
    }
    match sent {
        Err(e) if out.is_empty() => Err(format!("send: {e}")),
        _ if out.is_empty() => Err("the daemon closed the connection without a reply".into()),
        _ => Ok(out),
    }
}

/// A readable rendering of a reply for the terminal.
pub fn render(verb: &str, lines: &[Value]) -> String {
    let Some(last) = lines.last() else {
        return "no reply\n".to_string();
    };
    if last["ok"].as_bool() != Some(true) {
        return format!("error: {}\n", last["error"].as_str().unwrap_or("unknown"));
    }
    let mut s = String::new();
    match verb {
        "list" => {
            // Columns as wide as their widest cell, so any domain length lines up.
            let mut rows = vec![[
                "DOMAIN".to_string(),
                "KIND".to_string(),
                "ID/REASON".to_string(),
                "EXPIRES/UNTIL".to_string(),
                "HITS".to_string(),
            ]];
            for e in last["entries"].as_array().into_iter().flatten() {
                let kind = e["mode"].as_str().or(e["kind"].as_str()).unwrap_or("");
                let id = e["id"].as_str().or(e["reason"].as_str()).unwrap_or("");
                let until = e["expires"].as_str().or(e["until"].as_str()).unwrap_or("");
                rows.push([
                    e["domain"].as_str().unwrap_or("").to_string(),
                    kind.to_string(),
                    truncate(id, 24),
                    until.to_string(),
                    e["hits"].to_string(),
                ]);
            }
            let mut width = [0usize; 5];
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for [domain, kind, id, until, hits] in &rows {
                s.push_str(&format!(
                    "{domain:<w0$}  {kind:<w1$}  {id:<w2$}  {until:<w3$}  {hits:>w4$}\n",
                    w0 = width[0],
                    w1 = width[1],
                    w2 = width[2],
                    w3 = width[3],
                    w4 = width[4],
                ));
            }
            let n = last["count"].as_u64().unwrap_or(0);
            s.push_str(&format!(
                "{n} {}\n",
                if n == 1 { "entry" } else { "entries" }
            ));
        }
        "export" => {
            for l in lines {
                s.push_str(&l.to_string());
                s.push('\n');
            }
        }
        "status" => {
            let mut v = last.clone();
            // One line says whether policies are durable; the counters follow it.
            let read_only = v
                .get_mut("journal")
                .and_then(Value::as_object_mut)
                .and_then(|j| j.remove("read_only"));
            for (k, v) in v.as_object().into_iter().flatten() {
                if k == "journal" {
                    match read_only.as_ref().and_then(Value::as_str) {
                        Some(why) => s.push_str(&format!("journal: read-only ({why})\n")),
                        None => s.push_str("journal: writable\n"),
                    }
                }
                if k != "ok" {
                    flatten(k, v, &mut s);
                }
            }
        }
        _ => flatten("", last, &mut s),
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `key: value` lines, nested objects as dotted keys, multi-line strings indented.
fn flatten(prefix: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "ok" {
                    continue;
                }
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) if s.contains('\n') => {
            out.push_str(&format!("{prefix}:\n"));
            for l in s.lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        Value::String(s) => out.push_str(&format!("{prefix}: {s}\n")),
        // Lists of records (a DANE state's hosts): one dotted block per element.
        Value::Array(a) if a.iter().any(Value::is_object) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            out.push_str(&format!("{prefix}: {}\n", items.join(", ")));
        }
        Value::Null => out.push_str(&format!("{prefix}: -\n")),
        other => out.push_str(&format!("{prefix}: {other}\n")),
    }
}

/// Mode names accepted by `list --mode`: policy modes, negative entries, DANE levels.
pub fn mode_names() -> [&'static str; 6] {
    [
        Mode::Enforce.as_str(),
        Mode::Testing.as_str(),
        Mode::None.as_str(),
        "negative",
        control_dane::MODES[0],
        control_dane::MODES[1],
    ]
}

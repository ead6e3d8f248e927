//! The operator's control socket: a Unix socket of its own (never a Postfix listener), one JSON
//! request per line, peer uid checked (root, the daemon's own user, or members of
//! `[control] group`). Read-only verbs (`status`, `list`, `show`, `stats`, `export`) and mutating
//! ones (`refresh`, `evict`, `purge`, `import`, `reload`) act through the resolver's and the
//! daemon's public handles. The long verbs (`refresh --all`, `import`, `export`) send progress
//! lines when asked, and a client that goes away stops them between two whole steps. The client
//! side of `mta-sts-policyd ctl` is `ctl_client`, re-exported here.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
use crate::policy::parse_policy;
use crate::resolve::{DaneLookup, Lookup, Resolution};
use crate::serve::control_dane;
use crate::serve::ctl_client::{MAX_LINE, progress_line, send};
use crate::serve::listen::{self, Cap, OwnedUnix};
use crate::serve::postfix::{self, Shared};

pub use crate::serve::ctl_client::{Seen, mode_names, render, request, request_with};

/// The time between two progress lines of a long verb: a smooth bar for the client, a few lines
/// a second on the socket.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Import lines applied together by default: one journal commit (one fdatasync) and one cache
/// lock per batch instead of per policy. A request may ask for another size with `"batch"`.
pub const IMPORT_BATCH: usize = 1024;
/// The largest batch a request may ask for: what one batch holds in memory stays bounded.
const MAX_IMPORT_BATCH: usize = 65_536;
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
            "export" => export(ctl, &req, &mut write).await?,
            "import" => {
                let reply = import(ctl, &req, &mut lines, &mut write).await;
                send(&mut write, &reply).await?;
            }
            "refresh" if req["all"].as_bool() == Some(true) => {
                let reply = refresh_all(ctl, &req, &mut write).await;
                send(&mut write, &reply).await?;
            }
            _ => {
                let reply = dispatch(ctl, &verb, &req).await;
                send(&mut write, &reply).await?;
            }
        }
    }
}

/// Progress lines for one request: only when it asked (`"progress": true`), at most one per
/// [`PROGRESS_EVERY`], and none after a write failed (the client is gone).
struct Progress {
    on: bool,
    last: Option<Instant>,
    /// A progress line could not be written: the client went away (Ctrl-C).
    gone: bool,
}

impl Progress {
    fn new(req: &Value) -> Progress {
        Progress {
            on: req["progress"].as_bool() == Some(true),
            last: None,
            gone: false,
        }
    }

    /// Sends `{"progress": ...}` if one is due (`force`: whatever the time since the last).
    async fn tick(
        &mut self,
        w: &mut (impl AsyncWriteExt + Unpin),
        done: Option<u64>,
        total: Option<u64>,
        force: bool,
    ) {
        if !self.on || self.gone {
            return;
        }
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
        {
            return;
        }
        self.last = Some(now);
        if send(w, &progress_line(done, total)).await.is_err() {
            self.gone = true;
        }
    }
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

/// Refreshes every cached policy, [refresh] concurrency at a time. A client that goes away
/// (its progress line cannot be written) stops the verb: refreshes under way finish, each a
/// whole discovery applied as any other, and no further one starts.
async fn refresh_all(ctl: &Control, req: &Value, w: &mut (impl AsyncWriteExt + Unpin)) -> Value {
    let resolver = ctl.shared.resolver.clone();
    let domains: Vec<String> = resolver
        .cache()
        .views()
        .into_iter()
        .filter_map(|(d, v)| matches!(v, EntryView::Policy(_)).then_some(d))
        .collect();
    let total = domains.len() as u64;
    let mut progress = Progress::new(req);
    progress.tick(w, Some(0), Some(total), true).await;
    // The same bound as background refresh: an operator's --all is no thundering herd either.
    let permits = Arc::new(Semaphore::new(ctl.shared.config().refresh.concurrency));
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for d in domains {
        let (r, permits, stop) = (resolver.clone(), permits.clone(), stop.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await;
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            r.refresh(&d).await;
            Some(r.cache().policy_state(&d).is_none_or(|s| s.failures == 0))
        });
    }
    let (mut ok, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok(Some(true))) => ok += 1,
                Some(Ok(None)) => skipped += 1,
                Some(_) => failed += 1,
            },
            _ = tick.tick(), if progress.on && !progress.gone => {
                progress.tick(w, Some(ok + failed + skipped), Some(total), false).await;
                if progress.gone {
                    stop.store(true, Ordering::Relaxed);
                    info!(done = ok + failed, total, "refresh --all: the client went away; no further refresh starts");
                }
            }
        }
    }
    progress.tick(w, Some(total), Some(total), true).await;
    let mut reply = json!({"ok": true, "refreshed": ok, "failed": failed});
    if skipped > 0 {
        reply["not_started"] = json!(skipped);
    }
    reply
}

/// JSON lines, one policy each, then a summary line: the format `import` reads. With progress,
/// a first line gives the number of policies that follow (the client counts them as they come).
async fn export(
    ctl: &Control,
    req: &Value,
    w: &mut (impl AsyncWriteExt + Unpin),
) -> io::Result<()> {
    let now = ctl.shared.resolver.clock().now();
    let rows: Vec<_> = ctl
        .shared
        .resolver
        .cache()
        .views()
        .into_iter()
        .filter_map(|(domain, view)| match view {
            EntryView::Policy(p) if p.entry.is_valid(now) => Some((domain, p.entry)),
            _ => None,
        })
        .collect();
    let mut progress = Progress::new(req);
    progress.tick(w, None, Some(rows.len() as u64), true).await;
    let mut n = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    for (domain, entry) in rows {
        let line = json!({"domain": domain, "id": entry.id, "fetched": unix(entry.fetched),
                          "policy": entry.policy.to_text()});
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\n');
        n += 1;
        if buf.len() > 48 * 1024 {
            // A client gone (Ctrl-C) ends the export here: it changes nothing.
            w.write_all(&buf).await?;
            buf.clear();
        }
    }
    w.write_all(&buf).await?;
    send(w, &json!({"ok": true, "count": n})).await
}

/// Reads policy lines (as `export` writes them) until `{"end":true}`; merges each by freshest
/// fetch, in batches of `"batch"` lines ([`IMPORT_BATCH`] by default), each batch journalled in
/// one commit before any of it is in the cache.
///
/// A connection that ends without `{"end":true}` (the client was stopped, Ctrl-C) or whose
/// progress line cannot be written is an interrupted import: the batches applied so far stay,
/// each whole and journalled, and the lines read since the last one are not applied.
async fn import<R>(
    ctl: &Control,
    req: &Value,
    lines: &mut FramedRead<R, LinesCodec>,
    w: &mut (impl AsyncWriteExt + Unpin),
) -> Value
where
    R: tokio::io::AsyncRead + Unpin,
{
    let size = req["batch"].as_u64().map_or(IMPORT_BATCH, |n| {
        n.clamp(1, MAX_IMPORT_BATCH as u64) as usize
    });
    let mut progress = Progress::new(req);
    let (mut imported, mut kept, mut invalid) = (0u64, 0u64, Vec::<String>::new());
    let mut invalid_count = 0u64;
    // Lines read (blank ones aside) and lines whose batch is applied.
    let (mut read, mut applied) = (0u64, 0u64);
    let mut batch: Vec<(String, Arc<PolicyEntry>)> = Vec::with_capacity(size.min(4096));
    let mut ended = false;
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                // The daemon ends the import itself: what was read whole is applied.
                invalid.push(format!("line too long or broken: {e}"));
                invalid_count += 1;
                ended = true;
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                read += 1;
                invalid_count += 1;
                invalid.push(format!("not JSON: {e}"));
                continue;
            }
        };
        if v["end"].as_bool() == Some(true) {
            ended = true;
            break;
        }
        read += 1;
        if v.get("ok").is_some() || v.get("progress").is_some() {
            // The summary line of an export piped straight into import.
            continue;
        }
        match parse_entry(&v, ctl.shared.resolver.clock().now()) {
            Ok(entry) => batch.push(entry),
            Err(e) => {
                invalid_count += 1;
                invalid.push(e);
            }
        }
        if batch.len() >= size {
            let n = batch.len() as u64;
            let taken = ctl
                .shared
                .resolver
                .import_many(std::mem::take(&mut batch))
                .await as u64;
            (imported, kept, applied) = (imported + taken, kept + n - taken, read);
            progress.tick(w, Some(applied), None, false).await;
            if progress.gone {
                break;
            }
        }
    }
    if ended {
        let n = batch.len() as u64;
        let taken = ctl
            .shared
            .resolver
            .import_many(std::mem::take(&mut batch))
            .await as u64;
        (imported, kept, applied) = (imported + taken, kept + n - taken, read);
        progress.tick(w, Some(applied), None, true).await;
    }
    if imported > 0 || !ended {
        info!(
            imported,
            kept,
            invalid = invalid_count,
            not_applied = read - applied,
            interrupted = !ended,
            "policies imported by the operator"
        );
    }
    invalid.truncate(20);
    if !ended {
        return json!({"ok": false, "imported": imported, "kept": kept, "invalid": invalid,
                      "not_applied": read - applied,
                      "error": format!("the import ended without {{\"end\":true}}: the {} line(s) \
                                        read since the last applied batch were not applied",
                                       read - applied)});
    }
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

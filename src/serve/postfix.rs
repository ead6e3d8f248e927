//! Postfix listeners: accept (with a connection cap), read frames under an idle timeout and a
//! per-request deadline, resolve, render, write. Never calls DNS or HTTPS itself.
//!
//! Each connection owns its own decoder (a shared decoder let replies cross between clients in
//! another daemon, CVE-2019-16791) and answers its requests strictly in order. A broken frame
//! closes that one connection; every other client keeps being served.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::answer::{self, Rendered};
use crate::config::{Config, MapProfile, OnLookupError};
use crate::metrics::{self, Metrics};
use crate::proto::{Protocol, Reply, Request, Value};
use crate::resolve::{DaneLookup, Lookup, Resolution, Resolver};
use crate::serve::idle::{self, Slot};
use crate::serve::listen::{Cap, Listener};

/// How much a connection reads at a time. Requests are tens of bytes; the decoders bound the
/// buffer to one maximal frame plus this.
const READ_CHUNK: usize = 4096;

/// What every connection needs: the resolver, the config (profiles, limits) and the shared cap.
pub struct Shared {
    pub resolver: Arc<Resolver>,
    /// The configuration in force; replaced as a whole on reload.
    pub config: RwLock<Arc<Config>>,
    pub connections: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// Postfix connections open now, for the gauge and for the shutdown's wait. Counted apart
    /// from the semaphore, whose permit an evicted connection hands straight to its successor.
    pub open: AtomicU64,
    /// Bumped by every [`Shared::set_config`]: a connection keeps its own snapshot of the
    /// configuration and takes a new one only when this moves, so a lookup costs one atomic
    /// load instead of a lock and two reference-count updates.
    pub generation: AtomicU64,
    /// The open Postfix connections and how long each has been idle: at the cap, the
    /// longest-idle one is closed for a new client.
    pub idle: idle::Registry,
}

impl Shared {
    /// The configuration in force: each request and connection works on one snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a reloaded configuration in force for every following request.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The snapshot `current` if the configuration did not change since it was taken (at
    /// `generation`), else a new one.
    fn refresh_config(&self, current: &mut Arc<Config>, generation: &mut u64) {
        let now = self.generation.load(Ordering::Acquire);
        if now != *generation {
            *current = self.config();
            *generation = now;
        }
    }

    /// Postfix connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Gauges for a scrape or `ctl stats`: a pass over the cache under its read lock (about
    /// 10 ms per million entries), so it is done on request, never per lookup.
    pub fn gauges(&self) -> metrics::Gauges {
        let now = self.resolver.clock().now();
        let c = self.resolver.cache().counts(now);
        let mut dane_entries = [0; 6];
        for (i, (_, n)) in self
            .resolver
            .dane()
            .cache()
            .counts(now)
            .by_verdict
            .iter()
            .enumerate()
            .take(6)
        {
            dane_entries[i] = *n;
        }
        let cache = self.resolver.cache();
        metrics::Gauges {
            entries_enforce: c.enforce,
            entries_testing: c.testing,
            entries_none: c.none,
            entries_negative: c.negative,
            expiring_within_day: c.expiring_within_day,
            connections: self.open_connections(),
            journal_read_only: u64::from(
                self.resolver
                    .store()
                    .is_some_and(|s| s.stats().read_only.is_some()),
            ),
            dane_entries,
            cache_max_entries: u64::try_from(cache.capacity()).unwrap_or(u64::MAX),
        }
    }
}

/// The exact reply bytes Postfix would get for `lookup`, under `config`, without a final LF:
/// `PROTOCOL:MAP` for each map of a protocol whose requests name one (socketmap), `PROTOCOL` for
/// the others (tcp_table, answered with its section's map). What `query` and `ctl show` print.
/// Maps with `dane = true` answer from `dane` first ([`reply_with_dane`]); None there means the
/// DANE state is not known (not cached), which such a map's answer says instead of a reply.
pub fn wire_answers(
    config: &Config,
    lookup: &Lookup,
    dane: Option<&DaneLookup>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for protocol in Protocol::all() {
        let codec = protocol.codec();
        let mut encode = |label: String, profile: &MapProfile| {
            let fits = protocol.spec().found_fits;
            let reply = match (profile.answer.dane, dane) {
                (false, _) => reply_for(lookup, profile, fits),
                (true, Some(d)) => reply_with_dane(d, || reply_for(lookup, profile, fits)),
                (true, None) => {
                    out.insert(
                        label,
                        "(DANE state not cached: the next lookup learns it)".into(),
                    );
                    return;
                }
            };
            let mut b = BytesMut::new();
            codec.encode(&reply, &mut b);
            let line = String::from_utf8_lossy(&b);
            out.insert(label, line.strip_suffix('\n').unwrap_or(&line).to_string());
        };
        if protocol.names_map() {
            for (name, profile) in &config.maps {
                encode(format!("{}:{name}", protocol.name()), profile);
            }
        } else {
            encode(
                protocol.name().to_string(),
                config.profile_for(protocol, None).1,
            );
        }
    }
    out
}

/// Counts one open connection for as long as it lives.
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn new(n: &'a AtomicU64) -> OpenGuard<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        OpenGuard(n)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` turns true. At `limits.max_connections` (shared by every
/// Postfix listener) a new client is still accepted and the longest-idle connection is closed
/// for it (`idle.rs`): Postfix reconnects on its own, and leaked or hostile idle connections
/// cannot lock the real clients out. `shutdown` ends this listener (reload removed it, or the
/// daemon stops); `connections` ends the connections it accepted, which outlive a removed
/// listener until the daemon stops.
pub async fn run_listener(
    listener: Listener,
    protocol: Protocol,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    connections: watch::Receiver<bool>,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let cap = Cap {
        name: protocol.name(),
        permits: shared.connections.clone(),
        limit: shared.config().limits.max_connections,
    };
    let (registry, metrics) = (shared.idle.clone(), shared.metrics.clone());
    let on_evict = move || metrics.connection_evicted();
    idle::serve(
        listener,
        cap,
        registry,
        on_evict,
        shutdown,
        move |stream, slot| {
            let shared = shared.clone();
            let shutdown = connections.clone();
            async move {
                let _open = OpenGuard::new(&shared.open);
                serve_connection(stream, protocol, &shared, shutdown, &slot).await
            }
        },
    )
    .await;
    debug!(
        protocol = protocol.name(),
        listen = addr,
        "listener stopped"
    );
}

/// Why a connection ended early; logged once.
enum Close {
    Eof,
    Idle,
    Evicted,
    Shutdown,
    Slow,
    Frame(String),
    Io(io::Error),
}

/// One connection's life: decode every complete request in the buffer, answer each in order,
/// write the replies, read more. The idle timeout applies while no request has started; once the
/// first byte of a request arrives it must be complete within `request_timeout`.
async fn serve_connection<S>(
    mut stream: S,
    protocol: Protocol,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
    slot: &Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut generation = shared.generation.load(Ordering::Acquire);
    let mut config = shared.config();
    let mut codec = protocol.codec();
    let mut buf = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    // When the request now in the buffer began to arrive; None between requests.
    let mut started: Option<Instant> = None;
    // The last time a request was answered: the idle timeout counts from here.
    let mut active = Instant::now();
    // One timer for the whole connection. The idle deadline moves with every request, but the
    // timer is only moved when it must fire earlier (a request in progress) or when it fired
    // before the real deadline: resetting it per request would cost a timer-wheel update on the
    // lookup path.
    let timer = tokio::time::sleep_until(active + config.limits.idle_timeout);
    tokio::pin!(timer);
    let close = loop {
        // Answer everything already complete; pipelined requests are answered in order.
        let mut fatal = None;
        let mut answered = false;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(req)) => {
                    shared.refresh_config(&mut config, &mut generation);
                    let reply = answer(req, protocol, shared, &config).await;
                    codec.encode(&reply, &mut out);
                    answered = true;
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(reply) = e.reply {
                        codec.encode(&reply, &mut out);
                    }
                    fatal = Some(Close::Frame(e.message));
                    break;
                }
            }
        }
        let limits = &config.limits;
        if !out.is_empty() {
            match tokio::time::timeout(limits.request_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(e)) => break Close::Io(e),
                Err(_) => break Close::Slow,
            }
        }
        if let Some(f) = fatal {
            break f;
        }
        if answered {
            // Each request has its own deadline: one that arrived behind a slow lookup starts
            // its clock now, not when the bytes before it began to arrive.
            active = Instant::now();
            started = None;
        }
        if !buf.is_empty() && started.is_none() {
            started = Some(Instant::now());
        }
        let deadline = match started {
            Some(t) => t + limits.request_timeout,
            None => active + limits.idle_timeout,
        };
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            r = stream.read_buf(&mut buf) => Some(r),
            () = &mut timer => None,
            _ = shutdown.wait_for(|s| *s) => break Close::Shutdown,
            _ = slot.evicted(started.is_none()) => break Close::Evicted,
        };
        match read {
            Some(Ok(0)) => {
                if !buf.is_empty() {
                    break Close::Frame("connection closed in the middle of a request".into());
                }
                break Close::Eof;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Close::Io(e),
            None if Instant::now() < deadline => {
                // Fired for an earlier deadline that has since moved on: re-arm.
                timer.as_mut().reset(deadline);
            }
            None if started.is_some() => break Close::Slow,
            None => break Close::Idle,
        }
    };
    let _ = stream.shutdown().await;
    match close {
        Close::Eof | Close::Shutdown => {}
        Close::Idle => debug!(protocol = protocol.name(), "idle connection closed"),
        Close::Evicted => debug!(
            protocol = protocol.name(),
            "longest-idle connection closed to admit a new client (limits.max_connections)"
        ),
        Close::Slow => warn!(
            protocol = protocol.name(),
            "request or reply took longer than limits.request_timeout; connection closed"
        ),
        Close::Frame(m) => warn!(
            protocol = protocol.name(),
            error = m,
            "bad request frame; connection closed"
        ),
        Close::Io(e) => debug!(protocol = protocol.name(), error = %e, "connection error"),
    }
}

async fn answer(req: Request, protocol: Protocol, shared: &Shared, config: &Config) -> Reply {
    let (map, key) = match req {
        Request::Lookup { map, key } => (map, key),
        Request::Invalid(why) => {
            warn!(
                protocol = protocol.name(),
                reason = why,
                "malformed request"
            );
            return Reply::Perm(why.to_string());
        }
    };
    let start = Instant::now();
    let map_name = config.map_name(protocol, map.as_deref());
    // Counted under the profile that answered, the name `ctl show` prints: a map name without
    // a `[maps.NAME]` table (the README's own main.cf line) is answered by `default`.
    let (profile_name, profile) = config.answering_profile(map_name);
    let fits = protocol.spec().found_fits;
    let (reply, level) = if profile.answer.dane {
        // MTA-STS and DANE learnt at once: a cold lookup waits for the slower of the two,
        // not their sum.
        let (lookup, dane) = tokio::join!(
            shared.resolver.lookup(&key),
            shared.resolver.lookup_dane(&key)
        );
        let reply = reply_with_dane(&dane, || reply_for(&lookup, profile, fits));
        let level = dane_level(&dane);
        (reply, level)
    } else {
        let lookup = shared.resolver.lookup(&key).await;
        (reply_for(&lookup, profile, fits), None)
    };
    if let Reply::Found(_) = &reply {
        match level {
            Some(l) => shared.metrics.dane.level(l),
            None => shared.metrics.dane.secure(),
        }
    }
    let (mp, answer) = (
        protocol,
        match &reply {
            Reply::Found(_) => metrics::Answer::Found,
            Reply::NotFound => metrics::Answer::NotFound,
            Reply::Temp(_) => metrics::Answer::Temp,
            Reply::Perm(_) => metrics::Answer::Perm,
        },
    );
    shared
        .metrics
        .lookup(mp, profile_name, answer, start.elapsed());
    debug!(
        protocol = protocol.name(),
        map = map_name,
        key = %String::from_utf8_lossy(&key),
        answer = reply_kind(&reply),
        elapsed_us = start.elapsed().as_micros() as u64,
        "lookup"
    );
    reply
}

/// Maps a lookup to the Postfix reply. Everything that is not an applicable policy is NOTFOUND,
/// never the Postfix level `none` (which would switch off opportunistic TLS); Postfix then goes on
/// to the next table and finally to `smtp_tls_security_level` (postconf(5)). A failed
/// lookup is TEMP only where the map asks to fail closed.
pub fn reply_for(lookup: &Lookup, profile: &MapProfile, fits: fn(&Value) -> bool) -> Reply {
    match lookup {
        Lookup::Resolved {
            domain,
            resolution: Resolution::Policy(entry),
        } => match answer::render_fitting(
            domain,
            &entry.policy,
            &profile.answer,
            // The cached entry owns the mx list: the reply borrows it, nothing is rendered.
            || entry.clone(),
            fits,
        ) {
            Rendered::Found(v) => Reply::Found(v),
            Rendered::NotFound => Reply::NotFound,
            Rendered::TooLarge => {
                // Nothing correct fits the protocol's reply limit (socketmap_table(5),
                // tcp_table(5)): deferring is safer than a weaker answer.
                error!(
                    domain,
                    "policy answer exceeds the protocol's reply size; answering TEMP"
                );
                Reply::Temp("policy answer too large".into())
            }
        },
        Lookup::Resolved {
            resolution: Resolution::Failed(reason),
            ..
        } if profile.on_lookup_error == OnLookupError::Temp => {
            Reply::Temp(format!("MTA-STS lookup failed: {reason}"))
        }
        _ => Reply::NotFound,
    }
}

/// RFC 8461 §2: MTA-STS never overrides DANE. A destination whose DANE state decides the level
/// (`dane-only`, `dane`) gets it; RFC 7505 null MX and NXDOMAIN are not found; an unsigned zone
/// or one without TLSA records gets the MTA-STS answer `sts()`; and a DANE state that could not
/// be learnt is TEMP, never a weaker answer: Postfix itself defers a destination whose TLSA
/// lookup fails (RFC 7672 §2.1.1). No TLSRPT attributes go with `dane`/`dane-only`: Postfix's
/// TLSRPT_README says they are an error in a non-STS answer (Postfix reports DANE itself from
/// the TLSA records it looks up).
pub fn reply_with_dane(dane: &DaneLookup, sts: impl FnOnce() -> Reply) -> Reply {
    match dane {
        DaneLookup::Skipped(_) => sts(),
        DaneLookup::Failed(reason) => Reply::Temp(format!("DANE state unknown: {reason}")),
        DaneLookup::State(entry) => match answer::dane_decision(entry.state.verdict) {
            answer::DaneDecision::Level(level) => Reply::Found(Value::Owned(level.to_string())),
            answer::DaneDecision::NotFound => Reply::NotFound,
            answer::DaneDecision::Sts => sts(),
        },
    }
}

fn dane_level(dane: &DaneLookup) -> Option<&'static str> {
    match dane {
        DaneLookup::State(e) => e.state.verdict.level(),
        _ => None,
    }
}

fn reply_kind(r: &Reply) -> &'static str {
    match r {
        Reply::Found(_) => "found",
        Reply::NotFound => "notfound",
        Reply::Temp(_) => "temp",
        Reply::Perm(_) => "perm",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::cache::DaneEntry;
    use crate::dane::{DaneState, Verdict};

    fn state(verdict: Verdict) -> DaneLookup {
        DaneLookup::State(Arc::new(DaneEntry::new(
            DaneState {
                verdict,
                mx_authenticated: true,
                hosts: Vec::new(),
                ttl: Duration::from_secs(3600),
            },
            UNIX_EPOCH,
        )))
    }

    fn value(r: &Reply) -> String {
        match r {
            Reply::Found(v) => v.parts().concat(),
            Reply::NotFound => "NOTFOUND".into(),
            Reply::Temp(_) => "TEMP".into(),
            Reply::Perm(_) => "PERM".into(),
        }
    }

    #[test]
    fn rfc8461_2_dane_decides_before_mta_sts() {
        let sts = || Reply::Found(Value::Owned("secure match=mx.example.com".into()));
        let cases = [
            (state(Verdict::DaneOnly), "dane-only"),
            (state(Verdict::Dane), "dane"),
            (state(Verdict::Unsigned), "secure match=mx.example.com"),
            (state(Verdict::NoTlsa), "secure match=mx.example.com"),
            // RFC 7505 null MX and NXDOMAIN: no mail, whatever MTA-STS says.
            (state(Verdict::NullMx), "NOTFOUND"),
            (state(Verdict::NxDomain), "NOTFOUND"),
            // RFC 7672 §2.1.1: Postfix defers when it cannot learn the TLSA records; never a
            // weaker answer than that.
            (DaneLookup::Failed("TLSA lookup timed out".into()), "TEMP"),
            (
                DaneLookup::Skipped(crate::key::Skip::IpLiteral),
                "secure match=mx.example.com",
            ),
        ];
        for (dane, want) in cases {
            assert_eq!(value(&reply_with_dane(&dane, sts)), want, "{dane:?}");
        }
        // Without an MTA-STS policy, an unsigned destination is not found as before.
        assert_eq!(
            value(&reply_with_dane(&state(Verdict::Unsigned), || {
                Reply::NotFound
            })),
            "NOTFOUND"
        );
    }
}

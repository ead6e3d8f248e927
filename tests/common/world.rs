//! The offline "test world" for integration tests: an in-process DNS server
//! (hickory-server, `world/dns.rs`) serving a `test.` zone and an in-process HTTPS
//! server (tokio-rustls, `world/https.rs`) presenting certificates from a test CA
//! made in `certs`.
//!
//! Everything listens on 127.0.0.1 with ephemeral ports. Dropping the
//! [`World`] stops every task it started.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use hickory_resolver::{
    net::runtime::TokioRuntimeProvider,
    proto::rr::{
        LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
        rdata::{
            A, AAAA, CNAME, MX, TLSA, TXT,
            tlsa::{CertUsage, Matching, Selector},
        },
    },
};
use hickory_server::{Server, store::in_memory::InMemoryZoneHandler};
use tokio::task::JoinHandle;

mod dns;
mod https;

use dns::{DnsServer, DnsState, WorldDnsHandler, world_soa};
use https::{HttpShared, lock_http};

/// TTL of every record the world serves (and the SOA minimum, i.e. the
/// negative-caching TTL). Zero, so that no resolver cache hides a change.
pub const DNS_TTL: u32 = 0;

/// The only path the HTTPS server serves behaviours on; others get 404.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// What the HTTPS server does for one policy host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Http {
    /// Sent as given, plus `Content-Length` (unless `headers` already has one
    /// or has `Transfer-Encoding: chunked`; with chunked, `body` is sent in
    /// 8 KiB chunks) and `Connection: close` (unless `headers` has a
    /// `Connection` header).
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 200, chunked transfer encoding (8 KiB chunks), no `Content-Length`.
    Chunked {
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The TLS handshake completes and the request is read, but no answer is
    /// ever sent; the connection stays open until the world drops.
    Hang,
    /// TCP is accepted and the ClientHello read, but the TLS handshake never
    /// completes; the connection stays open until the world drops.
    HangTls,
    /// Written verbatim after reading the request head, then the connection
    /// is closed (with a TLS close_notify).
    Raw(Vec<u8>),
}

impl Http {
    /// 200 with the given body and, if given, `Content-Type`.
    pub fn ok(content_type: Option<&str>, body: &str) -> Http {
        let mut headers = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("Content-Type".to_string(), ct.to_string()));
        }
        Http::Response {
            status: 200,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    /// The given status with an empty body and, if given, a `Location` header.
    pub fn status(code: u16, location: Option<&str>) -> Http {
        let mut headers = Vec::new();
        if let Some(loc) = location {
            headers.push(("Location".to_string(), loc.to_string()));
        }
        Http::Response {
            status: code,
            headers,
            body: Vec::new(),
        }
    }
}

/// Which certificate (chain) a policy host presents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// Leaf for the host, signed by an intermediate CA signed by the root in
    /// `ca_file`; the server sends leaf + intermediate.
    #[default]
    Good,
    /// As `Good` but valid only from 2020-01-01 to 2021-01-01.
    Expired,
    /// Leaf (from the good intermediate) for `other.test` only.
    WrongHost,
    /// Self-signed leaf for the right name.
    SelfSigned,
    /// Right name, chain to a different root that is not in `ca_file`
    /// (server sends leaf + that root).
    UntrustedCa,
    /// `Good` leaf, but the server sends only the leaf.
    MissingIntermediate,
}

/// The running test world. Dropping it stops the DNS server, the HTTPS
/// server and every connection task, and removes the temporary directory.
pub struct World {
    dns_addr: SocketAddr,
    https_port: u16,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    dns: Arc<Mutex<DnsState>>,
    http: Arc<HttpShared>,
    ca_file: PathBuf,
    dns_server: Server<WorldDnsHandler>,
    https_task: JoinHandle<()>,
    // Last: removed after the servers are gone.
    dir: tempfile::TempDir,
}

impl World {
    /// Starts DNS (UDP and TCP on the same 127.0.0.1 port) and HTTPS (on
    /// 127.0.0.1). Must be called inside a tokio runtime.
    pub async fn start() -> World {
        let dir = tempfile::Builder::new()
            .prefix("mta-sts-world-")
            .tempdir()
            .expect("World: cannot create a temporary directory");

        let dns = DnsServer::start().await;
        let (https_port, http, https_task) = https::start().await;
        let ca_file = dir.path().join("test-root-ca.pem");
        std::fs::write(&ca_file, http.pki.root.pem())
            .unwrap_or_else(|e| panic!("World: cannot write {}: {e}", ca_file.display()));

        World {
            dns_addr: dns.addr,
            https_port,
            zone: dns.zone,
            dns: dns.state,
            http,
            ca_file,
            dns_server: dns.server,
            https_task,
            dir,
        }
    }

    /// Address of the DNS server (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// Port of the HTTPS server on 127.0.0.1.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// PEM file holding the test root CA (and nothing else).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// PEM of the test root CA, as written to [`World::ca_file`].
    pub fn ca_pem(&self) -> String {
        self.http.pki.root.pem()
    }

    /// A temporary directory for sockets, configs, caches. Removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // ------------------------------------------------------------------ DNS

    /// Replaces the TXT RRset at `name`: one inner slice per TXT record, each
    /// `&str` one character-string (at most 255 bytes). `&[]` removes it.
    /// Removes a CNAME at `name`, if any.
    pub async fn set_txt(&self, name: &str, records: &[&[&str]]) {
        let owner = dns_name(name);
        let records = records
            .iter()
            .map(|strings| {
                for s in strings.iter() {
                    assert!(
                        s.len() <= 255,
                        "World::set_txt({name}): a character-string is {} bytes, max 255",
                        s.len()
                    );
                }
                let strings = strings.iter().map(|s| s.to_string()).collect();
                RData::TXT(TXT::new(strings))
            })
            .collect();
        self.replace_rrset(&owner, RecordType::TXT, records).await;
    }

    /// `set_txt("_mta-sts.<domain>", &[&["v=STSv1; id=<id>"]])`.
    pub async fn set_sts(&self, domain: &str, id: &str) {
        let record = format!("v=STSv1; id={id}");
        self.set_txt(&format!("_mta-sts.{}", host_key(domain)), &[&[&record]])
            .await;
    }

    /// Makes `name` a CNAME to `target` (replacing every other record at
    /// `name`). `target` may be any name, also outside `test.`.
    pub async fn set_cname(&self, name: &str, target: &str) {
        let owner = dns_name(name);
        let target = Name::from_ascii(fqdn(target))
            .unwrap_or_else(|e| panic!("World::set_cname: bad target {target:?}: {e}"));
        let mut records = self.zone.records_mut().await;
        records.retain(|key, _| key.name != LowerName::from(&owner));
        records.insert(
            RrKey::new(LowerName::from(&owner), RecordType::CNAME),
            Arc::new(rrset(
                &owner,
                RecordType::CNAME,
                vec![RData::CNAME(CNAME(target))],
            )),
        );
    }

    /// Replaces the A RRset at `name` with one record. Removes a CNAME at
    /// `name`, if any.
    pub async fn set_a(&self, name: &str, ip: Ipv4Addr) {
        let owner = dns_name(name);
        self.replace_rrset(&owner, RecordType::A, vec![RData::A(A::from(ip))])
            .await;
    }

    /// Replaces the AAAA RRset at `name` with one record. Removes a CNAME at
    /// `name`, if any.
    pub async fn set_aaaa(&self, name: &str, ip: Ipv6Addr) {
        let owner = dns_name(name);
        self.replace_rrset(&owner, RecordType::AAAA, vec![RData::AAAA(AAAA::from(ip))])
            .await;
    }

    /// Replaces the MX RRset at `name`: `(preference, exchange)` each, the
    /// exchange `"."` for RFC 7505's null MX. `&[]` removes it. Removes a
    /// CNAME at `name`, if any.
    pub async fn set_mx(&self, name: &str, records: &[(u16, &str)]) {
        let owner = dns_name(name);
        let records = records
            .iter()
            .map(|&(preference, exchange)| {
                let exchange = if exchange.trim() == "." {
                    Name::root()
                } else {
                    Name::from_ascii(fqdn(exchange)).unwrap_or_else(|e| {
                        panic!("World::set_mx({name}): bad exchange {exchange:?}: {e}")
                    })
                };
                RData::MX(MX::new(preference, exchange))
            })
            .collect();
        self.replace_rrset(&owner, RecordType::MX, records).await;
    }

    /// Replaces the TLSA RRset at `name` (e.g. `_25._tcp.mx.example.test`):
    /// `(usage, selector, matching type, association data)` each (RFC 6698
    /// §2.1). `&[]` removes it. Removes a CNAME at `name`, if any.
    pub async fn set_tlsa(&self, name: &str, records: &[(u8, u8, u8, &[u8])]) {
        let owner = dns_name(name);
        let records = records
            .iter()
            .map(|&(usage, selector, matching, data)| {
                RData::TLSA(TLSA::new(
                    CertUsage::from(usage),
                    Selector::from(selector),
                    Matching::from(matching),
                    data.to_vec(),
                ))
            })
            .collect();
        self.replace_rrset(&owner, RecordType::TLSA, records).await;
    }

    /// The negative-caching TTL of NXDOMAIN and NODATA answers (RFC 2308
    /// §5): the TTL and the MINIMUM of the `test.` SOA that such answers
    /// carry in their authority section. [`DNS_TTL`] until changed.
    pub async fn set_negative_ttl(&self, secs: u32) {
        let origin = dns_name("test");
        let rdata = RData::SOA(world_soa(secs));
        let mut set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, secs);
        set.insert(Record::from_rdata(origin.clone(), secs, rdata), 0);
        self.zone.records_mut().await.insert(
            RrKey::new(LowerName::from(&origin), RecordType::SOA),
            Arc::new(set),
        );
    }

    /// Answers for `suffix` and every name under it carry `AD=1` when the
    /// query asks for it with `AD=1` or `DO=1`, as a validating resolver
    /// answers for a signed zone (RFC 4035 §3.2.3, RFC 6840 §5.7). NXDOMAIN
    /// and NODATA answers too (an authenticated denial). SERVFAIL never.
    pub fn sign(&self, suffix: &str) {
        lock(&self.dns).signed.insert(dns_key(suffix));
    }

    /// Undoes [`World::sign`] for exactly this `suffix` (a signed parent
    /// still covers it).
    pub fn unsign(&self, suffix: &str) {
        lock(&self.dns).signed.remove(&dns_key(suffix));
    }

    /// Removes every record at `name` (exactly that name).
    pub async fn remove_name(&self, name: &str) {
        let owner = LowerName::from(&dns_name(name));
        self.zone
            .records_mut()
            .await
            .retain(|key, _| key.name != owner);
    }

    /// Every query for exactly `name` (any type) gets SERVFAIL.
    pub fn servfail(&self, name: &str) {
        let key = dns_key(name);
        let mut st = lock(&self.dns);
        st.dropped.remove(&key);
        st.servfail.insert(key);
    }

    /// Queries for exactly `name` (any type) are never answered.
    pub fn drop_queries(&self, name: &str) {
        let key = dns_key(name);
        let mut st = lock(&self.dns);
        st.servfail.remove(&key);
        st.dropped.insert(key);
    }

    /// Undoes [`World::servfail`] and [`World::drop_queries`] for `name`.
    pub fn answer_normally(&self, name: &str) {
        let key = dns_key(name);
        let mut st = lock(&self.dns);
        st.servfail.remove(&key);
        st.dropped.remove(&key);
    }

    /// How many queries (any type, UDP or TCP, answered or not) arrived for
    /// exactly `name`.
    pub fn dns_queries(&self, name: &str) -> usize {
        lock(&self.dns)
            .queries
            .get(&dns_key(name))
            .copied()
            .unwrap_or(0)
    }

    async fn replace_rrset(&self, owner: &Name, rtype: RecordType, rdatas: Vec<RData>) {
        let lower = LowerName::from(owner);
        let mut records = self.zone.records_mut().await;
        records.remove(&RrKey::new(lower.clone(), RecordType::CNAME));
        let key = RrKey::new(lower, rtype);
        if rdatas.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, Arc::new(rrset(owner, rtype, rdatas)));
        }
    }

    // ---------------------------------------------------------------- HTTPS

    /// Sets A `mta-sts.<domain>` → 127.0.0.1 and serves `body` with 200 and
    /// `Content-Type: text/plain` for `GET /.well-known/mta-sts.txt` on that
    /// host (other paths get 404).
    pub async fn serve_policy(&self, domain: &str, body: &str) {
        self.set_http(domain, Http::ok(Some("text/plain"), body))
            .await;
    }

    /// Sets A `mta-sts.<domain>` → 127.0.0.1 and the HTTPS behaviour of
    /// that host, for requests to `/.well-known/mta-sts.txt` (any method;
    /// other paths get 404).
    pub async fn set_http(&self, domain: &str, resp: Http) {
        let host = policy_host(domain);
        self.set_a(&host, Ipv4Addr::LOCALHOST).await;
        self.set_http_host(&host, resp);
    }

    /// Sets the HTTPS behaviour of an arbitrary host name (no DNS change).
    pub fn set_http_host(&self, host: &str, resp: Http) {
        lock_http(&self.http).behaviour.insert(host_key(host), resp);
    }

    /// Which certificate `mta-sts.<domain>` presents (default `Good`).
    pub fn set_cert(&self, domain: &str, kind: CertKind) {
        self.set_cert_host(&policy_host(domain), kind);
    }

    /// Which certificate an arbitrary host (SNI name) presents.
    pub fn set_cert_host(&self, host: &str, kind: CertKind) {
        lock_http(&self.http).certs.insert(host_key(host), kind);
    }

    /// Completed HTTP requests for `mta-sts.<domain>` (counted when the
    /// request head was read; keyed by the Host header, falling back to SNI).
    pub fn fetches(&self, domain: &str) -> usize {
        self.fetches_host(&policy_host(domain))
    }

    /// Completed HTTP requests for an arbitrary host name.
    pub fn fetches_host(&self, host: &str) -> usize {
        lock_http(&self.http)
            .fetches
            .get(&host_key(host))
            .copied()
            .unwrap_or(0)
    }

    /// The head (request line and headers, up to and including the empty
    /// line) of the last request for `mta-sts.<domain>`, if any.
    pub fn last_request(&self, domain: &str) -> Option<String> {
        lock_http(&self.http)
            .last_request
            .get(&policy_host(domain))
            .cloned()
    }

    /// `set_sts(domain, id)` + `serve_policy(domain, body)`.
    pub async fn good_domain(&self, domain: &str, id: &str, body: &str) {
        self.set_sts(domain, id).await;
        self.serve_policy(domain, body).await;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.https_task.abort();
        self.dns_server.shutdown_token().cancel();
        // `dns_server` owns a JoinSet: dropping it aborts the server tasks.
    }
}

// -------------------------------------------------------------------- names

/// Lowercase, no trailing dot.
fn host_key(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn policy_host(domain: &str) -> String {
    format!("mta-sts.{}", host_key(domain))
}

/// Lowercase FQDN with trailing dot.
fn fqdn(name: &str) -> String {
    format!("{}.", host_key(name))
}

/// Lowercase FQDN, checked to be under `test.`.
fn dns_key(name: &str) -> String {
    let f = fqdn(name);
    assert!(
        f == "test." || f.ends_with(".test."),
        "World: DNS names must be under `test.` (the only zone served), got {name:?}"
    );
    f
}

fn dns_name(name: &str) -> Name {
    let key = dns_key(name);
    Name::from_ascii(&key).unwrap_or_else(|e| panic!("World: bad DNS name {name:?}: {e}"))
}

fn rrset(owner: &Name, rtype: RecordType, rdatas: Vec<RData>) -> RecordSet {
    let mut set = RecordSet::with_ttl(owner.clone(), rtype, DNS_TTL);
    for rdata in rdatas {
        set.insert(Record::from_rdata(owner.clone(), DNS_TTL, rdata), 0);
    }
    set
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! The offline "test world" for integration tests: an in-process DNS server
//! (hickory-server) serving a `test.` zone and an in-process HTTPS server
//! (tokio-rustls) presenting certificates from a test CA made with rcgen.
//!
//! Everything listens on 127.0.0.1 with ephemeral ports. Dropping the
//! [`World`] stops every task it started.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_resolver::{
    net::runtime::TokioRuntimeProvider,
    proto::{
        op::{Header, HeaderCounts, Metadata, ResponseCode},
        rr::{
            LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
            rdata::{A, CNAME, SOA, TXT},
        },
    },
};
use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::LazyConfigAcceptor;

/// TTL of every record the world serves (and the SOA minimum, i.e. the
/// negative-caching TTL). Zero, so that no resolver cache hides a change.
pub const DNS_TTL: u32 = 0;

/// Largest HTTP request head the HTTPS server accepts.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Chunk size for chunked transfer encoding.
const CHUNK_SIZE: usize = 8 * 1024;

/// The only path the HTTPS server serves behaviours on; others get 404.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Certificate name used when a client sends no SNI.
const NO_SNI_HOST: &str = "no-sni.test";

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

        // --- PKI ---
        let pki = Pki::new();
        let ca_file = dir.path().join("test-root-ca.pem");
        std::fs::write(&ca_file, pki.root.pem())
            .unwrap_or_else(|e| panic!("World: cannot write {}: {e}", ca_file.display()));

        // --- DNS ---
        let origin = Name::from_ascii("test.").expect("World: `test.` is a valid name");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_ascii("ns.test.").expect("World: valid mname"),
            Name::from_ascii("hostmaster.test.").expect("World: valid rname"),
            1,
            3600,
            600,
            86400,
            DNS_TTL,
        );
        assert!(
            zone.upsert_mut(
                Record::from_rdata(origin.clone(), DNS_TTL, RData::SOA(soa)),
                1
            ),
            "World: cannot insert the SOA of test."
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let dns = Arc::new(Mutex::new(DnsState::default()));
        let handler = WorldDnsHandler {
            catalog,
            state: dns.clone(),
        };

        // UDP and TCP must share one port, but the kernel picks the UDP port without regard to
        // TCP sockets that other tests (running in parallel) hold: retry on a clash.
        let mut attempt = 0;
        let (udp, tcp, dns_addr) = loop {
            attempt += 1;
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("World: cannot bind the DNS UDP socket on 127.0.0.1:0");
            let dns_addr = udp
                .local_addr()
                .expect("World: DNS UDP socket has no local address");
            match TcpListener::bind(dns_addr).await {
                Ok(tcp) => break (udp, tcp, dns_addr),
                Err(e) if attempt < 50 => {
                    let _ = e;
                    continue;
                }
                Err(e) => {
                    panic!("World: cannot bind DNS TCP on {dns_addr} (same port as UDP): {e}")
                }
            }
        };
        let mut dns_server = Server::new(handler);
        dns_server.register_socket(udp);
        dns_server.register_listener(tcp, Duration::from_secs(30), 65535);

        // --- HTTPS ---
        let https = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("World: cannot bind the HTTPS listener on 127.0.0.1:0");
        let https_port = https
            .local_addr()
            .expect("World: HTTPS listener has no local address")
            .port();
        let http = Arc::new(HttpShared {
            state: Mutex::new(HttpState::default()),
            pki,
        });
        let https_task = tokio::spawn(https_accept_loop(https, http.clone()));

        World {
            dns_addr,
            https_port,
            zone,
            dns,
            http,
            ca_file,
            dns_server,
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

fn lock_http(h: &HttpShared) -> MutexGuard<'_, HttpState> {
    lock(&h.state)
}

// ---------------------------------------------------------------------- DNS

#[derive(Default)]
struct DnsState {
    servfail: HashSet<String>,
    dropped: HashSet<String>,
    queries: HashMap<String, usize>,
}

enum DnsAction {
    Answer,
    ServFail,
    Drop,
}

/// Catalog wrapper: counts queries, answers SERVFAIL or nothing for chosen
/// names, else delegates to the catalog.
struct WorldDnsHandler {
    catalog: Catalog,
    state: Arc<Mutex<DnsState>>,
}

#[async_trait::async_trait]
impl RequestHandler for WorldDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let action = match request.queries.queries().first() {
            None => DnsAction::Answer,
            Some(q) => {
                let key = fqdn(&q.name().to_string());
                let mut st = lock(&self.state);
                *st.queries.entry(key.clone()).or_insert(0) += 1;
                if st.dropped.contains(&key) {
                    DnsAction::Drop
                } else if st.servfail.contains(&key) {
                    DnsAction::ServFail
                } else {
                    DnsAction::Answer
                }
            }
        };
        match action {
            DnsAction::Answer => {
                self.catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
            DnsAction::ServFail => {
                let response = MessageResponseBuilder::new(&request.queries, None)
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!("world DNS: sending SERVFAIL failed: {e}");
                        header_info(request, ResponseCode::ServFail)
                    }
                }
            }
            DnsAction::Drop => header_info(request, ResponseCode::NoError),
        }
    }
}

fn header_info(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

// ---------------------------------------------------------------------- PKI

type Issuer = CertifiedIssuer<'static, KeyPair>;

struct Pki {
    root: Issuer,
    intermediate: Issuer,
    other_root: Issuer,
    provider: Arc<rustls::crypto::CryptoProvider>,
    configs: Mutex<HashMap<(String, CertKind), Arc<ServerConfig>>>,
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("World: cannot generate an ECDSA P-256 key")
}

fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mta-sts-policyd test world");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = match path_len {
        None => IsCa::Ca(BasicConstraints::Unconstrained),
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = path_len.is_some();
    p
}

fn leaf_params(host: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![host.to_string()])
        .unwrap_or_else(|e| panic!("World: cannot make certificate params for {host:?}: {e}"));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p
}

impl Pki {
    fn new() -> Pki {
        let root = CertifiedIssuer::self_signed(ca_params("Test World Root CA", None), new_key())
            .expect("World: cannot make the root CA");
        let intermediate = CertifiedIssuer::signed_by(
            ca_params("Test World Intermediate CA", Some(0)),
            new_key(),
            &root,
        )
        .expect("World: cannot make the intermediate CA");
        let other_root =
            CertifiedIssuer::self_signed(ca_params("Untrusted Other Root CA", None), new_key())
                .expect("World: cannot make the untrusted root CA");
        Pki {
            root,
            intermediate,
            other_root,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The server config presenting `kind` for `host`, made once and cached.
    fn server_config(&self, host: &str, kind: CertKind) -> Arc<ServerConfig> {
        let key = (host.to_string(), kind);
        if let Some(cfg) = lock(&self.configs).get(&key) {
            return cfg.clone();
        }
        let cfg = Arc::new(self.make_config(host, kind));
        lock(&self.configs).entry(key).or_insert(cfg).clone()
    }

    fn make_config(&self, host: &str, kind: CertKind) -> ServerConfig {
        let leaf_key = new_key();
        let fail = |e: rcgen::Error| -> ! {
            panic!("World: cannot make the {kind:?} certificate for {host:?}: {e}")
        };
        let chain: Vec<CertificateDer<'static>> = match kind {
            CertKind::Good | CertKind::MissingIntermediate => {
                let leaf = leaf_params(host)
                    .signed_by(&leaf_key, &self.intermediate)
                    .unwrap_or_else(|e| fail(e));
                if kind == CertKind::Good {
                    vec![leaf.der().clone(), self.intermediate.der().clone()]
                } else {
                    vec![leaf.der().clone()]
                }
            }
            CertKind::Expired => {
                let mut p = leaf_params(host);
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
                let leaf = p
                    .signed_by(&leaf_key, &self.intermediate)
                    .unwrap_or_else(|e| fail(e));
                vec![leaf.der().clone(), self.intermediate.der().clone()]
            }
            CertKind::WrongHost => {
                let leaf = leaf_params("other.test")
                    .signed_by(&leaf_key, &self.intermediate)
                    .unwrap_or_else(|e| fail(e));
                vec![leaf.der().clone(), self.intermediate.der().clone()]
            }
            CertKind::SelfSigned => {
                let mut p = leaf_params(host);
                p.use_authority_key_identifier_extension = false;
                let leaf = p.self_signed(&leaf_key).unwrap_or_else(|e| fail(e));
                vec![leaf.der().clone()]
            }
            CertKind::UntrustedCa => {
                let leaf = leaf_params(host)
                    .signed_by(&leaf_key, &self.other_root)
                    .unwrap_or_else(|e| fail(e));
                vec![leaf.der().clone(), self.other_root.der().clone()]
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("World: ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap_or_else(|e| panic!("World: bad {kind:?} certificate for {host:?}: {e}"))
    }
}

// -------------------------------------------------------------------- HTTPS

#[derive(Default)]
struct HttpState {
    behaviour: HashMap<String, Http>,
    certs: HashMap<String, CertKind>,
    fetches: HashMap<String, usize>,
    last_request: HashMap<String, String>,
}

struct HttpShared {
    state: Mutex<HttpState>,
    pki: Pki,
}

async fn https_accept_loop(listener: TcpListener, shared: Arc<HttpShared>) {
    // Dropping this future (abort on World drop) drops the JoinSet, which
    // aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                conns.spawn(handle_https_conn(tcp, shared.clone()));
            }
            Err(e) => {
                tracing::warn!("world HTTPS: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_https_conn(tcp: TcpStream, shared: Arc<HttpShared>) {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match acceptor.await {
        Ok(start) => start,
        Err(e) => {
            tracing::debug!("world HTTPS: bad ClientHello: {e}");
            return;
        }
    };
    let sni = start.client_hello().server_name().map(host_key);
    let cert_host = sni.clone().unwrap_or_else(|| NO_SNI_HOST.to_string());
    let (hang_tls, kind) = {
        let st = lock_http(&shared);
        (
            matches!(st.behaviour.get(&cert_host), Some(Http::HangTls)),
            st.certs.get(&cert_host).copied().unwrap_or_default(),
        )
    };
    if hang_tls {
        let _keep_open = start;
        std::future::pending::<()>().await;
        return;
    }
    let config = shared.pki.server_config(&cert_host, kind);
    let mut tls = match start.into_stream(config).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!("world HTTPS: handshake for {cert_host} failed: {e}");
            return;
        }
    };
    let Some(head) = read_request_head(&mut tls).await else {
        return;
    };
    let host = header_value(&head, "host")
        .map(|h| host_key(strip_port(h)))
        .filter(|h| !h.is_empty())
        .or(sni);
    let policy_path = is_policy_path(&head);
    let behaviour = {
        let mut st = lock_http(&shared);
        match &host {
            Some(h) => {
                *st.fetches.entry(h.clone()).or_insert(0) += 1;
                st.last_request.insert(h.clone(), head.clone());
                st.behaviour.get(h).cloned().filter(|_| policy_path)
            }
            None => None,
        }
    };
    let behaviour = behaviour.unwrap_or_else(|| Http::Response {
        status: 404,
        headers: vec![("Content-Type".to_string(), "text/plain".to_string())],
        body: b"not found\n".to_vec(),
    });
    match behaviour {
        Http::Hang | Http::HangTls => {
            let _keep_open = tls;
            std::future::pending::<()>().await;
        }
        Http::Raw(bytes) => {
            let _ = tls.write_all(&bytes).await;
            let _ = tls.shutdown().await;
        }
        Http::Chunked { content_type, body } => {
            let mut headers = vec![("Transfer-Encoding".to_string(), "chunked".to_string())];
            if let Some(ct) = content_type {
                headers.push(("Content-Type".to_string(), ct));
            }
            let _ = write_response(&mut tls, 200, &headers, &body).await;
            let _ = tls.shutdown().await;
        }
        Http::Response {
            status,
            headers,
            body,
        } => {
            let _ = write_response(&mut tls, status, &headers, &body).await;
            let _ = tls.shutdown().await;
        }
    }
}

/// Whether the request target is `/.well-known/mta-sts.txt` (origin form,
/// or absolute form `https://host[:port]/.well-known/mta-sts.txt`).
fn is_policy_path(head: &str) -> bool {
    let target = head
        .split("\r\n")
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("");
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    path == POLICY_PATH
}

fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Reads up to and including CRLFCRLF (at most 16 KiB). None on EOF, error
/// or an oversized head.
async fn read_request_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            tracing::debug!("world HTTPS: request head over {MAX_REQUEST_HEAD} bytes");
            return None;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !chunked && !has("content-length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    if chunked {
        s.flush().await?;
        for chunk in body.chunks(CHUNK_SIZE) {
            let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
            piece.extend_from_slice(chunk);
            piece.extend_from_slice(b"\r\n");
            s.write_all(&piece).await?;
            s.flush().await?;
        }
        s.write_all(b"0\r\n\r\n").await?;
    } else {
        s.write_all(body).await?;
    }
    s.flush().await
}

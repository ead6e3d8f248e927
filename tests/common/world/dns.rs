//! The world's DNS server: hickory-server's in-memory catalog for the `test.` zone, behind a
//! handler that counts queries and, for names a test chooses, answers SERVFAIL or nothing, and
//! plays a validating resolver for the names under a "signed" suffix: their answers carry
//! `AD=1` when the query asked for it (RFC 6840 §5.7: `AD=1` or `DO=1` in the query).

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::{
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::{Header, HeaderCounts, Metadata, ResponseCode},
        rr::{LowerName, Name, RData, Record, rdata::SOA},
    },
};
use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{
        AxfrPolicy, Catalog, MessageResponse, MessageResponseBuilder, ZoneHandler, ZoneType,
    },
};
use tokio::net::{TcpListener, UdpSocket};

use super::{DNS_TTL, fqdn, lock};

/// The running DNS server and what [`World`](super::World) needs to steer it.
pub(super) struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    pub state: Arc<Mutex<DnsState>>,
    pub server: Server<WorldDnsHandler>,
}

impl DnsServer {
    /// Serves `test.` (only its SOA, so far) on UDP and TCP of one 127.0.0.1 port.
    pub async fn start() -> DnsServer {
        let origin = Name::from_ascii("test.").expect("World: `test.` is a valid name");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = world_soa(DNS_TTL);
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
        let state = Arc::new(Mutex::new(DnsState::default()));
        let handler = WorldDnsHandler {
            catalog,
            state: state.clone(),
        };

        // UDP and TCP must share one port, but the kernel picks the UDP port without regard to
        // TCP sockets that other tests (running in parallel) hold: retry on a clash.
        let mut attempt = 0;
        let (udp, tcp, addr) = loop {
            attempt += 1;
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("World: cannot bind the DNS UDP socket on 127.0.0.1:0");
            let addr = udp
                .local_addr()
                .expect("World: DNS UDP socket has no local address");
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if attempt < 50 => {
                    let _ = e;
                    continue;
                }
                Err(e) => {
                    panic!("World: cannot bind DNS TCP on {addr} (same port as UDP): {e}")
                }
            }
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(30), 65535);
        DnsServer {
            addr,
            zone,
            state,
            server,
        }
    }
}

/// The SOA of `test.`, its MINIMUM (the negative-caching TTL, RFC 2308 §4) `minimum`.
pub(super) fn world_soa(minimum: u32) -> SOA {
    SOA::new(
        Name::from_ascii("ns.test.").expect("World: valid mname"),
        Name::from_ascii("hostmaster.test.").expect("World: valid rname"),
        1,
        3600,
        600,
        86400,
        minimum,
    )
}

#[derive(Default)]
pub(super) struct DnsState {
    pub servfail: HashSet<String>,
    pub dropped: HashSet<String>,
    pub queries: HashMap<String, usize>,
    /// Suffixes (lowercase FQDNs) whose names are answered with `AD=1`.
    pub signed: HashSet<String>,
}

impl DnsState {
    /// `name` (a lowercase FQDN) is at or under a signed suffix.
    fn is_signed(&self, name: &str) -> bool {
        self.signed
            .iter()
            .any(|s| name == s || s == "." || name.ends_with(&format!(".{s}")))
    }
}

enum DnsAction {
    Answer,
    ServFail,
    Drop,
}

/// Catalog wrapper: counts queries, answers SERVFAIL or nothing for chosen
/// names, else delegates to the catalog.
pub(super) struct WorldDnsHandler {
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
        let asked_for_ad = request.metadata.authentic_data
            || request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let mut authentic = false;
        let action = match request.queries.queries().first() {
            None => DnsAction::Answer,
            Some(q) => {
                let key = fqdn(&q.name().to_string());
                let mut st = lock(&self.state);
                *st.queries.entry(key.clone()).or_insert(0) += 1;
                authentic = asked_for_ad && st.is_signed(&key);
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
            DnsAction::Answer if authentic => {
                let handle = AuthenticHandle {
                    inner: response_handle,
                };
                self.catalog.handle_request::<_, T>(request, handle).await
            }
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

/// Sets `AD=1` on the response before it is sent, as a validating resolver does for data it
/// found secure (RFC 4035 §3.2.3).
#[derive(Clone)]
struct AuthenticHandle<R> {
    inner: R,
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for AuthenticHandle<R> {
    async fn send_response<'a>(
        &mut self,
        mut response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        response.metadata_mut().authentic_data = true;
        self.inner.send_response(response).await
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

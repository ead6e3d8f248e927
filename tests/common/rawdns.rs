//! A tiny hand-written DNS responder (UDP and TCP on one 127.0.0.1 port) for hostile-server tests.
//!
//! Unlike the [`World`](super::World)'s hickory-server, nothing here is a real name server: every
//! query is parsed just far enough to know its id, name and type, and a test-supplied [`Script`]
//! decides what goes back, byte for byte: wrong ids, TC bits, broken TCP framing, CNAME loops,
//! oversized RRsets, silence. Replies are built with [`Reply`]; nothing is delegated anywhere.
//!
//! Dropping the [`RawDns`] stops every task it started.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinSet,
};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;

/// The EDNS payload size resolvers offer (hickory's receive buffer over UDP is this size too).
pub const UDP_PAYLOAD: usize = 1232;

pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// Which socket a query came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The parts of a query a script needs.
#[derive(Clone, Debug)]
pub struct Query {
    pub id: u16,
    /// Header flags as received (RD is echoed in replies).
    pub flags: u16,
    /// Lower-case, fully qualified (trailing dot).
    pub name: String,
    pub qtype: u16,
    /// The question section exactly as received (name in the client's case, type, class).
    question: Vec<u8>,
}

/// What to do in answer to one query. A script returns a list, executed in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// One DNS message: a UDP datagram, or on TCP prefixed with its 2-byte length.
    Send(Vec<u8>),
    /// Bytes written as they are (TCP: no length prefix added; UDP: one datagram).
    Raw(Vec<u8>),
    /// TCP: close the connection now (a plain close). UDP: nothing.
    Close,
    /// Never answer this query (and ignore the actions after this one); on TCP the connection
    /// stays open and later queries on it are still read and answered.
    Hang,
}

/// Decides the answer to each query.
pub type Script = Arc<dyn Fn(&Query, Transport) -> Vec<Action> + Send + Sync>;

#[derive(Default)]
struct Counts {
    by_name: HashMap<(String, Transport), usize>,
    total: usize,
}

/// The running responder.
pub struct RawDns {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    _tasks: JoinSet<()>,
}

impl RawDns {
    /// Binds UDP and TCP on one 127.0.0.1 port and starts answering with `script`.
    pub async fn start(script: Script) -> RawDns {
        // The kernel picks the UDP port without regard to TCP sockets held by tests running in
        // parallel: retry until the same TCP port is free too.
        let mut attempt = 0;
        let (udp, tcp, addr) = loop {
            attempt += 1;
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("RawDns: cannot bind UDP on 127.0.0.1:0");
            let addr = udp.local_addr().expect("RawDns: UDP local address");
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if attempt < 50 => {
                    let _ = e;
                    continue;
                }
                Err(e) => panic!("RawDns: cannot bind TCP on {addr} (same port as UDP): {e}"),
            }
        };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut tasks = JoinSet::new();
        tasks.spawn(udp_loop(udp, script.clone(), counts.clone()));
        tasks.spawn(tcp_loop(tcp, script, counts.clone()));
        RawDns {
            addr,
            counts,
            _tasks: tasks,
        }
    }

    /// UDP and TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries (any type) received for exactly `name` over `transport`.
    pub fn queries(&self, name: &str, transport: Transport) -> usize {
        let key = (fqdn(name), transport);
        lock(&self.counts).by_name.get(&key).copied().unwrap_or(0)
    }

    /// Queries (any type, either transport) for `suffix` and every name below it.
    pub fn queries_under(&self, suffix: &str) -> usize {
        let exact = fqdn(suffix);
        let below = format!(".{exact}");
        lock(&self.counts)
            .by_name
            .iter()
            .filter(|((name, _), _)| *name == exact || name.ends_with(&below))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every query received, any name, either transport.
    pub fn total_queries(&self) -> usize {
        lock(&self.counts).total
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lower-case with a trailing dot.
pub fn fqdn(name: &str) -> String {
    format!(
        "{}.",
        name.trim().trim_end_matches('.').to_ascii_lowercase()
    )
}

fn count(counts: &Mutex<Counts>, q: &Query, t: Transport) {
    let mut c = lock(counts);
    c.total += 1;
    *c.by_name.entry((q.name.clone(), t)).or_insert(0) += 1;
}

async fn udp_loop(sock: UdpSocket, script: Script, counts: Arc<Mutex<Counts>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(q) = parse_query(&buf[..n]) else {
            continue;
        };
        count(&counts, &q, Transport::Udp);
        for action in script(&q, Transport::Udp) {
            match action {
                Action::Send(bytes) | Action::Raw(bytes) => {
                    let _ = sock.send_to(&bytes, peer).await;
                }
                Action::Close | Action::Hang => {}
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, script: Script, counts: Arc<Mutex<Counts>>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((s, _)) => {
                conns.spawn(tcp_conn(s, script.clone(), counts.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn tcp_conn(mut s: TcpStream, script: Script, counts: Arc<Mutex<Counts>>) {
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if s.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(q) = parse_query(&msg) else {
            return;
        };
        count(&counts, &q, Transport::Tcp);
        for action in script(&q, Transport::Tcp) {
            match action {
                Action::Send(bytes) => {
                    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&bytes);
                    if s.write_all(&framed).await.is_err() {
                        return;
                    }
                }
                Action::Raw(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Action::Close => return,
                // This query is never answered; later ones on the connection still are.
                Action::Hang => break,
            }
        }
    }
}

/// Id, flags and the first question of a query; None for anything else.
fn parse_query(msg: &[u8]) -> Option<Query> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 || qdcount == 0 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // no compression in queries
        }
        labels.push(String::from_utf8_lossy(msg.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    msg.get(pos + 3)?;
    let question = msg[12..pos + 4].to_vec();
    Some(Query {
        id,
        flags,
        name: format!("{}.", labels.join(".")),
        qtype,
        question,
    })
}

/// Encodes `name` as uncompressed labels.
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        assert!(label.len() <= 63, "RawDns: label too long: {label:?}");
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A response to one query, built by hand. Starts as NOERROR, AA, RA, the query's id, RD and
/// question echoed, no records.
#[derive(Clone, Debug)]
pub struct Reply {
    id: u16,
    flags: u16,
    qname: String,
    question: Vec<u8>,
    answers: Vec<u8>,
    ancount: u16,
}

impl Reply {
    pub fn to(q: &Query) -> Reply {
        // QR, AA, RA, RD copied from the query.
        let flags = 0x8000 | 0x0400 | 0x0080 | (q.flags & 0x0100);
        Reply {
            id: q.id,
            flags,
            qname: q.name.clone(),
            question: q.question.clone(),
            answers: Vec::new(),
            ancount: 0,
        }
    }

    /// Replaces the transaction id.
    pub fn id(mut self, id: u16) -> Reply {
        self.id = id;
        self
    }

    /// Sets the TC (truncated) bit.
    pub fn truncated(mut self) -> Reply {
        self.flags |= 0x0200;
        self
    }

    pub fn rcode(mut self, rcode: u8) -> Reply {
        self.flags = (self.flags & !0x000f) | u16::from(rcode & 0x0f);
        self
    }

    /// The owner name: a pointer to the question when it is the question's name (so that large
    /// RRsets fit), else uncompressed.
    fn owner(&self, name: &str) -> Vec<u8> {
        if fqdn(name) == self.qname {
            vec![0xc0, 0x0c]
        } else {
            encode_name(name)
        }
    }

    fn record(mut self, owner: &str, rtype: u16, rdata: &[u8]) -> Reply {
        let mut rr = self.owner(owner);
        rr.extend_from_slice(&rtype.to_be_bytes());
        rr.extend_from_slice(&1u16.to_be_bytes()); // IN
        rr.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
        assert!(rdata.len() <= 65535, "RawDns: rdata over 65535 bytes");
        rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        rr.extend_from_slice(rdata);
        self.answers.extend_from_slice(&rr);
        self.ancount += 1;
        self
    }

    /// One TXT record at `owner` with the given character-strings (each at most 255 bytes).
    pub fn txt(self, owner: &str, strings: &[&[u8]]) -> Reply {
        let mut rdata = Vec::new();
        for s in strings {
            assert!(s.len() <= 255, "RawDns: character-string over 255 bytes");
            rdata.push(s.len() as u8);
            rdata.extend_from_slice(s);
        }
        self.record(owner, TYPE_TXT, &rdata)
    }

    pub fn cname(self, owner: &str, target: &str) -> Reply {
        let target = encode_name(target);
        self.record(owner, TYPE_CNAME, &target)
    }

    pub fn a(self, owner: &str, ip: Ipv4Addr) -> Reply {
        self.record(owner, TYPE_A, &ip.octets())
    }

    /// The wire message.
    pub fn build(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(12 + self.question.len() + self.answers.len());
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
        m.extend_from_slice(&self.ancount.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
        m.extend_from_slice(&0u16.to_be_bytes()); // ARCOUNT
        m.extend_from_slice(&self.question);
        m.extend_from_slice(&self.answers);
        m
    }

    /// As a real server answers: over UDP, a message larger than [`UDP_PAYLOAD`] becomes an
    /// empty answer with TC set (the client then asks over TCP); over TCP, the message.
    pub fn fit(&self, t: Transport) -> Vec<Action> {
        let m = self.build();
        if t == Transport::Udp && m.len() > UDP_PAYLOAD {
            let mut tc = self.clone();
            tc.answers.clear();
            tc.ancount = 0;
            tc.truncated().send()
        } else {
            vec![Action::Send(m)]
        }
    }

    /// `[Action::Send(self.build())]`.
    pub fn send(&self) -> Vec<Action> {
        vec![Action::Send(self.build())]
    }
}

/// The answers of a well-behaved domain `domain` with TXT id `id` and policy host 127.0.0.1:
/// `_mta-sts.<domain>` TXT, `mta-sts.<domain>` A (and an empty AAAA). None for other names.
pub fn sts_domain_reply(q: &Query, domain: &str, id: &str) -> Option<Reply> {
    let txt_name = fqdn(&format!("_mta-sts.{domain}"));
    let host = fqdn(&format!("mta-sts.{domain}"));
    if q.name == txt_name {
        let r = Reply::to(q);
        return Some(if q.qtype == TYPE_TXT {
            let record = format!("v=STSv1; id={id}");
            r.txt(&q.name, &[record.as_bytes()])
        } else {
            r
        });
    }
    if q.name == host {
        let r = Reply::to(q);
        return Some(if q.qtype == TYPE_A {
            r.a(&q.name, Ipv4Addr::LOCALHOST)
        } else {
            r
        });
    }
    None
}

//! The client half of each Postfix lookup protocol: loadgen's requests and its reading of replies.
//!
//! The daemon's library has the server half of every protocol in its registry
//! (`mta_sts_policyd::proto::Protocol`: request decoder, reply encoder); loadgen sends what
//! Postfix's smtp(8) sends and must read what the daemon answers, so it needs the other half.
//! That half is one [`Wire`] per protocol, found by the registry's name. Everything else
//! (`--protocol` values, the null responder, names in the reports) comes from the registry, so a
//! new protocol is offered here once it has a `Wire` entry in [`WIRES`]; the tests below fail for
//! a registered protocol without one, and check every `Wire` against the library's own codec.

use std::sync::OnceLock;

use bytes::{Buf, BytesMut};
use clap::ValueEnum;
use clap::builder::PossibleValue;

use mta_sts_policyd::proto::{Protocol, socketmap, tcp_table};

/// What a reply says, in protocol-neutral terms.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Kind {
    Found,
    Notfound,
    Temp,
    Perm,
    Other,
}

pub const KINDS: [Kind; 5] = [
    Kind::Found,
    Kind::Notfound,
    Kind::Temp,
    Kind::Perm,
    Kind::Other,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Found => "found",
            Kind::Notfound => "notfound",
            Kind::Temp => "temp",
            Kind::Perm => "perm",
            Kind::Other => "other",
        }
    }
}

/// The client side of one protocol.
pub struct Wire {
    /// Appends one lookup of `key`; `map` is the map name where the protocol's requests carry
    /// one (socketmap), ignored where they do not.
    pub encode_request: fn(map: &str, key: &[u8], out: &mut Vec<u8>),
    /// Takes one reply off the front of `buf`; `Ok(None)` while it is incomplete. An error means
    /// the byte stream cannot be trusted any more.
    pub parse_reply: fn(buf: &mut BytesMut) -> Result<Option<Kind>, &'static str>,
}

/// The client side of every protocol loadgen speaks, by registry name.
static WIRES: [(&str, Wire); 2] = [
    (
        "socketmap",
        Wire {
            encode_request: socketmap_request,
            parse_reply: socketmap_reply,
        },
    ),
    (
        "tcp_table",
        Wire {
            encode_request: tcp_table_request,
            parse_reply: tcp_table_reply,
        },
    ),
];

/// The client side of `p`, if loadgen has one.
pub fn wire(p: Protocol) -> Option<&'static Wire> {
    WIRES.iter().find(|(n, _)| *n == p.name()).map(|(_, w)| w)
}

/// The registered protocols loadgen can drive, in registry order.
pub fn offered() -> impl Iterator<Item = Protocol> {
    Protocol::all().filter(|p| wire(*p).is_some())
}

/// `socketmap_table(5)`: one netstring `<len>:<map> <key>,`.
fn socketmap_request(map: &str, key: &[u8], out: &mut Vec<u8>) {
    let len = map.len() + 1 + key.len();
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(map.as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b',');
}

/// `socketmap_table(5)`: a netstring `OK <data>`, `NOTFOUND `, `TEMP <reason>` or
/// `PERM <reason>`, at most [`socketmap::MAX_REPLY`] bytes long.
fn socketmap_reply(buf: &mut BytesMut) -> Result<Option<Kind>, &'static str> {
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b'0'..=b'9' if i < 6 => {
                len = len * 10 + usize::from(b - b'0');
                i += 1;
            }
            b':' if i > 0 => break,
            _ => return Err("bad netstring length"),
        }
    }
    if len > socketmap::MAX_REPLY {
        return Err("reply longer than socketmap's maximum");
    }
    let total = i + 1 + len + 1;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != b',' {
        return Err("netstring without its comma");
    }
    let p = &buf[i + 1..i + 1 + len];
    let kind = if p.starts_with(b"OK ") && p.len() > 3 {
        Kind::Found
    } else if p == b"NOTFOUND " || p == b"NOTFOUND" {
        Kind::Notfound
    } else if p.starts_with(b"TEMP") {
        Kind::Temp
    } else if p.starts_with(b"PERM") {
        Kind::Perm
    } else {
        Kind::Other
    };
    buf.advance(total);
    Ok(Some(kind))
}

/// `tcp_table(5)`: `get <%XX-encoded key>\n`.
fn tcp_table_request(_map: &str, key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(tcp_table::encode_key(key).as_bytes());
    out.push(b'\n');
}

/// `tcp_table(5)`: one line `200 <data>`, `500 <text>` or `400 <text>`, at most
/// [`tcp_table::MAX_LINE`] bytes with its newline.
fn tcp_table_reply(buf: &mut BytesMut) -> Result<Option<Kind>, &'static str> {
    let limit = buf.len().min(tcp_table::MAX_LINE);
    let Some(pos) = buf[..limit].iter().position(|&b| b == b'\n') else {
        if buf.len() >= tcp_table::MAX_LINE {
            return Err("reply line longer than tcp_table's maximum");
        }
        return Ok(None);
    };
    let line = &buf[..pos];
    if line.len() < 4 || line[3] != b' ' || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err("not a tcp_table status line");
    }
    let kind = match &line[..3] {
        b"200" if line.len() > 4 => Kind::Found,
        b"500" => Kind::Notfound,
        // tcp_table has no permanent error: PERM is sent as 400 too.
        b"400" => Kind::Temp,
        _ => Kind::Other,
    };
    buf.advance(pos + 1);
    Ok(Some(kind))
}

/// `--protocol`: a registered protocol that loadgen has a [`Wire`] for.
#[derive(Clone, Copy, Debug)]
pub struct ProtoArg(pub Protocol);

/// The registry's names with `-` for `_` (`tcp-table`), accepted as aliases like before.
fn dashed_names() -> &'static [(Protocol, String)] {
    static DASHED: OnceLock<Vec<(Protocol, String)>> = OnceLock::new();
    DASHED.get_or_init(|| offered().map(|p| (p, p.name().replace('_', "-"))).collect())
}

impl ValueEnum for ProtoArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: OnceLock<Vec<ProtoArg>> = OnceLock::new();
        ALL.get_or_init(|| offered().map(ProtoArg).collect())
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let v = PossibleValue::new(self.0.name());
        let dashed = dashed_names()
            .iter()
            .find(|(p, d)| *p == self.0 && d != self.0.name())
            .map(|(_, d)| d.as_str());
        Some(match dashed {
            Some(d) => v.alias(d),
            None => v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mta_sts_policyd::proto::{Reply, Request};

    #[test]
    fn every_registered_protocol_has_a_client_side() {
        for p in Protocol::all() {
            assert!(wire(p).is_some(), "loadgen has no Wire for {p}");
        }
        for (name, _) in &WIRES {
            assert!(
                Protocol::from_name(name).is_some(),
                "{name} is not registered"
            );
        }
    }

    /// What loadgen sends, the daemon's own decoder reads as the lookup that was meant.
    #[test]
    fn requests_decode_with_the_library_codec() {
        for p in offered() {
            let w = wire(p).unwrap();
            for key in [&b"d7.example"[..], b"a b%c/\xc3\xbc", b"[192.0.2.1]:25"] {
                let mut out = Vec::new();
                (w.encode_request)("postfix", key, &mut out);
                (w.encode_request)("postfix", key, &mut out);
                let mut buf = BytesMut::from(&out[..]);
                let mut codec = p.codec();
                for _ in 0..2 {
                    let got = codec.decode(&mut buf).unwrap();
                    let map = p.names_map().then(|| "postfix".to_string());
                    let want = Request::Lookup {
                        map,
                        key: Bytes::copy_from_slice(key),
                    };
                    assert_eq!(got, Some(want), "{p}");
                }
                assert!(buf.is_empty(), "{p}");
            }
        }
    }

    /// What the daemon's encoder sends, loadgen reads as the kind it was, one frame at a time and
    /// byte by byte.
    #[test]
    fn replies_from_the_library_codec_parse_to_their_kind() {
        let cases = [
            (Reply::Found("secure match=mx.example".into()), Kind::Found),
            (Reply::NotFound, Kind::Notfound),
            (Reply::Temp("later".into()), Kind::Temp),
            (Reply::Perm("bad request".into()), Kind::Perm),
        ];
        for p in offered() {
            let w = wire(p).unwrap();
            let codec = p.codec();
            for (reply, kind) in &cases {
                let mut frame = BytesMut::new();
                codec.encode(reply, &mut frame);
                // tcp_table(5) has no permanent error code: PERM goes out as 400, i.e. temp.
                let kind = if p.name() == "tcp_table" && *kind == Kind::Perm {
                    Kind::Temp
                } else {
                    *kind
                };
                let mut buf = BytesMut::new();
                for (i, b) in frame.iter().enumerate() {
                    buf.extend_from_slice(&[*b]);
                    let got = (w.parse_reply)(&mut buf).unwrap();
                    if i + 1 < frame.len() {
                        assert_eq!(got, None, "{p} {reply:?} after {} bytes", i + 1);
                    } else {
                        assert_eq!(got, Some(kind), "{p} {reply:?}");
                    }
                }
                assert!(buf.is_empty(), "{p}");
            }
        }
    }

    #[test]
    fn garbage_replies_are_errors() {
        let mut b = BytesMut::from(&b"x:OK a,"[..]);
        assert!(socketmap_reply(&mut b).is_err());
        let mut b = BytesMut::from(&b"3:OK a,"[..]);
        assert!(socketmap_reply(&mut b).is_err());
        let mut b = BytesMut::from(&b"OK\n"[..]);
        assert!(tcp_table_reply(&mut b).is_err());
        let mut b = BytesMut::from(&vec![b'2'; tcp_table::MAX_LINE][..]);
        assert!(tcp_table_reply(&mut b).is_err());
    }

    #[test]
    fn protocol_names_and_dashed_aliases_parse() {
        for p in offered() {
            let a = ProtoArg::from_str(p.name(), false).unwrap();
            assert_eq!(a.0, p);
        }
        assert_eq!(
            ProtoArg::from_str("tcp-table", false).unwrap().0.name(),
            "tcp_table"
        );
        assert!(ProtoArg::from_str("smtp", false).is_err());
    }
}

//! The Postfix socketmap protocol (`socketmap_table(5)`): netstring request decoding and
//! reply encoding.
//!
//! One [`SocketmapCodec`] per connection. Requests are netstrings `<len>:<map> <key>,`
//! (cr.yp.to/proto/netstrings.txt); replies are netstrings `OK <data>`, `NOTFOUND `, `TEMP <reason>`
//! or `PERM <reason>`. The encoder implements both `Encoder<Reply>` and `Encoder<&Reply>`.

use std::{fmt, io};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Reply, Value, truncate_str};

/// Largest request payload accepted, in bytes. Postfix >= 3.12 caps keys at 10,000 bytes
/// (`socketmap_max_query_size`) and the map name rides along in the same netstring, hence the
/// headroom.
pub const MAX_REQUEST: usize = 10_240;
/// Largest reply payload Postfix accepts: fixed in Postfix 3.7–3.9, default of
/// `socketmap_max_reply_size` later (`socketmap_table(5)`). Postfix 3.7 takes 100,000 bytes and
/// fails 100,001 with "input exceeds size limit".
pub const MAX_REPLY: usize = 100_000;
/// `MAX_REQUEST` has 5 digits, so no more than that are read before the `:`.
const MAX_LEN_DIGITS: usize = 5;

/// One decoded request netstring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<map> <key>`, split at the first space (`socketmap_table(5)`: `name <space> key`). The
    /// key is raw bytes: Postfix neither encodes nor case-folds it.
    Lookup { map: String, key: Bytes },
    /// A well-framed netstring without the `map key` shape. The framing is intact, so the
    /// connection can go on after a `PERM` reply.
    Invalid(&'static str),
}

/// A framing error. The byte stream can no longer be trusted, so the connection must be closed
/// (after a `PERM` reply when the request is too large). Nothing is consumed on error, so
/// decoding again returns the same error.
#[derive(Debug)]
pub enum FrameError {
    /// The declared length exceeds [`MAX_REQUEST`]. The value is the declared length, or the part
    /// of it read so far, which is already too large.
    TooLarge(usize),
    /// Not a netstring.
    Malformed(&'static str),
    /// Transport error (required by tokio-util's `Framed`).
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(
                f,
                "socketmap request length {n} exceeds the limit of {MAX_REQUEST} bytes"
            ),
            FrameError::Malformed(why) => write!(f, "malformed socketmap netstring: {why}"),
            FrameError::Io(e) => write!(f, "socketmap I/O error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Netstring decoder and reply encoder for one connection.
///
/// Not `Clone` on purpose: a parser shared between connections mixes their bytes
/// (CVE-2019-16791 in another socketmap daemon).
#[derive(Debug, Default)]
pub struct SocketmapCodec {
    /// `(header length including ':', payload length)` once the length prefix has been read and
    /// validated. The header stays in the buffer until the whole frame is there, so an empty
    /// buffer always means "between frames".
    header: Option<(usize, usize)>,
}

/// Reads the `<len>:` prefix. Looks at no more than `MAX_LEN_DIGITS + 1` bytes, so each call is
/// O(1) however the bytes arrive, and rejects a too-large length before its `:` is even seen.
fn parse_header(src: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len = 0usize;
    for (i, &b) in src.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                // Only reachable with leading zeros: any 6-digit value without them has already
                // failed the MAX_REQUEST check below.
                if i == MAX_LEN_DIGITS {
                    return Err(FrameError::Malformed("length has more than 5 digits"));
                }
                len = len * 10 + usize::from(b - b'0');
                if len > MAX_REQUEST {
                    return Err(FrameError::TooLarge(len));
                }
            }
            b':' if i == 0 => return Err(FrameError::Malformed("empty length")),
            b':' => return Ok(Some((i + 1, len))),
            _ => return Err(FrameError::Malformed("length is not a decimal number")),
        }
    }
    Ok(None)
}

/// Splits the payload at the first space (`socketmap_table(5)`: `name <space> key`); the key may
/// itself contain spaces.
fn parse_request(payload: Bytes) -> Request {
    let Some(space) = payload.iter().position(|&b| b == b' ') else {
        return Request::Invalid("no space between map name and key");
    };
    if space == 0 {
        return Request::Invalid("empty map name");
    }
    let Ok(map) = std::str::from_utf8(&payload[..space]) else {
        return Request::Invalid("map name is not UTF-8");
    };
    Request::Lookup {
        map: map.to_owned(),
        key: payload.slice(space + 1..),
    }
}

impl Decoder for SocketmapCodec {
    type Item = Request;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, FrameError> {
        let (header_len, payload_len) = match self.header {
            Some(h) => h,
            None => match parse_header(src)? {
                Some(h) => {
                    self.header = Some(h);
                    h
                }
                None => return Ok(None),
            },
        };
        let total = header_len + payload_len + 1;
        if src.len() < total {
            // Safe to reserve: `payload_len` was checked against MAX_REQUEST above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        if src[total - 1] != b',' {
            return Err(FrameError::Malformed("missing ',' after payload"));
        }
        self.header = None;
        let frame = src.split_to(total).freeze();
        Ok(Some(parse_request(frame.slice(header_len..total - 1))))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Request>, FrameError> {
        match self.decode(src)? {
            Some(request) => Ok(Some(request)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Malformed("truncated")),
        }
    }
}

/// Whether `OK <value>` fits in one reply ([`MAX_REPLY`]). Callers fall back to a shorter answer
/// (without TLSRPT attributes) when it does not.
pub fn found_fits(value: &str) -> bool {
    3 + value.len() <= MAX_REPLY
}

/// [`found_fits`] for a [`Value`] in pieces.
pub fn value_fits(value: &Value) -> bool {
    3 + value.len() <= MAX_REPLY
}

/// Appends one reply netstring (`socketmap_table(5)`, REPLY FORMAT).
///
/// * `Found` with an empty value is a bug (`3:OK ,` is an empty-result error that makes Postfix
///   defer mail): it fails a `debug_assert` and is sent as NOTFOUND in release builds.
/// * `Found` that does not fit (see [`found_fits`]) is logged and sent as `TEMP`.
/// * `TEMP`/`PERM` reasons are truncated (on a char boundary) to keep the payload within
///   [`MAX_REPLY`].
pub fn encode_reply(reply: &Reply, dst: &mut BytesMut) {
    match reply {
        Reply::Found(value) => {
            debug_assert!(!value.is_empty(), "socketmap: Found with an empty value");
            if value.is_empty() {
                put_netstring(dst, "NOTFOUND ", "");
            } else if !value_fits(value) {
                tracing::error!(
                    len = value.len(),
                    "socketmap reply exceeds {MAX_REPLY} bytes; sending TEMP"
                );
                put_netstring(dst, "TEMP ", "reply too large for socketmap");
            } else {
                put_netstring_parts(dst, "OK ", &value.parts());
            }
        }
        Reply::NotFound => put_netstring(dst, "NOTFOUND ", ""),
        Reply::Temp(reason) => put_reason(dst, "TEMP ", reason),
        Reply::Perm(reason) => put_reason(dst, "PERM ", reason),
    }
}

fn put_reason(dst: &mut BytesMut, status: &str, reason: &str) {
    put_netstring(dst, status, truncate_str(reason, MAX_REPLY - status.len()));
}

/// The length is computed from the bytes written: a wrong length makes Postfix hang for 100 s
/// (its time limit, `socketmap_table(5)`). `usize`'s `Display` never emits leading zeros
/// (netstrings.txt forbids them).
fn put_netstring(dst: &mut BytesMut, status: &str, text: &str) {
    put_netstring_parts(dst, status, &[text]);
}

/// One netstring whose payload is `status` followed by `parts`, written straight into `dst`
/// (no intermediate string: this is the lookup path).
fn put_netstring_parts(dst: &mut BytesMut, status: &str, parts: &[&str]) {
    use std::fmt::Write as _;
    let payload = status.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    // At most 6 digits (MAX_REPLY); the colon, comma and status are counted in `payload`.
    dst.reserve(payload + 8);
    // Writing to a BytesMut cannot fail.
    let _ = write!(dst, "{payload}:");
    dst.extend_from_slice(status.as_bytes());
    for p in parts {
        dst.extend_from_slice(p.as_bytes());
    }
    dst.extend_from_slice(b",");
}

impl Encoder<&Reply> for SocketmapCodec {
    type Error = FrameError;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_reply(reply, dst);
        Ok(())
    }
}

impl Encoder<Reply> for SocketmapCodec {
    type Error = FrameError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_reply(&reply, dst);
        Ok(())
    }
}

/// The registry entry (see [`super::Protocol`]).
pub static SPEC: super::Spec = super::Spec {
    name: "socketmap",
    default_listen: &["inet:127.0.0.1:8461"],
    names_map: true,
    found_fits: value_fits,
    new_codec: || Box::<SocketmapCodec>::default(),
};

impl super::Codec for SocketmapCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<super::Request>, super::FatalFrame> {
        match Decoder::decode(self, buf) {
            Ok(Some(Request::Lookup { map, key })) => Ok(Some(super::Request::Lookup {
                map: Some(map),
                key,
            })),
            Ok(Some(Request::Invalid(why))) => Ok(Some(super::Request::Invalid(why))),
            Ok(None) => Ok(None),
            Err(FrameError::TooLarge(n)) => Err(super::FatalFrame {
                message: format!("request netstring of {n} bytes or more exceeds {MAX_REQUEST}"),
                // Say why before closing, so that the Postfix log shows it.
                reply: Some(Reply::Perm("request too large".into())),
            }),
            Err(e) => Err(super::FatalFrame {
                message: e.to_string(),
                reply: None,
            }),
        }
    }

    fn encode(&self, reply: &Reply, out: &mut BytesMut) {
        encode_reply(reply, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Largest complete request frame: digits, ':', payload, ','.
    const MAX_FRAME: usize = MAX_LEN_DIGITS + 1 + MAX_REQUEST + 1;

    fn encoded(reply: &Reply) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_reply(reply, &mut dst);
        dst.to_vec()
    }

    fn decode_all(input: &[u8]) -> Result<Vec<Request>, FrameError> {
        let mut codec = SocketmapCodec::default();
        let mut src = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = codec.decode_eof(&mut src)? {
            out.push(r);
        }
        Ok(out)
    }

    fn lookup(map: &str, key: &[u8]) -> Request {
        Request::Lookup {
            map: map.to_owned(),
            key: Bytes::copy_from_slice(key),
        }
    }

    /// Splits a reply netstring and checks that the declared length matches.
    fn reply_payload(wire: &[u8]) -> &[u8] {
        let colon = wire.iter().position(|&b| b == b':').expect("colon");
        let len: usize = std::str::from_utf8(&wire[..colon])
            .expect("ascii")
            .parse()
            .expect("digits");
        assert_ne!(wire[0], b'0', "leading zero in {wire:?}");
        assert_eq!(wire.len(), colon + 1 + len + 1, "declared length is wrong");
        assert_eq!(wire[wire.len() - 1], b',');
        &wire[colon + 1..wire.len() - 1]
    }

    #[test]
    fn socketmap_notfound_has_trailing_space() {
        assert_eq!(encoded(&Reply::NotFound), b"9:NOTFOUND ,");
    }

    #[test]
    fn socketmap_found_exact_bytes() {
        // Postfix 3.7 `postmap -q` returns this as `secure match=mx1.example.com`.
        assert_eq!(
            encoded(&Reply::Found("secure match=mx1.example.com".into())),
            b"31:OK secure match=mx1.example.com,"
        );
    }

    #[test]
    fn socketmap_temp_and_perm_exact_bytes() {
        assert_eq!(
            encoded(&Reply::Temp("dns timed out x".into())),
            b"20:TEMP dns timed out x,"
        );
        assert_eq!(
            encoded(&Reply::Perm("bad request".into())),
            b"16:PERM bad request,"
        );
        assert_eq!(encoded(&Reply::Perm(String::new())), b"5:PERM ,");
        assert_eq!(
            encoded(&Reply::Perm("unknown map name foo".into())),
            b"25:PERM unknown map name foo,"
        );
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "empty value"))]
    fn socketmap_empty_found_sent_as_notfound() {
        assert_eq!(
            encoded(&Reply::Found(String::new().into())),
            b"9:NOTFOUND ,"
        );
    }

    #[test]
    fn socketmap_encoder_trait_by_value_and_by_ref() {
        let mut codec = SocketmapCodec::default();
        let mut dst = BytesMut::new();
        Encoder::<&Reply>::encode(&mut codec, &Reply::NotFound, &mut dst).expect("encode");
        Encoder::<Reply>::encode(&mut codec, Reply::Found("secure".into()), &mut dst)
            .expect("encode");
        assert_eq!(&dst[..], b"9:NOTFOUND ,9:OK secure,");
    }

    #[test]
    fn socketmap_found_fits_boundary() {
        let exact = "x".repeat(MAX_REPLY - 3);
        let over = "x".repeat(MAX_REPLY - 2);
        assert!(found_fits(&exact));
        assert!(!found_fits(&over));

        let wire = encoded(&Reply::Found(exact.clone().into()));
        assert!(wire.starts_with(b"100000:OK xxx"));
        assert_eq!(reply_payload(&wire).len(), MAX_REPLY);

        // 100 001 bytes would be "input exceeds size limit" in Postfix.
        assert_eq!(
            encoded(&Reply::Found(over.into())),
            b"34:TEMP reply too large for socketmap,"
        );
    }

    #[test]
    fn socketmap_reasons_truncated_to_max_reply() {
        let wire = encoded(&Reply::Temp("r".repeat(2 * MAX_REPLY)));
        let payload = reply_payload(&wire);
        assert_eq!(payload.len(), MAX_REPLY);
        assert!(payload.starts_with(b"TEMP rrr"));

        // A two-byte char straddling the limit is dropped whole.
        let reason = format!("{}ü", "r".repeat(MAX_REPLY - 6));
        let wire = encoded(&Reply::Perm(reason));
        let payload = reply_payload(&wire);
        assert_eq!(payload.len(), MAX_REPLY - 1);
        assert!(std::str::from_utf8(payload).is_ok());
    }

    #[test]
    fn socketmap_postmap_request() {
        assert_eq!(
            decode_all(b"19:postfix example.com,").expect("decode"),
            vec![lookup("postfix", b"example.com")]
        );
    }

    #[test]
    fn socketmap_keys_are_raw() {
        assert_eq!(
            decode_all(b"19:postfix EXAMPLE.Com,").expect("decode"),
            vec![lookup("postfix", b"EXAMPLE.Com")]
        );
        assert_eq!(
            decode_all(b"30:mta-sts [mail.example.com]:587,").expect("decode"),
            vec![lookup("mta-sts", b"[mail.example.com]:587")]
        );
        // Split at the first space only; `%` is not an escape.
        assert_eq!(
            decode_all(b"13:postfix a b%c,").expect("decode"),
            vec![lookup("postfix", b"a b%c")]
        );
        assert_eq!(
            decode_all(b"23:postfix b\xc3\xbccher.example,").expect("decode"),
            vec![lookup("postfix", b"b\xc3\xbccher.example")]
        );
        assert_eq!(
            decode_all(b"20:postfix .example.com,").expect("decode"),
            vec![lookup("postfix", b".example.com")]
        );
        assert_eq!(
            decode_all(b"8:postfix ,").expect("decode"),
            vec![lookup("postfix", b"")]
        );
    }

    #[test]
    fn socketmap_invalid_shapes_keep_framing() {
        assert_eq!(
            decode_all(b"7:postfix,0:,1: ,6:\xffmap k,9:NOTFOUND ,").expect("decode"),
            vec![
                Request::Invalid("no space between map name and key"),
                Request::Invalid("no space between map name and key"),
                Request::Invalid("empty map name"),
                Request::Invalid("map name is not UTF-8"),
                lookup("NOTFOUND", b""),
            ]
        );
    }

    #[test]
    fn socketmap_byte_at_a_time() {
        let input = b"19:postfix example.com,13:postfix a b%c,";
        let mut codec = SocketmapCodec::default();
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            src.extend_from_slice(&[b]);
            if let Some(r) = codec.decode(&mut src).expect("decode") {
                out.push(r);
            }
        }
        assert!(src.is_empty());
        assert_eq!(
            out,
            vec![
                lookup("postfix", b"example.com"),
                lookup("postfix", b"a b%c")
            ]
        );
    }

    #[test]
    fn socketmap_pipelined_frames_in_order() {
        assert_eq!(
            decode_all(b"19:postfix example.com,19:postfix example.net,3:a b,").expect("decode"),
            vec![
                lookup("postfix", b"example.com"),
                lookup("postfix", b"example.net"),
                lookup("a", b"b"),
            ]
        );
    }

    #[test]
    fn socketmap_state_is_per_codec() {
        let mut a = SocketmapCodec::default();
        let mut b = SocketmapCodec::default();
        let mut src_a = BytesMut::from(&b"19:postfix exa"[..]);
        let mut src_b = BytesMut::from(&b"3:x y,"[..]);
        assert!(a.decode(&mut src_a).expect("decode").is_none());
        assert_eq!(
            b.decode(&mut src_b).expect("decode"),
            Some(lookup("x", b"y"))
        );
        src_a.extend_from_slice(b"mple.com,");
        assert_eq!(
            a.decode(&mut src_a).expect("decode"),
            Some(lookup("postfix", b"example.com"))
        );
    }

    #[test]
    fn socketmap_huge_length_rejected_without_allocation() {
        // 2^40
        let mut codec = SocketmapCodec::default();
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(b"1099511627776:");
        let cap = src.capacity();
        assert!(matches!(
            codec.decode(&mut src),
            Err(FrameError::TooLarge(n)) if n > MAX_REQUEST
        ));
        assert_eq!(src.capacity(), cap);
        // Rejected as soon as the digits exceed the limit, before the ':' arrives.
        let mut src = BytesMut::from(&b"99999"[..]);
        assert!(matches!(
            SocketmapCodec::default().decode(&mut src),
            Err(FrameError::TooLarge(99_999))
        ));
    }

    #[test]
    fn socketmap_length_limit_boundary() {
        let payload = format!("postfix {}", "k".repeat(MAX_REQUEST - 8));
        let frame = format!("{}:{payload},", payload.len());
        assert_eq!(
            decode_all(frame.as_bytes()).expect("decode"),
            vec![lookup("postfix", "k".repeat(MAX_REQUEST - 8).as_bytes())]
        );
        assert!(matches!(
            decode_all(b"10241:"),
            Err(FrameError::TooLarge(10_241))
        ));
    }

    #[test]
    fn socketmap_leading_zeros_tolerated_within_digit_cap() {
        // Postfix's own netstring reader accepts them (`09:NOTFOUND ,`); the 5-digit cap still
        // applies.
        assert_eq!(
            decode_all(b"019:postfix example.com,").expect("decode"),
            vec![lookup("postfix", b"example.com")]
        );
        assert_eq!(
            decode_all(b"00003:a b,").expect("decode"),
            vec![lookup("a", b"b")]
        );
        assert!(matches!(
            decode_all(b"000003:a b,"),
            Err(FrameError::Malformed("length has more than 5 digits"))
        ));
    }

    #[test]
    fn socketmap_malformed_framing() {
        for (input, why) in [
            (&b"x9:NOTFOUND ,"[..], "length is not a decimal number"),
            (b":a b,", "empty length"),
            (b"3 :a b,", "length is not a decimal number"),
            (b"-3:a b,", "length is not a decimal number"),
            (b"3:a b;", "missing ',' after payload"),
            (b"9:NOTFOUND X", "missing ',' after payload"),
            (b"OK secure\n", "length is not a decimal number"),
        ] {
            match decode_all(input) {
                Err(FrameError::Malformed(w)) => assert_eq!(w, why, "{input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn socketmap_error_is_sticky() {
        let mut codec = SocketmapCodec::default();
        let mut src = BytesMut::from(&b"3:a b;"[..]);
        assert!(codec.decode(&mut src).is_err());
        assert!(codec.decode(&mut src).is_err());
    }

    #[test]
    fn socketmap_decode_eof() {
        let mut codec = SocketmapCodec::default();
        assert!(
            codec
                .decode_eof(&mut BytesMut::new())
                .expect("eof")
                .is_none()
        );
        for partial in [&b"1"[..], b"19:", b"19:postfix exam", b"3:a b"] {
            let mut codec = SocketmapCodec::default();
            let mut src = BytesMut::from(partial);
            assert!(
                matches!(
                    codec.decode_eof(&mut src),
                    Err(FrameError::Malformed("truncated"))
                ),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn socketmap_frame_error_display() {
        assert_eq!(
            FrameError::TooLarge(20_000).to_string(),
            "socketmap request length 20000 exceeds the limit of 10240 bytes"
        );
        assert_eq!(
            FrameError::Malformed("truncated").to_string(),
            "malformed socketmap netstring: truncated"
        );
        let io: FrameError = io::Error::other("boom").into();
        assert!(matches!(io, FrameError::Io(_)));
    }

    fn any_reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            ".+".prop_map(|s: String| Reply::Found(s.into())),
            Just(Reply::NotFound),
            ".*".prop_map(Reply::Temp),
            ".*".prop_map(Reply::Perm),
        ]
    }

    proptest! {
        #[test]
        fn socketmap_reply_length_always_matches(reply in any_reply()) {
            let wire = encoded(&reply);
            let payload = reply_payload(&wire);
            prop_assert!(payload.len() <= MAX_REPLY);
            let expected: Vec<u8> = match &reply {
                Reply::Found(v) => [b"OK ", v.to_string().as_bytes()].concat(),
                Reply::NotFound => b"NOTFOUND ".to_vec(),
                Reply::Temp(r) => [b"TEMP ", r.as_bytes()].concat(),
                Reply::Perm(r) => [b"PERM ", r.as_bytes()].concat(),
            };
            prop_assert_eq!(payload, &expected[..]);
        }

        #[test]
        fn socketmap_any_payload_round_trips(
            map in "[a-z0-9-]{1,20}",
            key in proptest::collection::vec(any::<u8>(), 0..2_000),
            chunk in 1usize..64,
        ) {
            let mut payload = format!("{map} ").into_bytes();
            payload.extend_from_slice(&key);
            let mut frame = format!("{}:", payload.len()).into_bytes();
            frame.extend_from_slice(&payload);
            frame.push(b',');
            // Twice, to check that the state resets between frames.
            let input = [frame.clone(), frame].concat();

            let mut codec = SocketmapCodec::default();
            let mut src = BytesMut::new();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                src.extend_from_slice(piece);
                while let Some(r) = codec.decode(&mut src).expect("decode") {
                    out.push(r);
                }
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(out, vec![lookup(&map, &key), lookup(&map, &key)]);
        }

        #[test]
        fn socketmap_arbitrary_input_never_panics_or_hoards(
            input in proptest::collection::vec(any::<u8>(), 0..4_000),
            chunk in 1usize..512,
        ) {
            let mut codec = SocketmapCodec::default();
            let mut src = BytesMut::new();
            'feed: for piece in input.chunks(chunk) {
                src.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut src) {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            prop_assert!(src.len() < MAX_FRAME);
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = codec.decode_eof(&mut src);
        }

        #[test]
        fn socketmap_digit_prefixes_never_over_reserve(digits in "[0-9]{1,20}") {
            let mut codec = SocketmapCodec::default();
            let mut src = BytesMut::from(format!("{digits}:").as_bytes());
            match codec.decode(&mut src) {
                Ok(None) => prop_assert!(src.capacity() <= 2 * MAX_FRAME),
                Ok(Some(_)) => prop_assert!(digits.bytes().all(|b| b == b'0')),
                Err(_) => prop_assert!(src.capacity() < 64),
            }
        }
    }
}

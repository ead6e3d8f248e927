//! The Postfix tcp_table protocol (`tcp_table(5)`): request-line decoding, reply-line
//! encoding and the %XX encoding both directions use.
//!
//! One [`TcpTableCodec`] per connection. Requests are `get <%XX-encoded key>\n`; replies are
//! `200 <data>\n`, `500 <text>\n` or `400 <text>\n`. The encoder implements both `Encoder<Reply>`
//! and `Encoder<&Reply>`.

use std::{fmt, io};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Reply, Value};

/// Longest request or reply line, newline included; replies are counted after %XX encoding
/// (`tcp_table(5)`; Postfix 3.7 takes a line of 4096 bytes and fails one of 4097).
pub const MAX_LINE: usize = 4096;

/// `200 ` and the newline around the encoded text.
const LINE_OVERHEAD: usize = 4 + 1;

/// One decoded request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get <key>`, with the key %XX-decoded.
    Get(Bytes),
    /// A complete line that is not a usable `get` request (`put`, bad escape, empty key, ...).
    /// The line framing is intact, so the connection can go on after a `400` reply.
    Invalid(&'static str),
}

/// A framing error: the connection must be closed (after a `400` reply).
#[derive(Debug)]
pub enum FrameError {
    /// More than [`MAX_LINE`] bytes without a newline. Nothing is consumed, so decoding again
    /// returns the same error.
    TooLarge,
    /// Transport error (required by tokio-util's `Framed`); also a line cut off by EOF.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge => {
                write!(f, "tcp_table request line longer than {MAX_LINE} bytes")
            }
            FrameError::Io(e) => write!(f, "tcp_table I/O error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            FrameError::TooLarge => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Line decoder and reply encoder for one connection.
#[derive(Debug, Default)]
pub struct TcpTableCodec {
    /// Bytes of the current line already searched for a newline, so input arriving a byte at a
    /// time costs O(n) in total instead of O(n²).
    scanned: usize,
}

impl Decoder for TcpTableCodec {
    type Item = Request;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, FrameError> {
        // A newline at index MAX_LINE - 1 makes a line of exactly MAX_LINE bytes; never look
        // further, so a hostile peer cannot make us scan (or keep) more than that.
        let limit = src.len().min(MAX_LINE);
        let start = self.scanned.min(limit);
        match src[start..limit].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                self.scanned = 0;
                let line = src.split_to(start + offset + 1).freeze();
                Ok(Some(parse_line(line)))
            }
            None if src.len() >= MAX_LINE => Err(FrameError::TooLarge),
            None => {
                self.scanned = limit;
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Request>, FrameError> {
        match self.decode(src)? {
            Some(request) => Ok(Some(request)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tcp_table request line cut off by EOF",
            ))),
        }
    }
}

/// `line` ends with `\n`. One trailing CR is dropped as a courtesy to hand-typed test clients;
/// Postfix never sends one.
fn parse_line(line: Bytes) -> Request {
    let end = line.len() - 1;
    let end = if end > 0 && line[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    let body = &line[..end];
    // `tcp_table(5)`: the command word is lowercase `get` and one SPACE; Postfix never sends
    // anything else.
    let Some(key) = body.strip_prefix(b"get ") else {
        return Request::Invalid(if body.starts_with(b"put ") {
            "put is not supported"
        } else {
            "not a get request"
        });
    };
    if key.is_empty() {
        return Request::Invalid("empty key");
    }
    // Keys without `%` are by far the common case and need no copy.
    if !key.contains(&b'%') {
        return Request::Get(line.slice(4..end));
    }
    match decode(key) {
        Ok(decoded) => Request::Get(Bytes::from(decoded)),
        Err(why) => Request::Invalid(why),
    }
}

/// Decodes %XX escapes (hex digits in either case, `tcp_table(5)` ENCODING). Other bytes are
/// copied as they are: "the server may omit the encoding", and so may a client.
pub fn decode(s: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let (Some(&hi), Some(&lo)) = (s.get(i + 1), s.get(i + 2)) else {
                return Err("truncated %XX escape");
            };
            let (Some(hi), Some(lo)) = (hex_value(hi), hex_value(lo)) else {
                return Err("bad %XX escape");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `tcp_table(5)` ENCODING: `%`, whitespace and every non-printing byte (all of < 0x21 and
/// >= 0x7F, so also SP, HTAB, CR, LF and UTF-8 bytes) are sent as %XX.
fn needs_escape(b: u8) -> bool {
    b == b'%' || !(0x21..0x7f).contains(&b)
}

fn encoded_len(s: &[u8]) -> usize {
    s.iter().map(|&b| if needs_escape(b) { 3 } else { 1 }).sum()
}

/// Where encoded bytes go: a reply buffer, or a key being encoded.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn push_encoded(out: &mut impl Sink, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of bytes that need no escape are copied whole.
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if needs_escape(b) {
            out.put(&s[start..i]);
            out.put(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            start = i + 1;
        }
    }
    out.put(&s[start..]);
}

/// %XX-encodes `key` the way Postfix's client does (uppercase hex, no case folding), e.g.
/// `A b%c/ü` → `A%20b%25c/%C3%BC`.
pub fn encode_key(key: &[u8]) -> String {
    let mut out = Vec::with_capacity(encoded_len(key));
    push_encoded(&mut out, key);
    // Every byte >= 0x80 was escaped, so the output is ASCII.
    out.into_iter().map(char::from).collect()
}

/// Whether `200 <encoded value>\n` fits in [`MAX_LINE`]. Callers fall back to a shorter answer
/// (without TLSRPT attributes) when it does not.
pub fn found_fits(value: &str) -> bool {
    LINE_OVERHEAD + encoded_len(value.as_bytes()) <= MAX_LINE
}

/// [`found_fits`] for a [`Value`] in pieces.
pub fn value_fits(value: &Value) -> bool {
    LINE_OVERHEAD
        + value
            .parts()
            .iter()
            .map(|p| encoded_len(p.as_bytes()))
            .sum::<usize>()
        <= MAX_LINE
}

/// Appends one reply line (`tcp_table(5)`, REPLY FORMAT). Always a bare LF: `\r\n` would put a
/// CR into the value Postfix returns.
///
/// * `Found` with an empty value is a bug (`200 \n` is an empty-result error that makes Postfix
///   defer mail): it fails a `debug_assert` and is sent as not found in release builds.
/// * `Found` that does not fit (see [`found_fits`]) is logged and sent as `400`.
/// * `Temp`/`Perm` reasons are cut (on a char boundary) so the encoded line fits. Both become
///   `400`, after which the client disconnects.
pub fn encode_reply(reply: &Reply, dst: &mut BytesMut) {
    match reply {
        Reply::Found(value) => {
            debug_assert!(!value.is_empty(), "tcp_table: Found with an empty value");
            if value.is_empty() {
                put_line(dst, b"500 ", "not found");
            } else if !value_fits(value) {
                tracing::error!(
                    len = value.len(),
                    "tcp_table reply exceeds {MAX_LINE} bytes; sending 400"
                );
                put_line(dst, b"400 ", "reply too large for tcp_table");
            } else {
                put_line_parts(dst, b"200 ", &value.parts());
            }
        }
        Reply::NotFound => put_line(dst, b"500 ", "not found"),
        Reply::Temp(reason) | Reply::Perm(reason) => {
            put_line(dst, b"400 ", fit_reason(reason));
        }
    }
}

/// The longest prefix of `reason` whose encoding fits in a reply line.
fn fit_reason(reason: &str) -> &str {
    let budget = MAX_LINE - LINE_OVERHEAD;
    let mut used = 0;
    for (i, c) in reason.char_indices() {
        let mut buf = [0u8; 4];
        used += encoded_len(c.encode_utf8(&mut buf).as_bytes());
        if used > budget {
            return &reason[..i];
        }
    }
    reason
}

fn put_line(dst: &mut BytesMut, status: &[u8], text: &str) {
    put_line_parts(dst, status, &[text]);
}

/// One reply line, `status` then the %XX-encoded `parts`, written straight into `dst`.
fn put_line_parts(dst: &mut BytesMut, status: &[u8], parts: &[&str]) {
    let len: usize = parts.iter().map(|p| encoded_len(p.as_bytes())).sum();
    dst.reserve(status.len() + len + 1);
    dst.extend_from_slice(status);
    for p in parts {
        push_encoded(dst, p.as_bytes());
    }
    dst.extend_from_slice(b"\n");
}

impl Encoder<&Reply> for TcpTableCodec {
    type Error = FrameError;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_reply(reply, dst);
        Ok(())
    }
}

impl Encoder<Reply> for TcpTableCodec {
    type Error = FrameError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_reply(&reply, dst);
        Ok(())
    }
}

/// The registry entry (see [`super::Protocol`]). Off unless configured: most sites use
/// socketmap, and a listener nobody asked for is one more open port.
pub static SPEC: super::Spec = super::Spec {
    name: "tcp_table",
    default_listen: &[],
    names_map: false,
    found_fits: value_fits,
    new_codec: || Box::<TcpTableCodec>::default(),
};

impl super::Codec for TcpTableCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<super::Request>, super::FatalFrame> {
        match Decoder::decode(self, buf) {
            Ok(Some(Request::Get(key))) => Ok(Some(super::Request::Lookup { map: None, key })),
            Ok(Some(Request::Invalid(why))) => Ok(Some(super::Request::Invalid(why))),
            Ok(None) => Ok(None),
            Err(FrameError::TooLarge) => Err(super::FatalFrame {
                message: format!("request line longer than {MAX_LINE} bytes"),
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

    fn encoded(reply: &Reply) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_reply(reply, &mut dst);
        dst.to_vec()
    }

    fn decode_all(input: &[u8]) -> Result<Vec<Request>, FrameError> {
        let mut codec = TcpTableCodec::default();
        let mut src = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = codec.decode_eof(&mut src)? {
            out.push(r);
        }
        Ok(out)
    }

    fn get(key: &[u8]) -> Request {
        Request::Get(Bytes::copy_from_slice(key))
    }

    #[test]
    fn tcp_table_notfound_exact_bytes() {
        assert_eq!(encoded(&Reply::NotFound), b"500 not%20found\n");
    }

    #[test]
    fn tcp_table_found_is_encoded() {
        assert_eq!(
            encoded(&Reply::Found(
                "secure match=mx1.example.com:.example.net".into()
            )),
            b"200 secure%20match=mx1.example.com:.example.net\n"
        );
        assert_eq!(
            encoded(&Reply::Found("a%b\tc\r\nd\u{7f}ü { x }".into())),
            b"200 a%25b%09c%0D%0Ad%7F%C3%BC%20{%20x%20}\n"
        );
    }

    #[test]
    fn tcp_table_temp_and_perm_are_400() {
        assert_eq!(
            encoded(&Reply::Temp("try again".into())),
            b"400 try%20again\n"
        );
        assert_eq!(
            encoded(&Reply::Perm("bad request".into())),
            b"400 bad%20request\n"
        );
        assert_eq!(encoded(&Reply::Temp(String::new())), b"400 \n");
    }

    #[test]
    fn tcp_table_never_crlf() {
        for reply in [
            Reply::Found("secure\r\n".into()),
            Reply::NotFound,
            Reply::Temp("x\r\n".into()),
        ] {
            let wire = encoded(&reply);
            assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(!wire.contains(&b'\r'));
            assert_eq!(wire.last(), Some(&b'\n'));
        }
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "empty value"))]
    fn tcp_table_empty_found_sent_as_notfound() {
        assert_eq!(
            encoded(&Reply::Found(String::new().into())),
            b"500 not%20found\n"
        );
    }

    #[test]
    fn tcp_table_encoder_trait_by_value_and_by_ref() {
        let mut codec = TcpTableCodec::default();
        let mut dst = BytesMut::new();
        Encoder::<&Reply>::encode(&mut codec, &Reply::NotFound, &mut dst).expect("encode");
        Encoder::<Reply>::encode(&mut codec, Reply::Found("secure".into()), &mut dst)
            .expect("encode");
        assert_eq!(&dst[..], b"500 not%20found\n200 secure\n");
    }

    #[test]
    fn tcp_table_found_fits_boundary_after_encoding() {
        // 4 + 4091 + 1 = 4096 bytes.
        let exact = "x".repeat(MAX_LINE - 5);
        assert!(found_fits(&exact));
        let wire = encoded(&Reply::Found(exact.into()));
        assert_eq!(wire.len(), MAX_LINE);

        assert!(!found_fits(&"x".repeat(MAX_LINE - 4)));
        // Counted after encoding: one space is three bytes on the wire.
        let spaced = format!("{} ", "x".repeat(MAX_LINE - 8));
        assert!(found_fits(&spaced));
        assert_eq!(encoded(&Reply::Found(spaced.into())).len(), MAX_LINE);
        let spaced_over = format!("{} ", "x".repeat(MAX_LINE - 7));
        assert!(!found_fits(&spaced_over));
        assert_eq!(
            encoded(&Reply::Found(spaced_over.into())),
            b"400 reply%20too%20large%20for%20tcp_table\n"
        );
    }

    #[test]
    fn tcp_table_reasons_truncated_to_fit() {
        let wire = encoded(&Reply::Temp("r".repeat(10_000)));
        assert_eq!(wire.len(), MAX_LINE);
        // ü is 6 encoded bytes and is never split.
        let wire = encoded(&Reply::Perm("ü".repeat(1_000)));
        assert!(wire.len() <= MAX_LINE);
        assert_eq!(wire.len(), 4 + 6 * ((MAX_LINE - 5) / 6) + 1);
        let text = decode(&wire[4..wire.len() - 1]).expect("decode");
        assert!(std::str::from_utf8(&text).is_ok());
    }

    #[test]
    fn tcp_table_postmap_request() {
        assert_eq!(
            decode_all(b"get example.com\n").expect("decode"),
            vec![get(b"example.com")]
        );
    }

    #[test]
    fn tcp_table_encoded_key_decoded() {
        assert_eq!(
            decode_all(b"get A%20b%25c/%C3%BC\n").expect("decode"),
            vec![get("A b%c/ü".as_bytes())]
        );
        assert_eq!(encode_key("A b%c/ü".as_bytes()), "A%20b%25c/%C3%BC");
    }

    #[test]
    fn tcp_table_hex_either_case() {
        assert_eq!(decode(b"%c3%BC%2f"), Ok(vec![0xc3, 0xbc, b'/']));
        assert_eq!(decode(b""), Ok(vec![]));
        assert_eq!(decode(b"%"), Err("truncated %XX escape"));
        assert_eq!(decode(b"ab%4"), Err("truncated %XX escape"));
        assert_eq!(decode(b"%zz"), Err("bad %XX escape"));
        assert_eq!(decode(b"%+1"), Err("bad %XX escape"));
    }

    #[test]
    fn tcp_table_invalid_lines_keep_framing() {
        assert_eq!(
            decode_all(b"put a b\nget\nget \nGET x\nget %zz\nget a%\nhello\n\nget ok.example\n")
                .expect("decode"),
            vec![
                Request::Invalid("put is not supported"),
                Request::Invalid("not a get request"),
                Request::Invalid("empty key"),
                Request::Invalid("not a get request"),
                Request::Invalid("bad %XX escape"),
                Request::Invalid("truncated %XX escape"),
                Request::Invalid("not a get request"),
                Request::Invalid("not a get request"),
                get(b"ok.example"),
            ]
        );
    }

    #[test]
    fn tcp_table_one_trailing_cr_tolerated() {
        assert_eq!(
            decode_all(b"get example.com\r\nget x\r\r\n").expect("decode"),
            vec![get(b"example.com"), get(b"x\r")]
        );
        assert_eq!(
            decode_all(b"get \r\n").expect("decode"),
            vec![Request::Invalid("empty key")]
        );
    }

    #[test]
    fn tcp_table_pipelined_lines_in_order() {
        assert_eq!(
            decode_all(b"get example.com\nget example.net\nget %5Bmx%5D:25\n").expect("decode"),
            vec![get(b"example.com"), get(b"example.net"), get(b"[mx]:25")]
        );
    }

    #[test]
    fn tcp_table_byte_at_a_time() {
        let input = b"get A%20b%25c/%C3%BC\nget example.com\n";
        let mut codec = TcpTableCodec::default();
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            src.extend_from_slice(&[b]);
            if let Some(r) = codec.decode(&mut src).expect("decode") {
                out.push(r);
            }
        }
        assert!(src.is_empty());
        assert_eq!(out, vec![get("A b%c/ü".as_bytes()), get(b"example.com")]);
    }

    #[test]
    fn tcp_table_request_line_4096_vs_4097() {
        let key = "k".repeat(MAX_LINE - 5);
        let line = format!("get {key}\n");
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(
            decode_all(line.as_bytes()).expect("decode"),
            vec![get(key.as_bytes())]
        );

        let line = format!("get {key}k\n");
        assert_eq!(line.len(), MAX_LINE + 1);
        assert!(matches!(
            decode_all(line.as_bytes()),
            Err(FrameError::TooLarge)
        ));
    }

    #[test]
    fn tcp_table_too_large_without_newline_byte_at_a_time() {
        let mut codec = TcpTableCodec::default();
        let mut src = BytesMut::new();
        for _ in 0..MAX_LINE - 1 {
            src.extend_from_slice(b"x");
            assert!(codec.decode(&mut src).expect("decode").is_none());
        }
        src.extend_from_slice(b"x");
        assert!(matches!(codec.decode(&mut src), Err(FrameError::TooLarge)));
        assert!(matches!(codec.decode(&mut src), Err(FrameError::TooLarge)));
    }

    #[test]
    fn tcp_table_decode_eof() {
        let mut codec = TcpTableCodec::default();
        assert!(
            codec
                .decode_eof(&mut BytesMut::new())
                .expect("eof")
                .is_none()
        );
        let mut src = BytesMut::from(&b"get example.com"[..]);
        match codec.decode_eof(&mut src) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tcp_table_frame_error_display() {
        assert_eq!(
            FrameError::TooLarge.to_string(),
            "tcp_table request line longer than 4096 bytes"
        );
        let io: FrameError = io::Error::other("boom").into();
        assert!(matches!(io, FrameError::Io(_)));
    }

    proptest! {
        #[test]
        fn tcp_table_any_key_round_trips(key in proptest::collection::vec(any::<u8>(), 0..1_000)) {
            let enc = encode_key(&key);
            prop_assert!(enc.bytes().all(|b| !needs_escape(b) || b == b'%'));
            prop_assert!(!enc.contains(' ') && !enc.contains('\n'));
            prop_assert_eq!(decode(enc.as_bytes()), Ok(key.clone()));
            if !key.is_empty() {
                let line = format!("get {enc}\n");
                prop_assert_eq!(
                    decode_all(line.as_bytes()).expect("decode"),
                    vec![get(&key)]
                );
            }
        }

        #[test]
        fn tcp_table_found_round_trips(value in ".+") {
            let wire = encoded(&Reply::Found(value.clone().into()));
            prop_assert!(wire.len() <= MAX_LINE);
            prop_assert_eq!(*wire.last().expect("newline"), b'\n');
            if found_fits(&value) {
                prop_assert!(wire.starts_with(b"200 "));
                prop_assert_eq!(decode(&wire[4..wire.len() - 1]), Ok(value.into_bytes()));
            } else {
                prop_assert!(wire.starts_with(b"400 "));
            }
        }

        #[test]
        fn tcp_table_arbitrary_input_never_panics_or_hoards(
            input in proptest::collection::vec(any::<u8>(), 0..10_000),
            chunk in 1usize..700,
        ) {
            let mut codec = TcpTableCodec::default();
            let mut src = BytesMut::new();
            'feed: for piece in input.chunks(chunk) {
                src.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut src) {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            prop_assert!(src.len() < MAX_LINE);
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = codec.decode_eof(&mut src);
        }
    }
}

//! The invariants the fuzz targets check, one function per target, each taking the raw fuzz input.
//!
//! Shared by the fuzz targets (`fuzz_targets/*.rs`, through the `mta_sts_policyd_fuzz` lib) and by
//! the regression tests in `tests/fuzz_regressions.rs` (through `#[path]`), so that a kept input
//! is checked by exactly the same code in `cargo test` as in the fuzzer. Every violation is a
//! panic (libFuzzer reports it as a crash). Only `std`, `bytes`, `tokio-util`, `tempfile` and the
//! daemon's library are used: all of them are available to the main crate's tests too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use mta_sts_policyd::answer::{self, Profile, Rendered};
use mta_sts_policyd::cache::journal::Store;
use mta_sts_policyd::key;
use mta_sts_policyd::policy::{self, MAX_AGE_LIMIT, MAX_POLICY_BYTES, Mode, Mx, MxPattern, Policy};
use mta_sts_policyd::proto::socketmap::{self, SocketmapCodec};
use mta_sts_policyd::proto::tcp_table::{self, TcpTableCodec};
use mta_sts_policyd::proto::{Reply, Value};

// ---- chunking -----------------------------------------------------------------------------------

/// How the input of a decoder target is cut into reads: the first two bytes choose the pattern
/// and seed a small PRNG, the rest is the byte stream.
struct Chunks<'a> {
    data: &'a [u8],
    mode: u8,
    state: u32,
}

impl<'a> Chunks<'a> {
    fn new(input: &'a [u8]) -> Chunks<'a> {
        let (head, data) = input.split_at(input.len().min(2));
        let seed = head.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
        Chunks {
            data,
            mode: (seed & 3) as u8,
            state: seed.wrapping_mul(0x9E37_79B9) | 1,
        }
    }

    fn next_len(&mut self) -> usize {
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let r = self.state as usize;
        match self.mode {
            0 => 1,
            1 => 1 + r % 16,
            2 => 1 + r % 4096,
            _ => usize::MAX,
        }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        let n = self.next_len().min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        Some(chunk)
    }
}

/// What a decoder made of a byte stream: the items, then the error that stopped it (as text), if
/// any.
type Decoded<T> = (Vec<T>, Option<String>);

/// Feeds `chunks` to `codec` the way tokio-util's `FramedRead` does (decode until `None` after
/// each read, `decode_eof` at the end), checking after every `None` that at most `max_buffered`
/// bytes are held, and that an error is sticky (nothing consumed, same error again).
fn feed<D, T>(
    codec: &mut D,
    chunks: impl Iterator<Item = impl AsRef<[u8]>>,
    max_buffered: usize,
    mut item: impl FnMut(&T),
) -> Decoded<T>
where
    D: Decoder<Item = T>,
    D::Error: std::fmt::Display,
{
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let on_error = |codec: &mut D, src: &mut BytesMut, e: D::Error| -> String {
        let len = src.len();
        let again = codec.decode(src);
        let first = e.to_string();
        match again {
            Err(e2) => assert_eq!(first, e2.to_string(), "decoder error is not sticky"),
            Ok(r) => panic!("decoder error {first:?} followed by Ok({})", r.is_some()),
        }
        assert_eq!(src.len(), len, "decoder consumed input on error");
        first
    };
    for chunk in chunks {
        src.extend_from_slice(chunk.as_ref());
        loop {
            match codec.decode(&mut src) {
                Ok(Some(r)) => {
                    item(&r);
                    out.push(r);
                }
                Ok(None) => {
                    assert!(
                        src.len() <= max_buffered,
                        "{} bytes buffered without an error (limit {max_buffered})",
                        src.len()
                    );
                    break;
                }
                Err(e) => {
                    let e = on_error(codec, &mut src, e);
                    return (out, Some(e));
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut src) {
            Ok(Some(r)) => {
                item(&r);
                out.push(r);
            }
            Ok(None) => {
                assert!(src.is_empty(), "decode_eof left {} bytes", src.len());
                return (out, None);
            }
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}

// ---- 1. socketmap_decode --------------------------------------------------------------------

/// Largest partial socketmap frame that may sit in the buffer: 5 length digits, `:`, the payload
/// and the `,`, less one byte (a complete frame is decoded).
pub const SOCKETMAP_MAX_BUFFERED: usize = 5 + 1 + socketmap::MAX_REQUEST + 1 - 1;

fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v.push(b',');
    v
}

/// Target 1: socketmap request decoding in arbitrary chunks.
///
/// * never more than [`SOCKETMAP_MAX_BUFFERED`] bytes held without an error;
/// * an error is sticky and consumes nothing;
/// * the requests (and the error, if any) do not depend on how the bytes were cut;
/// * every `Lookup` re-encoded as a netstring decodes to the same `Lookup`, consuming all of it.
pub fn socketmap_decode(input: &[u8]) {
    let check = |r: &socketmap::Request| {
        if let socketmap::Request::Lookup { map, key } = r {
            assert!(!map.is_empty(), "empty map name accepted");
            assert!(!map.contains(' '), "map name {map:?} contains a space");
            let mut payload = map.as_bytes().to_vec();
            payload.push(b' ');
            payload.extend_from_slice(key);
            let mut src = BytesMut::from(&netstring(&payload)[..]);
            let again = SocketmapCodec::default()
                .decode(&mut src)
                .expect("re-encoded lookup must decode");
            assert_eq!(again.as_ref(), Some(r), "lookup does not round-trip");
            assert!(src.is_empty(), "re-encoded lookup not fully consumed");
        }
    };
    let chunks = Chunks::new(input);
    let stream = chunks.data;
    let chunked = feed(
        &mut SocketmapCodec::default(),
        chunks,
        SOCKETMAP_MAX_BUFFERED,
        check,
    );
    let whole = feed(
        &mut SocketmapCodec::default(),
        std::iter::once(stream),
        usize::MAX,
        |_: &socketmap::Request| {},
    );
    assert_eq!(chunked, whole, "result depends on how the input was cut");
}

// ---- 2. tcp_table_decode --------------------------------------------------------------------

/// Target 2: tcp_table request decoding in arbitrary chunks.
///
/// * never `MAX_LINE` bytes or more held without an error;
/// * an error is sticky and consumes nothing;
/// * the requests do not depend on how the bytes were cut;
/// * every key re-encoded with `encode_key` (ASCII, no SP/`%`-less escapes, no newline) decodes to
///   the same bytes, alone and inside a `get` line.
pub fn tcp_table_decode(input: &[u8]) {
    let check = |r: &tcp_table::Request| {
        if let tcp_table::Request::Get(key) = r {
            assert!(!key.is_empty(), "empty key accepted");
            let enc = tcp_table::encode_key(key);
            assert!(
                enc.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "encode_key output {enc:?} has a byte that needs escaping"
            );
            assert_eq!(
                tcp_table::decode(enc.as_bytes()).as_deref(),
                Ok(&key[..]),
                "encode_key/decode do not round-trip"
            );
            // A key sent raw can be up to 3 times longer %XX-encoded, so its line may be over
            // MAX_LINE: then the decoder must refuse it, not cut it.
            let line = format!("get {enc}\n");
            let mut src = BytesMut::from(line.as_bytes());
            let again = TcpTableCodec::default().decode(&mut src);
            if line.len() <= tcp_table::MAX_LINE {
                let again = again.expect("re-encoded key must decode");
                assert_eq!(again.as_ref(), Some(r), "key does not round-trip");
                assert!(src.is_empty());
            } else {
                assert!(
                    matches!(again, Err(tcp_table::FrameError::TooLarge)),
                    "over-long line not refused"
                );
            }
        }
    };
    let chunks = Chunks::new(input);
    let stream = chunks.data;
    let chunked = feed(
        &mut TcpTableCodec::default(),
        chunks,
        tcp_table::MAX_LINE - 1,
        check,
    );
    let whole = feed(
        &mut TcpTableCodec::default(),
        std::iter::once(stream),
        usize::MAX,
        |_: &tcp_table::Request| {},
    );
    assert_eq!(chunked, whole, "result depends on how the input was cut");
}

// ---- 3. key_normalise -----------------------------------------------------------------------

/// Lowercase ASCII LDH, labels 1..=63 without a hyphen at either end, total <= 253, >= 2 labels,
/// top-level label not all digits.
pub fn assert_policy_domain_shape(d: &str) {
    assert!((1..=253).contains(&d.len()), "{d:?}: length {}", d.len());
    let labels: Vec<&str> = d.split('.').collect();
    assert!(labels.len() >= 2, "{d:?}: fewer than 2 labels");
    for l in &labels {
        assert!((1..=63).contains(&l.len()), "{d:?}: label {l:?} length");
        assert!(
            l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{d:?}: label {l:?} is not lowercase LDH"
        );
        assert!(
            !l.starts_with('-') && !l.ends_with('-'),
            "{d:?}: label {l:?} starts or ends with '-'"
        );
    }
    assert!(
        !labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit()),
        "{d:?}: numeric top-level label"
    );
}

/// Target 3: `key::policy_domain` on arbitrary bytes.
///
/// A returned domain has the shape of [`assert_policy_domain_shape`], is a fixed point (normalising
/// it again returns it), and the key forms Postfix may send for the same destination (upper case,
/// trailing dot, `[d]`, `[d]:25`, `d:25`) normalise to it too. It is also accepted by
/// `MxPattern::parse` as a non-wildcard name, which the TLSRPT answer needs for `policy_domain=`
/// (Postfix checks it with `valid_hostname()`, and RFC 8460 §4.4 wants A-labels).
pub fn key_normalise(input: &[u8]) {
    let Ok(d) = key::policy_domain(input) else {
        return;
    };
    assert_policy_domain_shape(&d);
    for variant in [
        d.clone(),
        d.to_ascii_uppercase(),
        format!("{d}."),
        format!("[{d}]"),
        format!("[{d}]:25"),
        format!("{d}:25"),
    ] {
        assert_eq!(
            key::policy_domain(variant.as_bytes()).as_deref(),
            Ok(d.as_str()),
            "{variant:?} (from {input:?}) does not normalise to {d:?}"
        );
    }
    let p = MxPattern::parse(&d).unwrap_or_else(|e| panic!("{d:?} is not an mx name: {e}"));
    assert!(!p.is_wildcard());
    assert_eq!(p.policy_form(), d);
}

// ---- 4. txt_parse ---------------------------------------------------------------------------

/// `v=STSv1`, optional SP/HTAB, `;`: RFC 8461 §3.1 keeps only records that begin with `v=STSv1;`,
/// and allowing blanks before the `;` matches the `sts-field-delim` of its ABNF.
fn is_candidate(r: &[u8]) -> bool {
    r.strip_prefix(b"v=STSv1")
        .and_then(|rest| rest.iter().find(|&&b| b != b' ' && b != b'\t'))
        == Some(&b';')
}

fn assert_sts_id(id: &str) {
    assert!(
        (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "accepted id {id:?} is not 1..=32 alphanumerics"
    );
}

/// Target 4: the `_mta-sts` TXT record parser. The first input byte is the separator that cuts the
/// rest into TXT records.
///
/// * `select_sts_record` accepts only when exactly one record is a candidate, and then returns
///   what `parse_sts_record` returns for it;
/// * any accepted id is 1..=32 ASCII letters and digits and appears in the record as `id=<id>`;
/// * a record `parse_sts_record` accepts is a candidate, so `select_sts_record` accepts it alone.
pub fn txt_parse(input: &[u8]) {
    let Some((&sep, rest)) = input.split_first() else {
        return;
    };
    let records: Vec<Vec<u8>> = rest.split(|&b| b == sep).map(<[u8]>::to_vec).collect();
    let candidates: Vec<&Vec<u8>> = records.iter().filter(|r| is_candidate(r)).collect();
    match policy::select_sts_record(&records) {
        Ok(rec) => {
            assert_sts_id(&rec.id);
            assert_eq!(
                candidates.len(),
                1,
                "accepted with {} candidates",
                candidates.len()
            );
            let text = std::str::from_utf8(candidates[0]).expect("accepted record is UTF-8");
            assert!(text.is_ascii(), "accepted record is not ASCII");
            assert_eq!(policy::parse_sts_record(text), Ok(rec));
        }
        Err(policy::TxtError::NoStsRecord) => assert!(candidates.is_empty()),
        Err(policy::TxtError::MultipleStsRecords(n)) => assert_eq!(n, candidates.len()),
        Err(policy::TxtError::Invalid(_)) => assert_eq!(candidates.len(), 1),
    }
    for r in &records {
        let Ok(text) = std::str::from_utf8(r) else {
            continue;
        };
        if let Ok(rec) = policy::parse_sts_record(text) {
            assert_sts_id(&rec.id);
            assert!(
                is_candidate(r),
                "{text:?} accepted but not a v=STSv1; candidate"
            );
            assert!(text.contains(&format!("id={}", rec.id)));
            assert_eq!(
                policy::select_sts_record(std::slice::from_ref(r)),
                Ok(rec),
                "select_sts_record disagrees with parse_sts_record on {text:?}"
            );
        }
    }
}

// ---- 5. policy_parse ------------------------------------------------------------------------

/// Invariants of any policy `parse_policy` returned.
pub fn assert_policy_invariants(p: &Policy) {
    if p.mode != Mode::None {
        assert!(!p.mx.is_empty(), "mode {} without mx", p.mode);
    }
    assert!(p.max_age <= MAX_AGE_LIMIT);
    for m in p.mx.iter() {
        let form = m.policy_form();
        assert_eq!(form, form.to_ascii_lowercase(), "mx pattern not lowercase");
        assert_eq!(
            MxPattern::parse(&form).as_ref().map(MxPattern::as_mx),
            Ok(m),
            "mx {form:?} does not re-parse"
        );
        assert!(!m.match_form().is_empty());
    }
    let text = p.to_text();
    assert!(
        text.len() <= MAX_POLICY_BYTES,
        "to_text is {} bytes",
        text.len()
    );
    assert_eq!(
        policy::parse_policy(text.as_bytes()).as_ref(),
        Ok(p),
        "policy does not round-trip through to_text: {text:?}"
    );
}

/// Target 5: `parse_policy` on arbitrary bytes. An accepted policy round-trips through `to_text`,
/// has >= 1 mx unless its mode is `none`, a clamped max_age, lowercase mx patterns that re-parse,
/// and one `lines` entry per non-empty input line.
pub fn policy_parse(input: &[u8]) {
    let Ok(p) = policy::parse_policy(input) else {
        return;
    };
    assert_policy_invariants(&p);
    let text = std::str::from_utf8(input).expect("accepted body is UTF-8");
    let non_empty = text
        .split('\n')
        .filter(|l| !l.is_empty() && *l != "\r")
        .count();
    assert_eq!(p.lines.len(), non_empty, "lines lost or invented");
}

// ---- 6. answer_render -----------------------------------------------------------------------

/// What the `answer_render` input decodes to.
#[derive(Debug)]
pub struct RenderCase {
    pub domain: String,
    pub body: Vec<u8>,
    pub profile: Profile,
}

/// Decodes an `answer_render` input:
///
/// * byte 0: bit 0 `strict_testing`, bit 1 `servername`, bit 2 `tlsrpt`; bits 3-4 the domain
///   (0: `example.com`, 1: the domain bytes as they are (lossy UTF-8), 2: the domain bytes
///   normalised with `key::policy_domain`, or `example.com`); bits 5-6 a header put before the body
///   (0: none, 1: enforce, 2: testing, 3: none), always `version: STSv1` and `max_age: 86400`
///   with it;
/// * byte 1: count/8 of generated unique `mx: m<i><pad>.example.net` lines appended to the body,
///   byte 2: length of `<pad>` (0..=63 `x`), to reach the protocols' size limits;
/// * the rest: domain bytes, NUL, body bytes (no NUL: all body).
pub fn decode_render_case(input: &[u8]) -> RenderCase {
    let byte = |i: usize| input.get(i).copied().unwrap_or(0);
    let flags = byte(0);
    let rest = input.get(3..).unwrap_or(&[]);
    let (domain_bytes, body_bytes) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let domain = match (flags >> 3) & 3 {
        1 | 3 => String::from_utf8_lossy(domain_bytes).into_owned(),
        2 => key::policy_domain(domain_bytes).unwrap_or_else(|_| "example.com".to_owned()),
        _ => "example.com".to_owned(),
    };
    let mut body = match (flags >> 5) & 3 {
        1 => b"version: STSv1\nmode: enforce\nmax_age: 86400\n".to_vec(),
        2 => b"version: STSv1\nmode: testing\nmax_age: 86400\n".to_vec(),
        3 => b"version: STSv1\nmode: none\nmax_age: 86400\n".to_vec(),
        _ => Vec::new(),
    };
    body.extend_from_slice(body_bytes);
    if !body.is_empty() && body.last() != Some(&b'\n') {
        body.push(b'\n');
    }
    let pad = "x".repeat(usize::from(byte(2)) % 64);
    for i in 0..usize::from(byte(1)) * 8 {
        body.extend_from_slice(format!("mx: m{i}{pad}.example.net\n").as_bytes());
    }
    RenderCase {
        domain,
        body,
        profile: Profile {
            strict_testing: flags & 1 != 0,
            servername: flags & 2 != 0,
            tlsrpt: flags & 4 != 0,
            dane: false,
        },
    }
}

fn socketmap_wire_ok(value: &str) {
    let mut wire = BytesMut::new();
    socketmap::encode_reply(&Reply::Found(value.into()), &mut wire);
    let colon = wire
        .iter()
        .position(|&b| b == b':')
        .expect("netstring colon");
    let len: usize = std::str::from_utf8(&wire[..colon])
        .expect("ascii length")
        .parse()
        .expect("decimal length");
    assert_eq!(wire.len(), colon + 1 + len + 1, "netstring length is wrong");
    assert_eq!(wire.last(), Some(&b','));
    let payload = &wire[colon + 1..wire.len() - 1];
    assert!(
        payload.len() <= socketmap::MAX_REPLY,
        "socketmap payload too long"
    );
    assert_eq!(payload, format!("OK {value}").as_bytes(), "not sent as OK");
}

fn tcp_table_wire_ok(value: &str) {
    let mut wire = BytesMut::new();
    tcp_table::encode_reply(&Reply::Found(value.into()), &mut wire);
    assert!(wire.len() <= tcp_table::MAX_LINE, "tcp_table line too long");
    assert!(wire.starts_with(b"200 "), "not sent as 200");
    assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(wire.last(), Some(&b'\n'));
    assert!(!wire.contains(&b'\r'));
    let text = &wire[4..wire.len() - 1];
    assert!(
        text.iter().all(|&b| (0x21..0x7f).contains(&b)),
        "unencoded byte"
    );
    assert_eq!(
        tcp_table::decode(text).as_deref(),
        Ok(value.as_bytes()),
        "tcp_table value does not decode back"
    );
}

/// Checks one found answer against Postfix's policy table syntax (`postconf(5)`
/// smtp_tls_policy_maps, TLS_README "TLS policy table", TLSRPT_README) and the policy it came from.
pub fn assert_valid_answer(value: &str, domain: &str, policy: &Policy, profile: &Profile) {
    assert!(!value.is_empty(), "empty answer");
    assert!(
        !value.eq_ignore_ascii_case("none"),
        "answer is the Postfix level none"
    );
    assert!(
        !value.chars().any(char::is_control),
        "answer contains a control character: {value:?}"
    );
    assert!(value.starts_with("secure match="), "{value:?}");

    let lines: std::collections::HashSet<(&str, &str)> = policy.lines.iter().collect();
    // Split off the `{ policy_string = ... }` groups; what is left is plain attributes.
    let mut outside = String::new();
    let mut groups = 0usize;
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        outside.push_str(&rest[..open]);
        assert!(
            rest[..open].ends_with(' '),
            "'{{' not preceded by a space: {value:?}"
        );
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .unwrap_or_else(|| panic!("unclosed '{{' in {value:?}"));
        let inner = &after[..close];
        assert!(!inner.contains('{'), "nested '{{' in {value:?}");
        let Some(line) = inner
            .strip_prefix(" policy_string = ")
            .and_then(|s| s.strip_suffix(' '))
        else {
            panic!("group {inner:?} is not {{ policy_string = ... }}");
        };
        let (k, v) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("policy_string {line:?} is not `key: value`"));
        assert!(
            lines.contains(&(k, v)),
            "policy_string {line:?} is not a policy line"
        );
        groups += 1;
        rest = &after[close + 1..];
        assert!(
            rest.is_empty() || rest.starts_with(' '),
            "'}}' not followed by a space: {value:?}"
        );
    }
    outside.push_str(rest);
    assert!(!outside.contains('}'), "'}}' outside a group: {value:?}");
    assert!(
        !outside.contains(','),
        "',' would split an attribute: {value:?}"
    );
    assert!(groups <= policy.lines.len());

    let mut words = outside.split(' ').filter(|w| !w.is_empty());
    assert_eq!(words.next(), Some("secure"));
    let (mut matches, mut servername, mut policy_type, mut policy_domain, mut patterns) =
        (0, 0, 0, 0, Vec::new());
    for w in words {
        let (name, val) = w
            .split_once('=')
            .unwrap_or_else(|| panic!("attribute {w:?} is not name=value in {value:?}"));
        assert!(!val.is_empty(), "empty value of {name} in {value:?}");
        match name {
            "match" => {
                matches += 1;
                let want: Vec<String> = unique(policy).iter().map(|p| p.match_form()).collect();
                let got: Vec<&str> = val.split(':').collect();
                assert!(
                    !got.is_empty() && got.iter().all(|m| !m.is_empty()),
                    "{val:?}"
                );
                assert_eq!(got, want, "match list is not the policy's mx list");
            }
            "servername" => {
                servername += 1;
                assert_eq!(val, "hostname");
            }
            "policy_type" => {
                policy_type += 1;
                assert_eq!(val, "sts");
            }
            "policy_domain" => {
                policy_domain += 1;
                let p = MxPattern::parse(val).expect("policy_domain is a host name");
                assert!(!p.is_wildcard() && p.policy_form() == val);
                assert_eq!(
                    val,
                    domain.to_ascii_lowercase(),
                    "policy_domain is not the domain"
                );
            }
            "mx_host_pattern" => patterns.push(val.to_owned()),
            other => panic!("unexpected attribute {other:?} in {value:?}"),
        }
    }
    assert_eq!(matches, 1, "match= must appear exactly once");
    assert_eq!(servername, usize::from(profile.servername));
    let tlsrpt = policy_type == 1;
    assert!(policy_type <= 1 && policy_domain <= 1);
    if tlsrpt {
        assert!(
            profile.tlsrpt,
            "TLSRPT attributes without the tlsrpt profile"
        );
        assert_eq!(policy_domain, 1, "policy_type=sts without policy_domain");
        let want: Vec<String> = unique(policy).iter().map(|p| p.policy_form()).collect();
        assert_eq!(patterns, want, "mx_host_pattern list is not the policy's");
    } else {
        // TLSRPT_README: these attributes without policy_type=sts make Postfix defer ("It is an
        // error to specify these attributes for a non-STS policy").
        assert_eq!(policy_domain, 0);
        assert!(patterns.is_empty());
        assert_eq!(groups, 0);
    }
}

fn unique(policy: &Policy) -> Vec<Mx<'_>> {
    let mut seen = std::collections::HashSet::new();
    policy.mx.iter().filter(|m| seen.insert(*m)).collect()
}

/// [`Rendered`] with the found value as one string, for comparing with [`answer::render`].
enum RenderedText {
    Found(String),
    NotFound,
    TooLarge,
}

/// Target 6: `answer::render_fitting` with both protocols' `found_fits`.
///
/// NOTFOUND exactly for inactive policies (mode none, testing without `strict_testing`); a found
/// answer passes [`assert_valid_answer`] and goes on the wire as `OK`/`200` within the protocol's
/// size limit; the TLSRPT answer is chosen whenever it fits; `TooLarge` only when even the plain
/// answer does not fit.
pub fn answer_render(input: &[u8]) {
    let case = decode_render_case(input);
    check_render(&case);
}

/// [`answer_render`] on a decoded case (also used by the regression tests).
pub fn check_render(case: &RenderCase) {
    let Ok(policy) = policy::parse_policy(&case.body) else {
        return;
    };
    let (domain, profile) = (case.domain.as_str(), &case.profile);
    let active = match policy.mode {
        Mode::Enforce => true,
        Mode::Testing => profile.strict_testing,
        Mode::None => false,
    };
    type Fits = fn(&str) -> bool;
    type Wire = fn(&str);
    let protocols: [(&str, Fits, Wire); 2] = [
        ("socketmap", socketmap::found_fits, socketmap_wire_ok),
        ("tcp_table", tcp_table::found_fits, tcp_table_wire_ok),
    ];
    for (name, fits, wire_ok) in protocols {
        // The answer must be the same whether its mx list is shared with a cached policy (the
        // lookup path) or copied (query): both go through the same choice.
        let rendered = answer::render_fitting_owned(domain, &policy, profile, |v: &Value| {
            fits(&v.to_string())
        });
        let rendered = match rendered {
            Rendered::Found(v) => RenderedText::Found(v.to_string()),
            Rendered::NotFound => RenderedText::NotFound,
            Rendered::TooLarge => RenderedText::TooLarge,
        };
        let full = answer::render(domain, &policy, profile, true);
        let plain = answer::render(domain, &policy, profile, false);
        match &rendered {
            RenderedText::NotFound => assert!(!active, "{name}: active policy answered NOTFOUND"),
            RenderedText::Found(v) => {
                assert!(active, "{name}: inactive policy answered {v:?}");
                assert!(fits(v), "{name}: answer does not fit");
                wire_ok(v);
                assert_valid_answer(v, domain, &policy, profile);
                if profile.tlsrpt
                    && let Some(f) = &full
                    && fits(f)
                {
                    assert_eq!(v, f, "{name}: fitting TLSRPT answer not used");
                } else {
                    assert_eq!(Some(v), plain.as_ref(), "{name}: not the plain answer");
                }
            }
            RenderedText::TooLarge => {
                assert!(active);
                let plain = plain.expect("active policy renders");
                assert!(
                    !fits(&plain),
                    "{name}: TooLarge although the plain answer fits"
                );
            }
        }
    }
}

// ---- 7. store_load --------------------------------------------------------------------------

/// CRC-32/IEEE, as the journal uses (own implementation, so the target does not trust the one
/// it tests).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Decodes a `store_load` input into `(journal bytes, now)`:
///
/// * byte 0: bit 0 set = "checksummed" mode: every line of the body that does not start with
///   `mta-sts-policyd journal` gets `<crc32> ` put in front, so that the fuzzer reaches the JSON
///   and policy parsing behind the checksum; clear = the body is the journal as it is;
/// * bytes 1-4: `now` = 1,700,000,000 s + this big-endian u32;
/// * the rest: the body.
pub fn decode_store_case(input: &[u8]) -> (Vec<u8>, SystemTime) {
    let byte = |i: usize| input.get(i).copied().unwrap_or(0);
    let offset = u32::from_be_bytes([byte(1), byte(2), byte(3), byte(4)]);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(offset));
    let body = input.get(5..).unwrap_or(&[]);
    if byte(0) & 1 == 0 {
        return (body.to_vec(), now);
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(b"mta-sts-policyd journal") {
            let json = line.strip_suffix(b"\n").unwrap_or(line);
            out.extend_from_slice(format!("{:08x} ", crc32(json)).as_bytes());
        }
        out.extend_from_slice(line);
    }
    (out, now)
}

/// Where the store target makes its directories: tmpfs when there is one (the store fsyncs).
fn scratch_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    })
}

/// Target 7: `Store::open` on an arbitrary journal.
pub fn store_load(input: &[u8]) {
    let (journal, now) = decode_store_case(input);
    check_store(&journal, now);
}

/// [`store_load`] on a decoded case: must not panic; every loaded policy is valid at `now`,
/// expires `max_age` after it was fetched and obeys the policy invariants; every negative holds
/// past `now`; no domain twice; reopening the compacted journal gives the same policies and
/// negatives in the same order, skips and drops nothing, and leaves the file unchanged.
pub fn check_store(journal: &[u8], now: SystemTime) {
    let dir = tempfile::Builder::new()
        .prefix("fuzz-store")
        .tempdir_in(scratch_base())
        .expect("temp dir");
    let path = dir.path().join("policies.journal");
    std::fs::write(&path, journal).expect("write journal");

    let (store, first) = Store::open(dir.path(), now).expect("open must succeed");
    drop(store);
    let mut seen = std::collections::HashSet::new();
    for (domain, e) in &first.policies {
        assert!(e.is_valid(now), "{domain}: expired policy loaded");
        assert_eq!(
            e.expires(),
            e.fetched + Duration::from_secs(u64::from(e.policy.max_age))
        );
        assert_policy_invariants(&e.policy);
        assert!(seen.insert(domain.clone()), "{domain} loaded twice");
    }
    for (domain, _reason, until) in &first.negatives {
        assert!(*until > now, "{domain}: expired negative loaded");
        assert!(seen.insert(domain.clone()), "{domain} loaded twice");
    }
    let compacted = std::fs::read(&path).expect("journal after open");

    let (store, second) = Store::open(dir.path(), now).expect("reopen must succeed");
    drop(store);
    assert_eq!(second.skipped, 0, "compacted journal has unusable records");
    assert_eq!(second.expired, 0, "compacted journal has expired records");
    assert_eq!(
        second.policies, first.policies,
        "policies changed on reopen"
    );
    assert_eq!(
        second.negatives, first.negatives,
        "negatives changed on reopen"
    );
    assert_eq!(
        std::fs::read(&path).expect("journal after reopen"),
        compacted,
        "a compacted journal was rewritten differently"
    );
}

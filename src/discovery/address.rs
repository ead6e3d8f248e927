//! Which addresses a direct policy fetch may connect to: the internal-address block that keeps a
//! hostile domain from aiming the daemon at loopback, the internal network or anything else a
//! policy host on the public internet never has (server-side request forgery).
//!
//! A leaf of `discovery/`: plain address arithmetic, no I/O. The rules follow the IANA IPv4 and
//! IPv6 Special-Purpose Address Registries (RFC 6890 and the RFCs they list). IPv6 forms that
//! carry an IPv4 address the packet ends up at (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
//! Teredo) are judged by that IPv4 address, so that an AAAA record cannot smuggle an internal
//! IPv4 target past the IPv4 rules; any other IPv6 address outside global unicast 2000::/3 is
//! refused.
//!
//! Fetches through `[https] proxy` are not checked here: the proxy resolves the policy host, so
//! the daemon never sees the address (the README's security model says so).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is an address a policy host on the public internet never has: the blocks of the
/// IANA special-purpose registries that are not globally reachable (loopback, private, shared,
/// link-local, documentation, benchmarking, reserved, multicast ...), and IPv6 addresses whose
/// embedded IPv4 destination is such an address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    match a {
        // 0.0.0.0/8 "this network" and 127/8 loopback (RFC 1122 §3.2.1.3), 10/8 private
        // (RFC 1918).
        0 | 10 | 127 => true,
        // 100.64.0.0/10 shared address space, carrier-grade NAT (RFC 6598).
        100 => (64..128).contains(&b),
        // 169.254.0.0/16 link-local (RFC 3927), cloud metadata services among them.
        169 => b == 254,
        // 172.16.0.0/12 private (RFC 1918).
        172 => (16..32).contains(&b),
        192 => match (b, c) {
            // 192.0.0.0/24 IETF protocol assignments (RFC 6890). Two /32s in it are anycast
            // services (PCP, TURN), never a policy host; the whole /24 is refused.
            // 192.0.2.0/24 TEST-NET-1 documentation (RFC 5737).
            (0, 0) | (0, 2) => true,
            // 192.88.99.0/24, the 6to4 relay anycast prefix, deprecated by RFC 7526.
            (88, 99) => true,
            // 192.168.0.0/16 private (RFC 1918).
            (168, _) => true,
            _ => false,
        },
        // 198.18.0.0/15 benchmarking (RFC 2544); 198.51.100.0/24 TEST-NET-2 (RFC 5737).
        198 => b == 18 || b == 19 || (b == 51 && c == 100),
        // 203.0.113.0/24 TEST-NET-3 (RFC 5737).
        203 => b == 0 && c == 113,
        // 224.0.0.0/4 multicast (RFC 5771); 240.0.0.0/4 reserved (RFC 1112 §4), which includes
        // the limited broadcast address 255.255.255.255 (RFC 919).
        224..=255 => true,
        _ => false,
    }
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // ::1 loopback and :: unspecified (RFC 4291 §2.5.2, §2.5.3), refused as themselves before
    // the IPv4-compatible rule below reads them as 0.0.0.1 and 0.0.0.0.
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    // ::ffff:0:0/96 IPv4-mapped (RFC 4291 §2.5.5.2) and ::/96 IPv4-compatible (deprecated by
    // RFC 4291 §2.5.5.1, still routed by some stacks as automatic tunnels): the embedded
    // address is the destination.
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
        return is_internal_v4(v4_at(&ip, 12));
    }
    // 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052 §2.1): the translator connects to the
    // IPv4 address in the last 32 bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(v4_at(&ip, 12));
    }
    // 64:ff9b:1::/48, NAT64 local-use prefixes (RFC 8215). The operator picks the prefix length
    // inside the /48 (RFC 6052 §2.2 allows /48, /56, /64 and /96 here), and with it where the
    // IPv4 address sits; the address is refused when any of those readings is internal, so
    // whatever the translator's layout, the IPv4 address it reaches passes the IPv4 rules.
    if seg[..3] == [0x64, 0xff9b, 1] {
        return nat64_readings(&ip).into_iter().any(is_internal_v4);
    }
    // 2002::/16 6to4 (RFC 3056 §2): the relay tunnels to the IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return is_internal_v4(v4_at(&ip, 2));
    }
    // 2001::/32 Teredo (RFC 4380 §4): a relay talks to the Teredo server (bits 32..64) and to
    // the client's public (NAT) address, stored inverted in the last 32 bits. Both are
    // contacted on the daemon's behalf, so the address is refused when either is internal.
    if seg[0] == 0x2001 && seg[1] == 0 {
        let server = v4_at(&ip, 4);
        let client = Ipv4Addr::from(!u32::from(v4_at(&ip, 12)));
        return is_internal_v4(server) || is_internal_v4(client);
    }
    let (s0, s1, s2, s3) = (seg[0], seg[1], seg[2], seg[3]);
    // Outside 2000::/3 nothing is global unicast (RFC 4291 §2.4, IANA IPv6 address space):
    // besides the blocks named below, the rest is reserved or unallocated, and a router that
    // delivers there is an internal one.
    (s0 & 0xe000) != 0x2000
        // 100::/64 discard-only (RFC 6666) and 100:0:0:1::/64, the dummy prefix of the IANA
        // registry: nothing answers there.
        || (s0 == 0x100 && s1 == 0 && s2 == 0 && s3 <= 1)
        // 2001::/23 IETF protocol assignments (RFC 2928): not globally reachable, except the
        // blocks the registry marks reachable (Teredo is judged above).
        || (s0 == 0x2001 && s1 < 0x200 && !ietf_reachable(&seg))
        // 2001:db8::/32 and 3fff::/20 documentation (RFC 3849, RFC 9637).
        || (s0 == 0x2001 && s1 == 0xdb8)
        || (s0 == 0x3fff && (s1 & 0xf000) == 0)
        // 5f00::/16 SRv6 segment identifiers (RFC 9602): not globally reachable.
        || s0 == 0x5f00
        // fc00::/7 unique local (RFC 4193).
        || (s0 & 0xfe00) == 0xfc00
        // fe80::/10 link-local (RFC 4291 §2.5.6) and fec0::/10 site-local (deprecated by
        // RFC 3879, still routed inside old networks).
        || (s0 & 0xffc0) == 0xfe80
        || (s0 & 0xffc0) == 0xfec0
        // ff00::/8 multicast (RFC 4291 §2.7).
        || (s0 & 0xff00) == 0xff00
}

/// The blocks of 2001::/23 the IPv6 special-purpose registry marks globally reachable: the PCP,
/// TURN and DNS-SD anycast addresses 2001:1::1 to 2001:1::3 (RFC 7723, RFC 8155, RFC 9665),
/// AMT 2001:3::/32 (RFC 7450), AS112 2001:4:112::/48 (RFC 7535), ORCHIDv2 2001:20::/28
/// (RFC 7343) and drone DETs 2001:30::/28 (RFC 9374). Benchmarking 2001:2::/48 (RFC 5180), the
/// deprecated ORCHID 2001:10::/28 (RFC 4843) and everything unassigned stay internal.
fn ietf_reachable(seg: &[u16; 8]) -> bool {
    match seg[1] {
        1 => seg[2..7] == [0; 5] && (1..=3).contains(&seg[7]),
        3 => true,
        4 => seg[2] == 0x112,
        0x20..=0x3f => true,
        _ => false,
    }
}

/// The four bytes of `ip` starting at byte `at`, as an IPv4 address.
fn v4_at(ip: &Ipv6Addr, at: usize) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3])
}

/// The IPv4 address of a NAT64 address under each prefix length RFC 6052 §2.2 allows inside a
/// /48: the address bits skip bits 64..72 (the "u" octet) for the /48 and /56 layouts.
fn nat64_readings(ip: &Ipv6Addr) -> [Ipv4Addr; 4] {
    let o = ip.octets();
    [
        Ipv4Addr::new(o[6], o[7], o[9], o[10]),    // /48
        Ipv4Addr::new(o[7], o[9], o[10], o[11]),   // /56
        Ipv4Addr::new(o[9], o[10], o[11], o[12]),  // /64
        Ipv4Addr::new(o[12], o[13], o[14], o[15]), // /96
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per range: an address inside it and, where the range has an edge a policy host
    /// can sit beyond, the first address outside, with the verdict.
    const ROWS: &[(&str, &str, bool)] = &[
        // (range, address, internal). The first address past a block outside 2000::/3 is
        // refused anyway, by the global-unicast rule; its row says so.
        ("0.0.0.0/8", "0.1.2.3", true),
        ("0.0.0.0/8", "1.0.0.0", false),
        ("10.0.0.0/8", "10.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("100.64.0.0/10", "100.64.0.0", true),
        ("100.64.0.0/10", "100.127.255.255", true),
        ("100.64.0.0/10", "100.63.255.255", false),
        ("100.64.0.0/10", "100.128.0.0", false),
        ("127.0.0.0/8", "127.255.0.1", true),
        ("127.0.0.0/8", "128.0.0.0", false),
        ("169.254.0.0/16", "169.254.169.254", true),
        ("169.254.0.0/16", "169.255.0.0", false),
        ("172.16.0.0/12", "172.31.255.255", true),
        ("172.16.0.0/12", "172.32.0.0", false),
        ("172.16.0.0/12", "172.15.255.255", false),
        ("192.0.0.0/24", "192.0.0.9", true),
        ("192.0.0.0/24", "192.0.1.0", false),
        ("192.0.2.0/24", "192.0.2.1", true),
        ("192.0.2.0/24", "192.0.3.0", false),
        ("192.88.99.0/24", "192.88.99.1", true),
        ("192.88.99.0/24", "192.88.100.0", false),
        ("192.168.0.0/16", "192.168.1.1", true),
        ("192.168.0.0/16", "192.169.0.0", false),
        ("198.18.0.0/15", "198.19.255.255", true),
        ("198.18.0.0/15", "198.20.0.0", false),
        ("198.18.0.0/15", "198.17.255.255", false),
        ("198.51.100.0/24", "198.51.100.7", true),
        ("198.51.100.0/24", "198.51.101.0", false),
        ("203.0.113.0/24", "203.0.113.7", true),
        ("203.0.113.0/24", "203.0.114.0", false),
        ("224.0.0.0/4", "224.0.0.1", true),
        ("224.0.0.0/4", "223.255.255.255", false),
        ("240.0.0.0/4", "240.0.0.1", true),
        ("240.0.0.0/4", "255.255.255.255", true),
        ("public IPv4", "8.8.8.8", false),
        ("::1", "::1", true),
        ("::", "::", true),
        ("::ffff:0:0/96", "::ffff:127.0.0.1", true),
        ("::ffff:0:0/96", "::ffff:10.0.0.1", true),
        ("::ffff:0:0/96", "::ffff:8.8.8.8", false),
        ("::/96", "::127.0.0.1", true),
        ("::/96", "::10.0.0.1", true),
        ("::/96", "::8.8.8.8", false),
        ("outside 2000::/3: ::/96", "::1:0:0", true),
        ("64:ff9b::/96", "64:ff9b::10.0.0.1", true),
        ("64:ff9b::/96", "64:ff9b::169.254.169.254", true),
        ("64:ff9b::/96", "64:ff9b::8.8.8.8", false),
        ("64:ff9b:1::/48", "64:ff9b:1::10.0.0.1", true),
        ("64:ff9b:1::/48", "64:ff9b:1:a00:1::", true),
        // 8.8.8.8 in every layout RFC 6052 §2.2 allows: reached whatever the translator's layout.
        ("64:ff9b:1::/48", "64:ff9b:1:808:8:808:808:808", false),
        ("64:ff9b:1::/48", "64:ff9b:1:808:8:808:7f00:1", true),
        ("2002::/16", "2002:7f00:1::1", true),
        ("2002::/16", "2002:a9fe:a9fe::1", true),
        ("2002::/16", "2002:808:808::1", false),
        // Teredo: server 8.8.8.8 and client 8.8.4.4 (inverted: f7f7:fbfb) are public.
        ("2001::/32", "2001:0:808:808:0:ffff:f7f7:fbfb", false),
        ("2001::/32", "2001:0:a00:1:0:ffff:f7f7:fbfb", true),
        ("2001::/32", "2001:0:808:808:0:ffff:80ff:fffe", true),
        (
            "past 2001::/32, in 2001::/23",
            "2001:1:808:808:0:ffff:80ff:fffe",
            true,
        ),
        ("100::/64", "100::1", true),
        ("100:0:0:1::/64", "100:0:0:1::1", true),
        ("outside 2000::/3: 100::/64", "100:0:0:2::", true),
        ("2001::/23", "2001:5::1", true),
        ("2001::/23", "2001:1ff:ffff::1", true),
        ("2001::/23", "2001:200::1", false),
        ("2001:1::1/128", "2001:1::1", false),
        ("2001:1::3/128", "2001:1::3", false),
        ("2001:1::3/128", "2001:1::4", true),
        ("2001:2::/48", "2001:2::1", true),
        ("2001:3::/32", "2001:3::1", false),
        ("2001:4:112::/48", "2001:4:112::1", false),
        ("2001:4:112::/48", "2001:4:113::1", true),
        ("2001:10::/28", "2001:1f::1", true),
        ("2001:20::/28", "2001:20::1", false),
        ("2001:30::/28", "2001:3f:ffff::1", false),
        ("2001:30::/28", "2001:40::1", true),
        ("2001:db8::/32", "2001:db8::1", true),
        ("2001:db8::/32", "2001:db9::", false),
        ("3fff::/20", "3fff:fff::1", true),
        ("3fff::/20", "3fff:1000::", false),
        ("5f00::/16", "5f00::1", true),
        ("outside 2000::/3: 5f00::/16", "5f01::", true),
        ("fc00::/7", "fc00::1", true),
        ("fc00::/7", "fd12::1", true),
        ("outside 2000::/3: fc00::/7", "fe00::", true),
        ("outside 2000::/3: fc00::/7", "fbff:ffff::", true),
        ("fe80::/10", "fe80::1", true),
        ("fe80::/10", "febf:ffff::1", true),
        ("fec0::/10", "fec0::1", true),
        ("fec0::/10", "feff:ffff::1", true),
        ("ff00::/8", "ff02::1", true),
        ("ff00::/8", "feff:ffff::1", true),
        ("2000::/3", "1fff:ffff::1", true),
        ("2000::/3", "4000::1", true),
        ("2000::/3", "2000::1", false),
        ("public IPv6", "2a00::1", false),
        ("public IPv6", "2606:4700::1111", false),
    ];

    #[test]
    fn internal_address_block_follows_the_iana_special_purpose_registries() {
        let mut wrong = Vec::new();
        for &(range, addr, internal) in ROWS {
            let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
            if is_internal(ip) != internal {
                wrong.push(format!("{range}: {addr} should be internal={internal}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn nat64_local_use_is_read_in_every_rfc6052_layout() {
        // 10.0.0.1 placed as RFC 6052 §2.2 places it after a /48, /56, /64 and /96 prefix.
        let layouts: [[usize; 4]; 4] = [
            [6, 7, 9, 10],
            [7, 9, 10, 11],
            [9, 10, 11, 12],
            [12, 13, 14, 15],
        ];
        for (i, at) in layouts.iter().enumerate() {
            let mut o = [0u8; 16];
            o[..6].copy_from_slice(&[0, 0x64, 0xff, 0x9b, 0, 1]);
            for (byte, &pos) in [10, 0, 0, 1].iter().zip(at) {
                o[pos] = *byte;
            }
            let ip = Ipv6Addr::from(o);
            assert_eq!(nat64_readings(&ip)[i], Ipv4Addr::new(10, 0, 0, 1), "{ip}");
            assert!(is_internal(IpAddr::V6(ip)), "{ip}");
        }
    }
}

use super::*;

fn dest(host: &str) -> Destination {
    Destination {
        host: host.into(),
        port: 25,
        mx: true,
    }
}

fn mx(names: &[&str], authenticated: bool) -> Rrset<Mx> {
    Rrset::Found {
        records: names
            .iter()
            .enumerate()
            .map(|(i, n)| Mx {
                preference: i as u16 * 10,
                exchange: (*n).into(),
            })
            .collect(),
        authenticated,
        ttl: 3600,
    }
}

fn secure_addr() -> Rrset<std::net::IpAddr> {
    Rrset::Found {
        records: vec!["192.0.2.1".parse().unwrap()],
        authenticated: true,
        ttl: 600,
    }
}

fn tlsa(records: &[(u8, u8, u8)], authenticated: bool) -> Rrset<Tlsa> {
    Rrset::Found {
        records: records
            .iter()
            .map(|&(u, s, m)| Tlsa::new(u, s, m, &[0xab; 32]))
            .collect(),
        authenticated,
        ttl: 300,
    }
}

fn no_tlsa() -> Rrset<Tlsa> {
    Rrset::Empty {
        nxdomain: true,
        authenticated: true,
        ttl: 900,
    }
}

fn host(name: &str, tlsa: Rrset<Tlsa>) -> HostAnswers {
    HostAnswers {
        name: name.into(),
        addresses: secure_addr(),
        tlsa,
    }
}

fn run(d: &Destination, m: Option<Rrset<Mx>>, hosts: &[HostAnswers]) -> Result<DaneState, Failure> {
    let s = servers(d, m.as_ref())?;
    classify(d, s, hosts)
}

#[test]
fn rfc7672_3_1_only_dane_ta_and_dane_ee_are_usable() {
    for (u, s, m, ok) in [
        (3, 1, 1, true),
        (2, 0, 2, true),
        (3, 0, 0, true),
        (0, 1, 1, false),
        (1, 1, 1, false),
        (3, 2, 1, false),
        (3, 1, 3, false),
        (4, 1, 1, false),
    ] {
        assert_eq!(Tlsa::new(u, s, m, &[1]).usable(), ok, "{u} {s} {m}");
    }
}

#[test]
fn rfc7672_2_2_every_mx_usable_is_dane_only() {
    let d = dest("example.com");
    let s = run(
        &d,
        Some(mx(&["mx1.example.com", "mx2.example.com"], true)),
        &[
            host("mx1.example.com", tlsa(&[(3, 1, 1)], true)),
            host("mx2.example.com", tlsa(&[(2, 0, 1), (0, 0, 1)], true)),
        ],
    )
    .unwrap();
    assert_eq!(s.verdict, Verdict::DaneOnly);
    assert_eq!(s.verdict.level(), Some("dane-only"));
    // The smallest TTL (the TLSA RRsets' 300 s) decides how long it holds.
    assert_eq!(s.ttl, Duration::from_secs(300));
    assert_eq!(s.hosts.len(), 2);
}

#[test]
fn rfc7672_partial_or_unusable_tlsa_is_dane() {
    let d = dest("example.com");
    let partial = run(
        &d,
        Some(mx(&["a.example.com", "b.example.com"], true)),
        &[
            host("a.example.com", tlsa(&[(3, 1, 1)], true)),
            host("b.example.com", no_tlsa()),
        ],
    )
    .unwrap();
    assert_eq!(partial.verdict, Verdict::Dane);
    let unusable = run(
        &d,
        Some(mx(&["a.example.com"], true)),
        &[host("a.example.com", tlsa(&[(1, 1, 1)], true))],
    )
    .unwrap();
    assert_eq!(unusable.verdict, Verdict::Dane);
}

#[test]
fn rfc7672_2_2_unauthenticated_mx_is_unsigned_without_host_lookups() {
    let d = dest("example.com");
    let s = servers(&d, Some(&mx(&["mx.example.com"], false))).unwrap();
    let Servers::Decided(state) = s else {
        panic!("an unsigned MX RRset needs no host lookups: {s:?}");
    };
    assert_eq!(state.verdict, Verdict::Unsigned);
    assert_eq!(state.verdict.level(), None);
}

#[test]
fn authenticated_mx_without_any_tlsa_is_no_tlsa() {
    let d = dest("example.com");
    let s = run(
        &d,
        Some(mx(&["mx.example.com"], true)),
        &[host("mx.example.com", no_tlsa())],
    )
    .unwrap();
    assert_eq!(s.verdict, Verdict::NoTlsa);
}

#[test]
fn rfc7672_2_2_tlsa_of_a_host_with_insecure_addresses_does_not_count() {
    let d = dest("example.com");
    let mut h = host("mx.example.com", tlsa(&[(3, 1, 1)], true));
    h.addresses = Rrset::Found {
        records: vec!["192.0.2.1".parse().unwrap()],
        authenticated: false,
        ttl: 600,
    };
    let s = run(&d, Some(mx(&["mx.example.com"], true)), &[h]).unwrap();
    assert_eq!(s.verdict, Verdict::NoTlsa);
    // Unauthenticated TLSA answers do not count either.
    let s = run(
        &d,
        Some(mx(&["mx.example.com"], true)),
        &[host("mx.example.com", tlsa(&[(3, 1, 1)], false))],
    )
    .unwrap();
    assert_eq!(s.verdict, Verdict::NoTlsa);
}

#[test]
fn rfc7505_null_mx_and_nxdomain_mean_no_mail() {
    let d = dest("example.com");
    let null = run(&d, Some(mx(&[""], true)), &[]).unwrap();
    assert_eq!(null.verdict, Verdict::NullMx);
    let nx = run(
        &d,
        Some(Rrset::Empty {
            nxdomain: true,
            authenticated: false,
            ttl: 30,
        }),
        &[],
    )
    .unwrap();
    assert_eq!(nx.verdict, Verdict::NxDomain);
    assert_eq!(nx.ttl, MIN_TTL);
}

#[test]
fn rfc5321_5_1_no_mx_records_means_the_domain_itself() {
    let d = dest("example.com");
    let s = servers(
        &d,
        Some(&Rrset::Empty {
            nxdomain: false,
            authenticated: true,
            ttl: 3600,
        }),
    )
    .unwrap();
    assert!(matches!(&s, Servers::Look { hosts, .. } if hosts == &["example.com".to_string()]));
}

#[test]
fn rfc7672_2_1_1_failed_lookups_fail_the_state() {
    let d = dest("example.com");
    let e = run(&d, Some(Rrset::Failed("SERVFAIL".into())), &[]).unwrap_err();
    assert_eq!(e.lookup, "MX example.com");
    let e = run(
        &d,
        Some(mx(&["mx.example.com"], true)),
        &[host("mx.example.com", Rrset::Failed("timeout".into()))],
    )
    .unwrap_err();
    assert_eq!(e.lookup, "TLSA _25._tcp.mx.example.com");
    let mut h = host("mx.example.com", no_tlsa());
    h.addresses = Rrset::Failed("SERVFAIL".into());
    let e = run(&d, Some(mx(&["mx.example.com"], true)), &[h]).unwrap_err();
    assert!(e.to_string().starts_with("A/AAAA mx.example.com failed"));
}

#[test]
fn rfc7672_3_2_2_bracketed_host_is_the_only_server() {
    let d = Destination {
        host: "relay.example.com".into(),
        port: 587,
        mx: false,
    };
    assert_eq!(d.key(), "[relay.example.com]:587");
    assert_eq!(
        d.tlsa_name("relay.example.com"),
        "_587._tcp.relay.example.com"
    );
    let s = servers(&d, None).unwrap();
    let s = classify(
        &d,
        s,
        &[host("relay.example.com", tlsa(&[(3, 1, 1)], true))],
    )
    .unwrap();
    assert_eq!(s.verdict, Verdict::DaneOnly);
    // Its addresses unauthenticated: an unsigned zone.
    let mut h = host("relay.example.com", tlsa(&[(3, 1, 1)], true));
    h.addresses = Rrset::Found {
        records: vec!["192.0.2.1".parse().unwrap()],
        authenticated: false,
        ttl: 60,
    };
    let s = classify(&d, servers(&d, None).unwrap(), &[h]).unwrap();
    assert_eq!(s.verdict, Verdict::Unsigned);
}

#[test]
fn hosts_without_addresses_are_left_out_of_the_verdict() {
    let d = dest("example.com");
    let mut gone = host("old.example.com", no_tlsa());
    gone.addresses = Rrset::Empty {
        nxdomain: true,
        authenticated: true,
        ttl: 60,
    };
    let s = run(
        &d,
        Some(mx(&["mx.example.com", "old.example.com"], true)),
        &[host("mx.example.com", tlsa(&[(3, 1, 1)], true)), gone],
    )
    .unwrap();
    assert_eq!(s.verdict, Verdict::DaneOnly);
}

#[test]
fn more_mx_hosts_than_the_limit_never_give_dane_only() {
    let d = dest("example.com");
    let names: Vec<String> = (0..MAX_HOSTS + 2)
        .map(|i| format!("mx{i}.example.com"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = servers(&d, Some(&mx(&refs, true))).unwrap();
    let Servers::Look {
        hosts, truncated, ..
    } = &s
    else {
        panic!("{s:?}");
    };
    assert_eq!((hosts.len(), *truncated), (MAX_HOSTS, true));
    let answers: Vec<HostAnswers> = hosts
        .iter()
        .map(|h| host(h, tlsa(&[(3, 1, 1)], true)))
        .collect();
    assert_eq!(classify(&d, s, &answers).unwrap().verdict, Verdict::Dane);
}

#[test]
fn ttl_is_clamped_to_a_minute_and_a_day() {
    assert_eq!(clamp_ttl(Some(0)), MIN_TTL);
    assert_eq!(clamp_ttl(None), MIN_TTL);
    assert_eq!(clamp_ttl(Some(604_800)), MAX_TTL);
    assert_eq!(clamp_ttl(Some(3600)), Duration::from_secs(3600));
}

#[test]
fn stored_states_are_validated_like_fresh_ones() {
    let d = dest("example.com");
    let s = run(
        &d,
        Some(mx(&["mx.example.com"], true)),
        &[host("mx.example.com", tlsa(&[(3, 1, 1)], true))],
    )
    .unwrap();
    assert_eq!(s.validate(), Ok(()));
    let text = serde_json::to_string(&s).unwrap();
    let back: DaneState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    let mut forged = s.clone();
    forged.hosts[0].tlsa[0].usage = 1;
    assert!(
        forged.validate().is_err(),
        "dane-only with only unusable records"
    );
    let mut ttl = s;
    ttl.ttl = Duration::from_secs(1);
    assert!(ttl.validate().is_err());
}

#[test]
fn postfix_nexthop_keys_become_destinations() {
    let d = |k: &str| Destination::from_key(k.as_bytes()).map(|d| d.key());
    assert_eq!(d("Example.COM."), Ok("example.com".into()));
    assert_eq!(d("example.com:587"), Ok("example.com:587".into()));
    assert_eq!(d("[Relay.example.com]"), Ok("[relay.example.com]".into()));
    assert_eq!(
        d("[relay.example.com]:25"),
        Ok("[relay.example.com]".into())
    );
    assert_eq!(
        d("[relay.example.com]:2525"),
        Ok("[relay.example.com]:2525".into())
    );
    assert!(d("[192.0.2.1]").is_err());
    assert!(d(".example.com").is_err());
}

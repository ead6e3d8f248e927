//! One DANE discovery (RFC 7672) over any [`DaneSource`]: the MX RRset first, then every
//! server's addresses and TLSA RRset at once, judged by the pure rules of [`crate::dane`].
//!
//! [`DaneSource`] is the seam: the real one (`dnssec.rs`) asks the configured validating
//! resolver and reads its `AD` bit; tests substitute their own.

use std::net::IpAddr;

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::source::BoxFuture;
use crate::dane::{self, DaneState, Destination, Failure, HostAnswers, Mx, Rrset, Servers, Tlsa};

/// Asks DNS with the `AD` bit set (RFC 6840 §5.7) and reports the resolver's verdict. Each call
/// is bounded by the source's own timeout; a timeout is [`Rrset::Failed`].
pub trait DaneSource: Send + Sync + 'static {
    /// `<domain>.` MX.
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Rrset<Mx>>;
    /// `<host>.` A and AAAA, joined as [`HostAnswers::addresses`] describes.
    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Rrset<IpAddr>>;
    /// `<name>.` TLSA, `name` being `_<port>._tcp.<host>`.
    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Rrset<Tlsa>>;
}

/// The result of one DANE discovery.
#[derive(Debug, Clone)]
pub struct DaneDiscovery {
    pub outcome: Result<DaneState, Failure>,
    pub elapsed: Duration,
}

/// MX (unless `[host]`), then for every server its addresses and TLSA at once: two DNS round
/// trips whatever the number of servers.
pub async fn discover_dane(source: &dyn DaneSource, dest: &Destination) -> DaneDiscovery {
    let started = Instant::now();
    let outcome = run(source, dest).await;
    DaneDiscovery {
        outcome,
        elapsed: started.elapsed(),
    }
}

async fn run(source: &dyn DaneSource, dest: &Destination) -> Result<DaneState, Failure> {
    let mx = if dest.mx {
        Some(source.mx(&dest.host).await)
    } else {
        None
    };
    let servers = dane::servers(dest, mx.as_ref())?;
    let hosts = match &servers {
        Servers::Decided(_) => Vec::new(),
        Servers::Look { hosts, .. } => hosts.clone(),
    };
    let answers = join_all(hosts.iter().map(|h| async move {
        let name = dest.tlsa_name(h);
        let (addresses, tlsa) = tokio::join!(source.addresses(h), source.tlsa(&name));
        HostAnswers {
            name: h.clone(),
            addresses,
            tlsa,
        }
    }))
    .await;
    dane::classify(dest, servers, &answers)
}

/// A scripted [`DaneSource`] for unit tests: answers by name, counts calls.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    pub(crate) struct FakeDane {
        pub mx: Mutex<HashMap<String, Rrset<Mx>>>,
        pub addresses: Mutex<HashMap<String, Rrset<IpAddr>>>,
        pub tlsa: Mutex<HashMap<String, Rrset<Tlsa>>>,
        pub calls: AtomicUsize,
        pub delay: Mutex<Duration>,
    }

    impl FakeDane {
        /// `domain` with signed MX `mx`, its addresses signed, TLSA `3 1 1` when `usable`.
        pub fn signed(&self, domain: &str, mx: &str, usable: bool) {
            self.mx.lock().unwrap().insert(
                domain.into(),
                Rrset::Found {
                    records: vec![Mx {
                        preference: 10,
                        exchange: mx.into(),
                    }],
                    authenticated: true,
                    ttl: 3600,
                },
            );
            self.addresses.lock().unwrap().insert(
                mx.into(),
                Rrset::Found {
                    records: vec!["192.0.2.25".parse().unwrap()],
                    authenticated: true,
                    ttl: 3600,
                },
            );
            let tlsa = if usable {
                Rrset::Found {
                    records: vec![Tlsa::new(3, 1, 1, &[7; 32])],
                    authenticated: true,
                    ttl: 3600,
                }
            } else {
                Rrset::Empty {
                    nxdomain: true,
                    authenticated: true,
                    ttl: 3600,
                }
            };
            self.tlsa
                .lock()
                .unwrap()
                .insert(format!("_25._tcp.{mx}"), tlsa);
        }

        async fn step(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let d = *self.delay.lock().unwrap();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }

    fn unsigned_empty<T>() -> Rrset<T> {
        Rrset::Empty {
            nxdomain: false,
            authenticated: false,
            ttl: 300,
        }
    }

    impl DaneSource for FakeDane {
        fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Rrset<Mx>> {
            Box::pin(async move {
                self.step().await;
                self.mx
                    .lock()
                    .unwrap()
                    .get(domain)
                    .cloned()
                    .unwrap_or_else(unsigned_empty)
            })
        }
        fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Rrset<IpAddr>> {
            Box::pin(async move {
                self.step().await;
                self.addresses
                    .lock()
                    .unwrap()
                    .get(host)
                    .cloned()
                    .unwrap_or_else(unsigned_empty)
            })
        }
        fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Rrset<Tlsa>> {
            Box::pin(async move {
                self.step().await;
                self.tlsa
                    .lock()
                    .unwrap()
                    .get(name)
                    .cloned()
                    .unwrap_or_else(unsigned_empty)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDane;
    use super::*;
    use crate::dane::Verdict;

    fn dest(host: &str) -> Destination {
        Destination {
            host: host.into(),
            port: 25,
            mx: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn host_lookups_run_at_once_not_one_after_the_other() {
        let f = FakeDane::default();
        f.signed("example.com", "mx.example.com", true);
        *f.delay.lock().unwrap() = Duration::from_secs(1);
        let t = tokio::time::Instant::now();
        let d = discover_dane(&f, &dest("example.com")).await;
        assert_eq!(d.outcome.unwrap().verdict, Verdict::DaneOnly);
        // MX, then A/AAAA and TLSA together: two delays, three calls.
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        assert_eq!(f.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unsigned_domains_cost_one_query() {
        let f = FakeDane::default();
        let d = discover_dane(&f, &dest("plain.example")).await;
        assert_eq!(d.outcome.unwrap().verdict, Verdict::Unsigned);
        assert_eq!(f.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

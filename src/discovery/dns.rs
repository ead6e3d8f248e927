//! DNS through hickory-resolver: the `_mta-sts` TXT lookup (RFC 8461 §3.1) and the policy host's
//! addresses for the HTTPS fetch. With `dnssec.rs` (DANE's AD-bit lookups), the only module
//! that imports hickory; its error mapping ([`dns_error`]) serves both.
//!
//! Every query goes to the configured nameservers (or resolv.conf's), never through getaddrinfo,
//! so that the TXT record and the policy host are resolved by the same resolver and tests can
//! point the daemon at their own DNS server.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

use crate::config::DnsConfig;
use crate::discovery::{DnsError, NoPolicy, TxtLookup};
use crate::policy;

/// A TXT RRset larger than this is not an MTA-STS deployment; refusing it bounds the work a hostile
/// DNS answer can cause.
const MAX_TXT_RECORDS: usize = 64;

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        // One try per server: the outer deadline below is what bounds the lookup anyway (hickory
        // multiplies its timeout by the attempts otherwise).
        opts.attempts = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        // The policy cache is the cache; hickory's own would hide record changes from refresh.
        opts.cache_size = 0;
        opts.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            timeout: cfg.timeout,
        })
    }

    /// `_mta-sts.<domain>.` TXT, reduced to what RFC 8461 §3.1 lets a sender conclude.
    pub async fn sts_txt(&self, domain: &str) -> TxtLookup {
        // The trailing dot makes the name fully qualified, so no search list is applied.
        let name = format!("_mta-sts.{domain}.");
        let lookup = match tokio::time::timeout(self.timeout, self.resolver.txt_lookup(name)).await
        {
            Err(_) => return TxtLookup::Temp(DnsError::Timeout),
            Ok(Err(e)) if e.is_nx_domain() => return TxtLookup::NoPolicy(NoPolicy::NxDomain),
            Ok(Err(e)) if e.is_no_records_found() => return TxtLookup::NoPolicy(NoPolicy::NoData),
            Ok(Err(e)) => return TxtLookup::Temp(dns_error(&e)),
            Ok(Ok(l)) => l,
        };
        // Answers may include the CNAME chain (RFC 8461 §8.2 delegation): only the TXT data at
        // its end counts. Character-strings are joined without separators (§3.1).
        let records: Vec<Vec<u8>> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .take(MAX_TXT_RECORDS + 1)
            .collect();
        if records.is_empty() {
            return TxtLookup::NoPolicy(NoPolicy::NoData);
        }
        if records.len() > MAX_TXT_RECORDS {
            return TxtLookup::Temp(DnsError::TooManyRecords {
                limit: MAX_TXT_RECORDS,
            });
        }
        match policy::select_sts_record(&records) {
            Ok(record) => {
                let text = records
                    .iter()
                    .filter_map(|r| std::str::from_utf8(r).ok())
                    .find(|t| policy::parse_sts_record(t).is_ok())
                    .unwrap_or_default()
                    .to_string();
                TxtLookup::Record { record, text }
            }
            Err(e) => TxtLookup::NoPolicy(NoPolicy::Txt(e)),
        }
    }

    /// A and AAAA of `host` (the policy host or the proxy), bounded by the DNS timeout.
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let fqdn = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        match tokio::time::timeout(self.timeout, self.resolver.lookup_ip(fqdn)).await {
            Err(_) => Err(DnsError::Timeout),
            Ok(Err(e)) => Err(dns_error(&e)),
            Ok(Ok(l)) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Err(DnsError::NoAddress)
                } else {
                    Ok(ips)
                }
            }
        }
    }
}

/// hickory's error reduced to our vocabulary. "No records" (NXDOMAIN, NODATA) becomes
/// [`DnsError::NoAddress`]: the TXT lookup treats it as an answer before it gets here, so only
/// address lookups reach that arm.
pub(super) fn dns_error(e: &NetError) -> DnsError {
    match e {
        NetError::Timeout => DnsError::Timeout,
        NetError::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => DnsError::Refused,
            std::io::ErrorKind::TimedOut => DnsError::Timeout,
            _ => DnsError::Network(io.to_string()),
        },
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => match code {
            ResponseCode::Refused => DnsError::Refused,
            ResponseCode::ServFail => DnsError::ServFail,
            other => DnsError::Rcode(u16::from(*other)),
        },
        NetError::Dns(HickoryDnsError::NoRecordsFound(_)) => DnsError::NoAddress,
        NetError::Dns(HickoryDnsError::DnssecBogus) => DnsError::Bogus,
        NetError::Dns(other) => DnsError::Malformed(other.to_string()),
        NetError::Proto(_)
        | NetError::ParseInt(_)
        | NetError::QueryCaseMismatch
        | NetError::ForeignClassRecord { .. } => DnsError::Malformed(e.to_string()),
        // Busy, no connections, truncated over TCP too, and hickory's free-text errors.
        _ => DnsError::Network(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;

    use super::*;

    #[test]
    fn hickory_errors_map_onto_one_vocabulary() {
        let io = |kind| NetError::Io(Arc::new(std::io::Error::from(kind)));
        let rcode = |c| NetError::Dns(HickoryDnsError::ResponseCode(c));
        let cases = [
            (NetError::Timeout, DnsError::Timeout),
            (io(std::io::ErrorKind::ConnectionRefused), DnsError::Refused),
            (rcode(ResponseCode::Refused), DnsError::Refused),
            (rcode(ResponseCode::ServFail), DnsError::ServFail),
            (rcode(ResponseCode::FormErr), DnsError::Rcode(1)),
            (rcode(ResponseCode::NotImp), DnsError::Rcode(4)),
            (NetError::Dns(HickoryDnsError::DnssecBogus), DnsError::Bogus),
            (
                NetError::from(NoRecords::new(Query::default(), ResponseCode::NXDomain)),
                DnsError::NoAddress,
            ),
        ];
        for (net, want) in cases {
            assert_eq!(dns_error(&net), want, "{net:?}");
        }
        assert_eq!(
            dns_error(&io(std::io::ErrorKind::NetworkUnreachable)).label(),
            "network"
        );
        assert_eq!(dns_error(&NetError::NoConnections).label(), "network");
        assert_eq!(dns_error(&NetError::QueryCaseMismatch).label(), "malformed");
    }
}

//! DNS through hickory-resolver: the `_mta-sts` TXT lookup (RFC 8461 §3.1) and the policy host's
//! addresses for the HTTPS fetch. The only module that imports hickory.
//!
//! Every query goes to the configured nameservers (or resolv.conf's), never through getaddrinfo,
//! so that the TXT record and the policy host are resolved by the same resolver and tests can
//! point the daemon at their own DNS server.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::DnsConfig;
use crate::discovery::{NoPolicy, TxtLookup};
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
            Err(_) => return TxtLookup::Temp("DNS timeout".to_string()),
            Ok(Err(e)) if e.is_nx_domain() => return TxtLookup::NoPolicy(NoPolicy::NxDomain),
            Ok(Err(e)) if e.is_no_records_found() => return TxtLookup::NoPolicy(NoPolicy::NoData),
            Ok(Err(e)) => return TxtLookup::Temp(e.to_string()),
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
            return TxtLookup::Temp(format!(
                "more than {MAX_TXT_RECORDS} TXT records at _mta-sts.{domain}"
            ));
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

    /// A and AAAA of `host` (the policy host), bounded by the DNS timeout.
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        match tokio::time::timeout(self.timeout, self.resolver.lookup_ip(fqdn)).await {
            Err(_) => Err("DNS timeout".to_string()),
            Ok(Err(e)) if e.is_no_records_found() => Err(format!("{host} has no address")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(l)) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Err(format!("{host} has no address"))
                } else {
                    Ok(ips)
                }
            }
        }
    }
}

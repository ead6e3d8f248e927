//! The real [`PolicySource`]: the TXT lookup through [`super::dns`], the policy fetch through
//! [`super::https`] (which resolves the policy host with the same resolver).

use super::dns::Dns;
use super::error::FetchError;
use super::https::Fetcher;
use super::source::{BoxFuture, PolicySource, TxtLookup};

/// The real source: hickory for DNS, hyper + rustls for HTTPS, both on the configured resolver.
pub struct NetSource {
    dns: Dns,
    fetcher: Fetcher,
}

impl NetSource {
    pub fn new(dns: Dns, fetcher: Fetcher) -> NetSource {
        NetSource { dns, fetcher }
    }
}

impl PolicySource for NetSource {
    fn txt<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, TxtLookup> {
        Box::pin(self.dns.sts_txt(domain))
    }

    fn fetch<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(self.fetcher.fetch(domain))
    }
}

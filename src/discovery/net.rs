//! The real [`PolicySource`]: DNS through [`super::dns`], HTTPS through [`super::https`]. The
//! only file of this layer that knows both, so that neither edge imports the other.

use super::dns::Dns;
use super::https::Fetcher;
use super::source::{BoxFuture, FetchError, PolicySource, TxtLookup};

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

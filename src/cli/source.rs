//! The policy source `serve`, `query` and `check-config` build from the configuration: DNS for
//! the TXT record, HTTPS for the policy (RFC 8461 §3).
//!
//! A leaf of `cli/`.

use std::sync::Arc;

use crate::config::Config;
use crate::discovery::dns::Dns;
use crate::discovery::https::Fetcher;
use crate::discovery::{NetSource, PolicySource};

/// Err is a configuration problem the validation could not see (an unreadable CA file, a
/// resolver that cannot be built).
pub fn net_source(config: &Config) -> Result<Arc<dyn PolicySource>, String> {
    let dns = Dns::new(&config.dns)?;
    let fetcher = Fetcher::new(&config.https, dns.clone())?;
    Ok(Arc::new(NetSource::new(dns, fetcher)))
}

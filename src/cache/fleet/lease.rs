//! The refresh lease: before a background refresh of a domain, a host takes a short lease on it
//! (`SET <prefix>lease:<domain> <host> NX PX <ms>`); the one that gets it refreshes and publishes,
//! the others pick the published entry up later. The lease is never released early: it also
//! stops a host that was slower by a moment from refreshing the same domain again. A holder
//! that vanished loses it when it expires, and the next host whose check is due takes over.

use std::time::Duration;

use redis::Cmd;

use super::client::{Client, Failure};

/// What asking for a lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This host refreshes the domain.
    Acquired,
    /// Another host of the fleet does (or did, within the lease time).
    HeldElsewhere,
    /// The server could not be asked: refresh locally, as without `[fleet]`.
    Unavailable(Failure),
}

/// The `SET` command for a lease of `duration` on `key`.
pub fn command(key: &str, host: &str, duration: Duration) -> Cmd {
    let ms = u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut c = redis::cmd("SET");
    c.arg(key).arg(host).arg("NX").arg("PX").arg(ms);
    c
}

pub async fn acquire(client: &Client, key: &str, host: &str, duration: Duration) -> Lease {
    // `SET ... NX` answers OK when it set the key and nil when the key exists.
    match client
        .run::<Option<String>>(&command(key, host, duration))
        .await
    {
        Ok(Some(_)) => Lease::Acquired,
        // This host's own lease still running (a domain due twice within it) is no reason to
        // skip: nobody else refreshes it.
        Ok(None) => {
            let mut get = redis::cmd("GET");
            get.arg(key);
            match client.run::<Option<String>>(&get).await {
                Ok(Some(holder)) if holder == host => Lease::Acquired,
                Ok(_) => Lease::HeldElsewhere,
                Err(f) => Lease::Unavailable(f),
            }
        }
        Err(f) => Lease::Unavailable(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_set_only_if_absent_with_a_millisecond_expiry() {
        let c = command(
            "mta-sts:lease:example.test",
            "host-1",
            Duration::from_secs(5),
        );
        let args: Vec<String> = c
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<not a plain argument>".into(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "SET",
                "mta-sts:lease:example.test",
                "host-1",
                "NX",
                "PX",
                "5000"
            ]
        );
    }
}

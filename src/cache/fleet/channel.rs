//! The fleet-wide operator channel: `ctl evict`, `ctl refresh` and `ctl purge` given on one host
//! are published on `<prefix>ctl` (Redis pub/sub) and every daemon subscribed applies them. A
//! message is one JSON object, `{"v":1,"op":"evict"|"refresh"|"purge","d":…,"from":<host>}`;
//! a daemon ignores its own messages (it applied the verb before publishing it).
//!
//! Pub/sub delivers only to daemons connected at that moment: one that is cut off from the
//! server misses the message (its entry then ends by its own expiry or refresh). Messages are
//! untrusted like every value read from the server: size-limited and validated.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::Fleet;
use super::client::Failure;

/// The longest message decoded (a domain name is at most 253 bytes).
const MAX_MESSAGE: usize = 1024;
/// Waits between attempts to (re)subscribe, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// An operator's verb for the whole fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Evict(String),
    Refresh(String),
    Purge,
}

impl Command {
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Evict(_) => "evict",
            Command::Refresh(_) => "refresh",
            Command::Purge => "purge",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Message {
    v: u64,
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    from: String,
}

pub fn encode(cmd: &Command, from: &str) -> String {
    let d = match cmd {
        Command::Evict(d) | Command::Refresh(d) => Some(d.clone()),
        Command::Purge => None,
    };
    let m = Message {
        v: 1,
        op: cmd.verb().into(),
        d,
        from: from.into(),
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// The command and the host that sent it. The domain is checked by whoever applies it.
pub fn decode(payload: &[u8]) -> Result<(Command, String), String> {
    if payload.len() > MAX_MESSAGE {
        return Err(format!("{} bytes, more than {MAX_MESSAGE}", payload.len()));
    }
    let m: Message = serde_json::from_slice(payload).map_err(|e| format!("bad JSON: {e}"))?;
    if m.v != 1 {
        return Err(format!("unknown message version {}", m.v));
    }
    let cmd = match (m.op.as_str(), m.d) {
        ("evict", Some(d)) => Command::Evict(d),
        ("refresh", Some(d)) => Command::Refresh(d),
        ("purge", None) => Command::Purge,
        (op, _) => return Err(format!("unknown or incomplete operation {op:.16?}")),
    };
    Ok((cmd, m.from))
}

/// Sends an operator's verb to every daemon of the fleet; how many received it.
pub async fn broadcast(fleet: &Fleet, cmd: &Command) -> Result<u64, Failure> {
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(fleet.channel()).arg(encode(cmd, fleet.host()));
    fleet.client.run(&publish).await
}

/// An operator's verb for the whole fleet: the shared entries it concerns go first (or the next
/// miss anywhere would take them back), then every other daemon is told; how many were.
pub async fn everywhere(fleet: &Fleet, cmd: &Command) -> Result<u64, Failure> {
    match cmd {
        Command::Evict(d) => {
            fleet.forget(d).await?;
            // The domain's own DANE state (its MX destination) goes with its policy.
            fleet.forget_dane(d).await?;
        }
        Command::Purge => {
            fleet.forget_all().await?;
        }
        Command::Refresh(_) => {}
    }
    // PUBLISH counts this daemon's own subscription too.
    Ok(broadcast(fleet, cmd).await?.saturating_sub(1))
}

/// A connection of its own subscribed to the channel.
async fn connect(fleet: &Fleet, channel: &str) -> Result<redis::aio::PubSub, String> {
    let mut ps = fleet.client.pubsub().await?;
    match tokio::time::timeout(Duration::from_secs(2), ps.subscribe(channel)).await {
        Ok(Ok(())) => Ok(ps),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("SUBSCRIBE timed out".into()),
    }
}

/// Runs until `shutdown` turns true: subscribes to the channel (again after every lost
/// connection) and hands every command from another host to `apply`.
pub async fn listen(
    fleet: Arc<Fleet>,
    apply: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let channel = fleet.channel();
    let mut retry = FIRST_RETRY;
    let mut warned = false;
    loop {
        let connected = tokio::select! {
            c = connect(&fleet, &channel) => c,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match connected {
            Ok(mut ps) => {
                retry = FIRST_RETRY;
                if warned {
                    info!(channel, "fleet channel subscribed again");
                    warned = false;
                }
                let mut messages = ps.on_message();
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let Some(m) = next else {
                        break;
                    };
                    match decode(m.get_payload_bytes()) {
                        Ok((_, from)) if from == fleet.host() => {}
                        Ok((cmd, from)) => {
                            debug!(verb = cmd.verb(), from, "fleet command received");
                            if apply.send(cmd).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => fleet.client.garbage(&format!("channel message: {e}")),
                    }
                }
            }
            Err(e) => {
                if !warned {
                    warn!(
                        channel,
                        error = e,
                        "cannot subscribe to the fleet channel; retrying"
                    );
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for cmd in [
            Command::Evict("example.test".into()),
            Command::Refresh("example.test".into()),
            Command::Purge,
        ] {
            let m = encode(&cmd, "host-1");
            assert_eq!(decode(m.as_bytes()), Ok((cmd, "host-1".to_string())));
        }
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"op":"purge","from":"x"}"#,
            br#"{"v":1,"op":"evict","from":"x"}"#,
            br#"{"v":1,"op":"flushall","from":"x"}"#,
            &[b' '; 2000][..],
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

//! What one run against one target does: the checked `run` options, the keys, the protocol.
//!
//! Every knob has an upper bound, so that no typo makes an unbounded loop.

use std::path::Path;
use std::time::Duration;

use mta_sts_policyd::proto::Protocol;

use crate::cli::RunArgs;
use crate::net::{Target, parse_target};
use crate::wire::{Wire, wire};

const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_REQUESTS: u64 = 1_000_000_000;
const MAX_CONNECTIONS: usize = 10_000;
const MAX_PIPELINE: usize = 1_000;

pub enum Keys {
    /// d{i}.example, i in 0..n.
    Domains(u64),
    /// Pre-encoded requests.
    List(Vec<Vec<u8>>),
}

pub struct Plan {
    pub target: Target,
    pub proto: Protocol,
    /// The client side of `proto`.
    pub wire: &'static Wire,
    pub map: String,
    pub keys: Keys,
    pub connections: usize,
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub rate: Option<f64>,
    pub time_limit: Duration,
    pub seed: u64,
    pub server_pid: Option<u32>,
    pub threads: usize,
    pub keys_desc: String,
}

fn load_keys(path: &Path, wire: &Wire, map: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|k| {
            let mut v = Vec::with_capacity(k.len() + 16);
            (wire.encode_request)(map, k, &mut v);
            v
        })
        .collect();
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}

pub fn make_plan(a: &RunArgs, target: &str, domains: Option<u64>) -> Result<Plan, String> {
    let target = parse_target(target)?;
    let proto = a.protocol.0;
    let wire = wire(proto).ok_or_else(|| format!("loadgen cannot speak {proto}"))?;
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!(
            "--connections must be within 1..={MAX_CONNECTIONS}"
        ));
    }
    if a.pipeline == 0 || a.pipeline > MAX_PIPELINE {
        return Err(format!("--pipeline must be within 1..={MAX_PIPELINE}"));
    }
    let duration = match (a.duration, a.requests) {
        (Some(d), _) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    if duration.is_some_and(|d| d.is_zero() || d > MAX_DURATION) || a.warmup > MAX_DURATION {
        return Err(format!(
            "--duration must be within (0, {MAX_DURATION:?}], --warmup at most that"
        ));
    }
    if a.requests.is_some_and(|m| m == 0 || m > MAX_REQUESTS) {
        return Err(format!("--requests must be within 1..={MAX_REQUESTS}"));
    }
    if a.time_limit.is_zero() || a.time_limit > 2 * MAX_DURATION {
        return Err("--time-limit must be within (0, 2h]".into());
    }
    if let Some(r) = a.rate
        && (!r.is_finite() || r <= 0.0 || r > 10_000_000.0)
    {
        return Err("--rate must be within (0, 10000000] requests/s".into());
    }
    if a.map.is_empty() || a.map.contains(' ') {
        return Err("--map must be one word".into());
    }
    let (keys, keys_desc) = match (&a.keys, domains.or(a.domains)) {
        (Some(p), _) => {
            let k = load_keys(p, wire, &a.map)?;
            let d = format!("file:{} ({} keys)", p.display(), k.len());
            (Keys::List(k), d)
        }
        (None, n) => {
            let n = n.unwrap_or(10);
            if n == 0 {
                return Err("--domains must be at least 1".into());
            }
            (Keys::Domains(n), format!("domains:{n} (d{{i}}.example)"))
        }
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    Ok(Plan {
        target,
        proto,
        wire,
        map: a.map.clone(),
        keys,
        connections: a.connections,
        pipeline: a.pipeline,
        warmup: a.warmup,
        duration,
        requests: a.requests,
        rate: a.rate,
        time_limit: a.time_limit,
        seed: a.seed,
        server_pid: a.server_pid,
        threads,
        keys_desc,
    })
}

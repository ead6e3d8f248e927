//! `loadgen` without a subcommand: a short self-test against the built-in null responder, for
//! every protocol loadgen speaks (unpaced, pipelined and paced), each reply parsed and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use mta_sts_policyd::proto::Protocol;

use crate::cli::{fail, runtime};
use crate::load::run_once;
use crate::net::{Bound, Target};
use crate::null::serve_null;
use crate::plan::{Keys, Plan};
use crate::report::{check_expect, text_report};
use crate::wire::{Kind, offered, wire};

pub fn self_test() -> i32 {
    println!(
        "loadgen: no subcommand; self-test against the built-in null responder \
         (see `loadgen --help`)"
    );
    let rt = runtime(Some(2));
    let mut code = 0;
    for proto in offered() {
        if !rt.block_on(check_protocol(proto, 1000, true)) {
            code = 1;
        }
    }
    code
}

/// A null responder for `proto` on a free loopback port of the current runtime.
async fn start_null(proto: Protocol) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(serve_null(Bound::Tcp(l), proto));
    Ok(addr)
}

/// Runs `requests` lookups against a fresh null responder three ways; true when every one was
/// answered `found` without an error.
async fn check_protocol(proto: Protocol, requests: u64, print: bool) -> bool {
    let Some(wire) = wire(proto) else {
        fail(format!("loadgen cannot speak {proto}"));
        return false;
    };
    let addr = match start_null(proto).await {
        Ok(a) => a,
        Err(e) => {
            fail(format!("null responder for {proto}: {e}"));
            return false;
        }
    };
    let mut ok = true;
    for (rate, pipeline) in [(None, 1), (None, 4), (Some(2000.0), 1)] {
        let plan = Arc::new(Plan {
            target: Target::Tcp(addr),
            proto,
            wire,
            map: "postfix".into(),
            keys: Keys::Domains(10),
            connections: 4,
            pipeline,
            warmup: Duration::from_millis(100),
            duration: None,
            requests: Some(requests),
            rate,
            time_limit: Duration::from_secs(20),
            seed: 1,
            server_pid: None,
            threads: 2,
            keys_desc: "domains:10 (d{i}.example)".into(),
        });
        match run_once(plan.clone()).await {
            Ok(o) => {
                if print {
                    print!("{}", text_report("self-test", &plan, &o));
                }
                if !check_expect("self-test", Some(Kind::Found), &o) || o.requests() != requests {
                    ok = false;
                }
            }
            Err(e) => {
                fail(e);
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_protocol_gets_found_from_its_null_responder() {
        for proto in Protocol::all() {
            assert!(check_protocol(proto, 200, false).await, "{proto}");
        }
    }
}

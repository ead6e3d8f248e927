//! The null responder: the daemon's framing with a fixed answer and no cache, so that a run
//! against it measures the loopback and the load tool (the ceiling the daemon is compared with).
//!
//! It serves any protocol of the daemon's registry through the library's own codec
//! (`Protocol::codec()`), so a new protocol needs nothing here.

use std::io::Write as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use mta_sts_policyd::proto::{Protocol, Reply, Request};

use crate::cli::{NullArgs, fail, runtime};
use crate::net::{Bound, Conn, Target, bind, parse_target};

/// The null responder's answer (the shape of a real policy answer).
pub const NULL_ANSWER: &str = "secure match=mx.example servername=hostname";

pub fn cmd_null(a: NullArgs) -> i32 {
    let target = match parse_target(&a.listen) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let proto = a.protocol.0;
    let rt = runtime(a.threads);
    rt.block_on(async move {
        let (listener, shown) = match bind(&target).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {target}: {e}")),
        };
        println!(
            "loadgen null: listening on {shown} protocol={} answer={NULL_ANSWER:?} pid={}",
            proto.name(),
            std::process::id()
        );
        let _ = std::io::stdout().flush();
        let _ = tokio::time::timeout(a.max_time, serve_null(listener, proto)).await;
        if let Target::Unix(p) = &target {
            let _ = std::fs::remove_file(p);
        }
        0
    })
}

fn encoded(proto: Protocol, reply: &Reply) -> Bytes {
    let mut b = BytesMut::new();
    proto.codec().encode(reply, &mut b);
    b.freeze()
}

pub async fn serve_null(listener: Bound, proto: Protocol) {
    let found = encoded(proto, &Reply::Found(NULL_ANSWER.into()));
    let invalid = encoded(proto, &Reply::Perm("bad request".into()));
    loop {
        let conn = match &listener {
            Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Bound::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        };
        match conn {
            Ok(Conn::Tcp(s)) => {
                tokio::spawn(null_conn(s, proto, found.clone(), invalid.clone()));
            }
            Ok(Conn::Unix(s)) => {
                tokio::spawn(null_conn(s, proto, found.clone(), invalid.clone()));
            }
            Err(e) => {
                eprintln!("loadgen null: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Decodes with the daemon's own codec and answers every lookup with the fixed reply (and a
/// well-framed bad request with PERM): the same read / decode-all / write-all loop as the daemon,
/// without cache, timeouts or metrics. A framing error ends the connection.
async fn null_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    proto: Protocol,
    found: Bytes,
    invalid: Bytes,
) {
    let mut codec = proto.codec();
    let mut buf = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    loop {
        let mut fatal = false;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Request::Lookup { .. })) => out.extend_from_slice(&found),
                Ok(Some(Request::Invalid(_))) => out.extend_from_slice(&invalid),
                Ok(None) => break,
                Err(_) => {
                    fatal = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if fatal {
            return;
        }
        buf.reserve(4096);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

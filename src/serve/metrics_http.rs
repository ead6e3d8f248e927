//! The `/metrics` HTTP endpoint: a capped accept loop and one HTTP/1 exchange per connection on
//! hyper's server, answering `GET`/`HEAD /metrics` with the registry's text exposition.
//!
//! Limits, so that a scraper (or anyone who can reach the port) cannot hold resources: at most
//! [`MAX_SCRAPES`] connections at once (more wait in the kernel's accept queue), a request head
//! of at most [`MAX_REQUEST_HEAD`] bytes that must arrive within [`REQUEST_TIMEOUT`], and one
//! request per connection (`Connection: close`), so an idle client never holds a slot.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::metrics::{CONTENT_TYPE, GaugeFn, Metrics};
use crate::serve::listen::{self, Cap};

/// The request head (request line and headers, with the blank line) may be at most this long;
/// a longer one is answered 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this; a client that is slower is dropped without an
/// answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the response must finish within this once the head is in.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, how long and how much of the client's remaining input is read and
/// discarded, so that closing does not reset the connection before the client reads the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Scrapes served at once; more wait in the kernel's accept queue.
pub const MAX_SCRAPES: usize = 16;

/// hyper refuses a read buffer under 8 KiB; the head cap doubles as the buffer cap.
const _: () = assert!(MAX_REQUEST_HEAD >= 8 * 1024);

/// Serves `GET /metrics` (and `HEAD`) until `shutdown` turns true (or its sender is dropped), at
/// most [`MAX_SCRAPES`] connections at a time, each handled by [`connection`]. `gauges` is called
/// once per scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    gauges: Arc<GaugeFn>,
    shutdown: watch::Receiver<bool>,
) {
    let cap = Cap {
        name: "metrics",
        permits: Arc::new(Semaphore::new(MAX_SCRAPES)),
        limit: MAX_SCRAPES,
    };
    listen::serve(listener, cap, shutdown, move |stream| {
        let metrics = metrics.clone();
        let gauges = gauges.clone();
        async move { connection(stream, &metrics, &*gauges).await }
    })
    .await;
}

/// One accepted connection: one request, one answer, then close. 200 with the exposition, 404
/// for other paths, 405 (with `Allow`) for other methods; hyper answers 400 to a malformed
/// request and 431 to a head over [`MAX_REQUEST_HEAD`]. A client that does not send a complete
/// head within [`REQUEST_TIMEOUT`] is dropped without an answer.
pub async fn connection(mut stream: TcpStream, metrics: &Metrics, gauges: &GaugeFn) {
    // Set by the service when it answered 200 or 404 to a request without a body: then nothing
    // the client sent is left unread.
    let clean = AtomicBool::new(false);
    let service = service_fn(|req: Request<Incoming>| {
        let (response, ok) = respond(req.method(), req.uri().path(), metrics, gauges);
        clean.store(ok && req.body().is_end_stream(), Ordering::Relaxed);
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let exchange = builder()
        .serve_connection(TokioIo::new(&mut stream), service)
        .without_shutdown();
    // hyper bounds the head's arrival (`header_read_timeout`); this bounds the rest, the
    // writing of the answer to a client that does not read.
    let linger = match tokio::time::timeout(REQUEST_TIMEOUT + WRITE_TIMEOUT, exchange).await {
        Err(_) => {
            debug!("metrics: answer not written within the timeout; dropping the connection");
            return;
        }
        Ok(Err(e)) if e.is_timeout() => {
            debug!("metrics: no complete request within the timeout; dropping the connection");
            return;
        }
        // A malformed or oversized head (hyper has answered 400 or 431), or a broken connection.
        Ok(Err(e)) => {
            debug!(error = %e, "metrics: request failed");
            true
        }
        // Bytes after the head in hyper's buffer: the client may still be sending.
        Ok(Ok(parts)) => !clean.load(Ordering::Relaxed) || !parts.read_buf.is_empty(),
    };
    let closed = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
    if !matches!(closed, Ok(Ok(()))) || !linger {
        return;
    }
    // Unread input at close would make the kernel send a reset, which may destroy the response
    // before the client reads it.
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The HTTP/1 server settings that enforce this endpoint's limits.
fn builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // From the first poll, not from the first byte: a silent client times out too.
        .header_read_timeout(REQUEST_TIMEOUT)
        // Exact: a complete head longer than this, or this many bytes without the end of the
        // head, is answered 431.
        .max_header_size(MAX_REQUEST_HEAD)
        // hyper reads no more than this before the head is complete, so memory per connection
        // stays bounded whatever the client sends.
        .max_buf_size(MAX_REQUEST_HEAD)
        // One request per connection: hyper adds `Connection: close` and closes after the answer.
        .keep_alive(false)
        .title_case_headers(true);
    b
}

/// The answer to one request, and whether it is a success (200 or 404) after which closing needs
/// no draining.
fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    gauges: &GaugeFn,
) -> (Response<Full<Bytes>>, bool) {
    if path != "/metrics" {
        return (plain(StatusCode::NOT_FOUND, "not found\n"), true);
    }
    let head_only = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (r, false);
        }
    };
    let body = metrics.render(&gauges());
    let len = body.len();
    let mut r = response(
        StatusCode::OK,
        CONTENT_TYPE,
        if head_only { Bytes::new() } else { body.into() },
    );
    // A HEAD answer announces the length the GET body would have (RFC 9110 §9.3.2).
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    (r, true)
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Also to HTTP/1.0 clients, to whom hyper does not add it.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauges;
    use http_body_util::BodyExt as _;

    async fn body_text(r: Response<Full<Bytes>>) -> String {
        let bytes = r.into_body().collect().await.expect("full body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn header(r: &Response<Full<Bytes>>, name: header::HeaderName) -> Option<&str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn routing_by_path_then_method() {
        let m = Metrics::new();
        let g: Arc<GaugeFn> = Arc::new(Gauges::default);

        let (ok, clean) = respond(&Method::GET, "/metrics", &m, &*g);
        assert!(clean);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(header(&ok, header::CONTENT_TYPE), Some(CONTENT_TYPE));
        assert_eq!(header(&ok, header::CONNECTION), Some("close"));
        let len = header(&ok, header::CONTENT_LENGTH).map(str::to_owned);
        let body = body_text(ok).await;
        assert!(body.contains("mta_sts_connections 0\n"));
        assert_eq!(len, Some(body.len().to_string()));

        let (head, clean) = respond(&Method::HEAD, "/metrics", &m, &*g);
        assert!(clean);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            header(&head, header::CONTENT_LENGTH),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(body_text(head).await, "", "HEAD has no body");

        for path in ["/", "/metricsx", "/metrics/"] {
            let (r, clean) = respond(&Method::GET, path, &m, &*g);
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(clean);
        }
        // An unknown path is 404 whatever the method.
        let (r, _) = respond(&Method::POST, "/", &m, &*g);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        let (post, clean) = respond(&Method::POST, "/metrics", &m, &*g);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&post, header::ALLOW), Some("GET, HEAD"));
        assert!(!clean, "a refused request may still be sending");
    }

    /// Serves one connection with [`connection`] and returns the raw answer to `request`.
    async fn exchange(request: &[u8]) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let g: Arc<GaugeFn> = Arc::new(Gauges::default);
            connection(stream, &Metrics::new(), &*g).await;
        });
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("server closes")
            .expect("read");
        // Closing ends the server's lingering read at once.
        drop(s);
        server.await.expect("server task");
        out
    }

    async fn exchange_str(request: &[u8]) -> String {
        String::from_utf8(exchange(request).await).expect("utf-8")
    }

    #[tokio::test]
    async fn wire_format_of_a_scrape() {
        let ok = exchange_str(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("\r\nConnection: close\r\n"));
        assert!(ok.ends_with("mta_sts_dane_entries{verdict=\"nxdomain\"} 0\n"));
        // Bare line feeds and a query string are accepted (RFC 9112 §2.2).
        let q = exchange_str(b"GET /metrics?x=1 HTTP/1.0\n\n").await;
        assert!(q.starts_with("HTTP/1.0 200 OK\r\n"), "{q}");
        assert!(q.contains("\r\nConnection: close\r\n"));
        let head = exchange_str(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");
        let post = exchange_str(b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[tokio::test]
    async fn malformed_request_lines_get_400() {
        for req in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            // hyper parses HTTP/1.x only, so another version is a malformed request to it.
            b"GET /metrics HTTP/2.0\r\n\r\n",
        ] {
            let r = exchange_str(req).await;
            assert!(r.starts_with("HTTP/1.1 400 "), "{req:?}: {r}");
            assert!(r.contains("\r\nConnection: close\r\n"), "{req:?}: {r}");
        }
    }

    #[tokio::test]
    async fn head_over_the_cap_gets_431_and_at_the_cap_is_served() {
        let prefix = b"GET /metrics HTTP/1.1\r\nX-Pad: ";
        let at_cap = |len: usize| {
            let mut req = prefix.to_vec();
            req.extend(std::iter::repeat_n(b'a', len - prefix.len() - 4));
            req.extend_from_slice(b"\r\n\r\n");
            assert_eq!(req.len(), len);
            req
        };
        let r = exchange_str(&at_cap(MAX_REQUEST_HEAD)).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let r = exchange_str(&at_cap(MAX_REQUEST_HEAD + 1)).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }
}

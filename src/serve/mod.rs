//! Serving: the sockets the daemon answers on.
//!
//! Owns the Postfix lookup server (`postfix.rs`: socketmap and tcp_table connections, the
//! per-connection limits and the mapping from a resolution to a reply; `idle.rs`: closing the
//! longest-idle Postfix connection at the connection cap), the control server
//! (`control.rs`: the `ctl` verbs on their own Unix socket; `control_dane.rs`: how they show
//! DANE states; `ctl_client.rs`: the client side of that socket, which `control.rs` uses for the
//! shared wire rules) and the `/metrics` HTTP endpoint
//! (`metrics_http.rs`, on hyper's HTTP/1 server).
//!
//! May import: `resolve`, `cache`, `answer`, `proto`, `config`, `key`, `policy`, `dane`, `service`,
//! `metrics`, `clock`. Never the daemon's wiring or the command line.

pub mod control;
pub mod control_dane;
pub mod ctl_client;
pub mod idle;
pub mod listen;
pub mod metrics_http;
pub mod postfix;

//! Outcomes of runs and their reports: the text lines `benches/perf.sh` parses (`throughput:`,
//! `latency_us:`, `latency_from_schedule_us:`, `cpu: client=...`, `== ratio ...`) and the JSON
//! object of `--json`. Field names and formats are an interface: change them with perf.sh.

use std::fmt::Write as _;
use std::time::Duration;

use crate::latency::Latency;
use crate::plan::Plan;
use crate::wire::{KINDS, Kind};

#[derive(Clone, Copy, Default)]
pub struct Errors {
    pub connect: u64,
    pub short_read: u64,
    pub bad_frame: u64,
    pub io: u64,
    pub timeout: u64,
    /// Requests in flight on a connection that broke (never answered).
    pub lost: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.short_read + self.bad_frame + self.io + self.timeout
    }

    pub fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.short_read += o.short_read;
        self.bad_frame += o.bad_frame;
        self.io += o.io;
        self.timeout += o.timeout;
        self.lost += o.lost;
    }
}

/// utime + stime of a process in clock ticks (USER_HZ, 100 on Linux).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is f[0]: utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The result of one or more runs against one target.
#[derive(Clone)]
pub struct Outcome {
    pub hist: Latency,
    pub sched: Latency,
    pub kinds: [u64; 5],
    pub errors: Errors,
    pub measured: Duration,
    pub client_ticks: u64,
    pub server_ticks: Option<u64>,
    pub wall: Duration,
    pub incomplete: bool,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.kinds.iter().sum()
    }

    pub fn rps(&self) -> f64 {
        let s = self.measured.as_secs_f64();
        if s > 0.0 {
            self.requests() as f64 / s
        } else {
            0.0
        }
    }

    pub fn merge(&mut self, o: &Outcome) {
        self.hist.merge(&o.hist);
        self.sched.merge(&o.sched);
        for (a, b) in self.kinds.iter_mut().zip(o.kinds) {
            *a += b;
        }
        self.errors.merge(&o.errors);
        self.measured += o.measured;
        self.client_ticks += o.client_ticks;
        self.server_ticks = match (self.server_ticks, o.server_ticks) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.wall += o.wall;
        self.incomplete |= o.incomplete;
        self.loadavg_end = o.loadavg_end.clone();
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn cpu_pct(ticks: u64, wall: Duration) -> f64 {
    let w = wall.as_secs_f64();
    if w > 0.0 {
        ticks as f64 / 100.0 / w * 100.0
    } else {
        0.0
    }
}

/// CPU microseconds per measured request (ticks are 10 ms: meaningful over seconds only).
fn per_req(ticks: u64, o: &Outcome) -> f64 {
    let n = o.requests();
    if n == 0 {
        0.0
    } else {
        ticks as f64 * 1e4 / n as f64
    }
}

fn lat_line(h: &Latency) -> String {
    format!(
        "p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1} mean={:.1}",
        us(h.quantile_ns(0.50)),
        us(h.quantile_ns(0.90)),
        us(h.quantile_ns(0.99)),
        us(h.quantile_ns(0.999)),
        us(h.max_ns()),
        h.mean_ns() / 1e3
    )
}

fn lat_json(h: &Latency) -> serde_json::Value {
    serde_json::json!({
        "p50": us(h.quantile_ns(0.50)),
        "p90": us(h.quantile_ns(0.90)),
        "p99": us(h.quantile_ns(0.99)),
        "p99_9": us(h.quantile_ns(0.999)),
        "max": us(h.max_ns()),
        "mean": h.mean_ns() / 1e3,
    })
}

fn rate_desc(plan: &Plan) -> String {
    match plan.rate {
        Some(r) => format!("{r:.0}/s open-loop per-connection slots"),
        None => "unpaced (closed loop)".into(),
    }
}

pub fn text_report(label: &str, plan: &Plan, o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {label}: target={} protocol={} connections={} pipeline={} threads={} keys={} rate={}",
        plan.target,
        plan.proto.name(),
        plan.connections,
        plan.pipeline,
        plan.threads,
        plan.keys_desc,
        rate_desc(plan)
    );
    let _ = writeln!(
        s,
        "   measured: {:.3} s (after {:?} warm-up){}",
        o.measured.as_secs_f64(),
        plan.warmup,
        if o.incomplete {
            "  INCOMPLETE (time limit)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "   throughput: {:.1} req/s ({} requests)",
        o.rps(),
        o.requests()
    );
    let _ = writeln!(s, "   latency_us: {}", lat_line(&o.hist));
    if plan.rate.is_some() {
        let _ = writeln!(s, "   latency_from_schedule_us: {}", lat_line(&o.sched));
    }
    let _ = writeln!(
        s,
        "   replies: found={} notfound={} temp={} perm={} other={}",
        o.kinds[0], o.kinds[1], o.kinds[2], o.kinds[3], o.kinds[4]
    );
    let e = &o.errors;
    let _ = writeln!(
        s,
        "   errors: connect={} short_read={} bad_frame={} io={} timeout={} lost={}",
        e.connect, e.short_read, e.bad_frame, e.io, e.timeout, e.lost
    );
    let server = match o.server_ticks {
        Some(t) => format!("{:.0}% ({:.1} us/req)", cpu_pct(t, o.wall), per_req(t, o)),
        None => "n/a".into(),
    };
    let _ = writeln!(
        s,
        "   cpu: client={:.0}% ({:.1} us/req) server={} (100% = one core, over the measured window)  loadavg: {} -> {}",
        cpu_pct(o.client_ticks, o.wall),
        per_req(o.client_ticks, o),
        server,
        o.loadavg_start,
        o.loadavg_end
    );
    s
}

pub fn json_report(label: &str, plan: &Plan, o: &Outcome) -> serde_json::Value {
    let e = &o.errors;
    serde_json::json!({
        "label": label,
        "target": plan.target.to_string(),
        "protocol": plan.proto.name(),
        "connections": plan.connections,
        "pipeline": plan.pipeline,
        "threads": plan.threads,
        "keys": plan.keys_desc,
        "rate": plan.rate,
        "warmup_s": plan.warmup.as_secs_f64(),
        "measured_s": o.measured.as_secs_f64(),
        "incomplete": o.incomplete,
        "requests": o.requests(),
        "rps": o.rps(),
        "latency_us": lat_json(&o.hist),
        "latency_from_schedule_us": plan.rate.map(|_| lat_json(&o.sched)),
        "replies": {
            "found": o.kinds[0], "notfound": o.kinds[1], "temp": o.kinds[2],
            "perm": o.kinds[3], "other": o.kinds[4],
        },
        "errors": {
            "connect": e.connect, "short_read": e.short_read, "bad_frame": e.bad_frame,
            "io": e.io, "timeout": e.timeout, "lost": e.lost,
        },
        "cpu_client_pct": cpu_pct(o.client_ticks, o.wall),
        "cpu_server_pct": o.server_ticks.map(|t| cpu_pct(t, o.wall)),
        "cpu_client_us_per_req": per_req(o.client_ticks, o),
        "cpu_server_us_per_req": o.server_ticks.map(|t| per_req(t, o)),
        "loadavg_start": o.loadavg_start,
        "loadavg_end": o.loadavg_end,
    })
}

/// Whether the outcome meets `--expect`; prints why not.
pub fn check_expect(label: &str, expect: Option<Kind>, o: &Outcome) -> bool {
    let Some(k) = expect else {
        return true;
    };
    let wrong: u64 = KINDS
        .iter()
        .filter(|&&x| x != k)
        .map(|&x| o.kinds[x as usize])
        .sum();
    if wrong > 0 || o.errors.total() > 0 || o.requests() == 0 || o.incomplete {
        eprintln!(
            "loadgen: {label}: expected only {} replies: {wrong} others, {} errors, {} requests{}",
            k.name(),
            o.errors.total(),
            o.requests(),
            if o.incomplete { ", incomplete" } else { "" }
        );
        return false;
    }
    true
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

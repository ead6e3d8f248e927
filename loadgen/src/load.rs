//! The load itself: N connections driven like Postfix smtp(8) processes, the pacer, and one run
//! from connecting to the merged outcome.
//!
//! Pacing (`--rate R`): open loop on a fixed global schedule of R requests/s. Slot i is due at
//! `start + i/R` and belongs to connection `i mod N`, so each connection is paced at R/N with
//! staggered phases. A pacer thread (std sleep, waking every 100 µs at most, ~150 µs late at
//! worst; tokio's timer has 1 ms ticks, which would send in bursts) releases the slots; a
//! connection whose reply is still outstanding sends its due request as soon as the window has
//! room. Latency is reported from the actual send and, corrected for coordinated omission, from
//! the scheduled time (which includes the pacer's lateness).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::latency::Latency;
use crate::net::{Conn, connect};
use crate::plan::{Keys, Plan};
use crate::report::{Errors, Outcome, cpu_ticks, loadavg};

/// A reply not complete within this is an error (the connection is then re-opened).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The pacer's shortest sleep: slots due within it are released together.
const PACER_TICK: Duration = Duration::from_micros(100);

/// What all connections of one run share.
struct Shared {
    plan: Arc<Plan>,
    /// When the schedule (and the warm-up) starts.
    t0: Instant,
    measure_start: Instant,
    /// Duration mode: nothing is sent at or after this.
    measure_end: Option<Instant>,
    /// Everything stops here, drained or not.
    hard_end: Instant,
    /// --requests: measured requests still to send.
    budget: Option<AtomicU64>,
    /// --rate: one semaphore per connection, fed by the pacer thread.
    permits: Vec<Arc<Semaphore>>,
    /// Seconds between two slots of the global schedule (1 / rate).
    slot_period: f64,
    /// The pacer's last slot number + 1, valid once `pacer_done` is set.
    pacer_slots: AtomicU64,
    /// Set when the pacer has released its last slot; it then adds one extra permit to every
    /// semaphore (a wake-up that is not a slot), so nobody waits for ever.
    pacer_done: AtomicBool,
}

impl Shared {
    /// May a request with this (scheduled or actual) send time go out?
    fn may_send(&self, at: Instant) -> bool {
        if let Some(end) = self.measure_end
            && at >= end
        {
            return false;
        }
        if let Some(b) = &self.budget
            && at >= self.measure_start
        {
            return b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok();
        }
        true
    }

    /// Whether connection `c` has a slot number `k` in the pacer's final schedule (slot i of the
    /// global schedule belongs to connection i mod N).
    fn has_slot(&self, c: usize, k: u64) -> bool {
        let n = self.permits.len() as u64;
        let total = self.pacer_slots.load(Ordering::Acquire);
        c as u64 + k * n < total
    }

    fn sending_over(&self, now: Instant) -> bool {
        if self.measure_end.is_some_and(|e| now >= e) {
            return true;
        }
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) == 0)
    }
}

struct ConnState {
    index: usize,
    rng: u64,
    hist: Latency,
    /// Paced runs: from the scheduled send time (coordinated omission corrected).
    sched: Latency,
    kinds: [u64; 5],
    errors: Errors,
    last_done: Option<Instant>,
    /// Slots this connection was given (paced runs).
    slots_taken: u64,
    done_sending: bool,
    incomplete: bool,
    scratch: Vec<u8>,
}

impl ConnState {
    fn next_rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_rand()) * u128::from(n)) >> 64) as u64
    }
}

fn push_one(sh: &Shared, st: &mut ConnState, out: &mut Vec<u8>) {
    let plan = &sh.plan;
    match &plan.keys {
        Keys::Domains(n) => {
            let i = st.below(*n);
            let mut key = std::mem::take(&mut st.scratch);
            key.clear();
            let _ = std::io::Write::write_fmt(&mut key, format_args!("d{i}.example"));
            (plan.wire.encode_request)(&plan.map, &key, out);
            st.scratch = key;
        }
        Keys::List(list) => {
            let i = st.below(list.len() as u64) as usize;
            out.extend_from_slice(&list[i]);
        }
    }
}

enum End {
    Done,
    Broken,
}

/// One connection's life: open (again after an error), drive requests until the plan is done.
async fn drive(sh: Arc<Shared>, mut st: ConnState, first: Option<Conn>) -> ConnState {
    // Everyone starts together, at t0 (the warm-up, if any, begins there).
    tokio::time::sleep_until(tokio::time::Instant::from_std(sh.t0)).await;
    let mut conn = first;
    loop {
        if Instant::now() >= sh.hard_end {
            st.incomplete = !st.done_sending;
            return st;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(&sh.plan.target).await {
                Ok(c) => c,
                Err(_) => {
                    st.errors.connect += 1;
                    if st.done_sending || sh.sending_over(Instant::now()) {
                        return st;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let end = match c {
            Conn::Tcp(s) => session(s, &sh, &mut st).await,
            Conn::Unix(s) => session(s, &sh, &mut st).await,
        };
        match end {
            End::Done => return st,
            End::Broken => {
                if st.done_sending || sh.sending_over(Instant::now()) {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    sh: &Shared,
    st: &mut ConnState,
) -> End {
    let plan = &sh.plan;
    let paced = plan.rate.is_some();
    let permits = sh.permits.get(st.index).cloned();
    // (scheduled time, actual send time, measured?)
    let mut inflight: VecDeque<(Instant, Instant, bool)> = VecDeque::with_capacity(plan.pipeline);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut wbuf: Vec<u8> = Vec::with_capacity(256);
    loop {
        let now = Instant::now();
        if now >= sh.hard_end {
            st.errors.lost += inflight.len() as u64;
            st.incomplete = true;
            return End::Done;
        }
        // Fill the window.
        while !st.done_sending && inflight.len() < plan.pipeline {
            let sched = if let Some(p) = &permits {
                match p.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                if sh.pacer_done.load(Ordering::Acquire) && !sh.has_slot(st.index, st.slots_taken) {
                    // The pacer's final wake-up, not a slot.
                    st.done_sending = true;
                    break;
                }
                let k = st.slots_taken;
                st.slots_taken += 1;
                let slot = (st.index as u64 + k * plan.connections as u64) as f64;
                sh.t0 + Duration::from_secs_f64(slot * sh.slot_period)
            } else {
                now
            };
            if !sh.may_send(sched) {
                st.done_sending = true;
                break;
            }
            push_one(sh, st, &mut wbuf);
            inflight.push_back((sched, now, sched >= sh.measure_start));
        }
        if !wbuf.is_empty() {
            match tokio::time::timeout(REPLY_TIMEOUT, s.write_all(&wbuf)).await {
                Ok(Ok(())) => wbuf.clear(),
                Ok(Err(_)) => {
                    st.errors.io += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
                Err(_) => {
                    st.errors.timeout += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
            }
        }
        if inflight.is_empty() {
            if st.done_sending || sh.sending_over(Instant::now()) {
                st.done_sending = true;
                let _ = s.shutdown().await;
                return End::Done;
            }
            match &permits {
                // Wait for the next slot (or the end of the run).
                // Wait for the next slot (or the pacer's final wake-up). The permit goes back:
                // the fill loop above takes it with its slot number.
                Some(p) => {
                    drop(p.acquire().await);
                    continue;
                }
                None => {
                    st.done_sending = true;
                    return End::Done;
                }
            }
        }
        // Wait for replies; in a paced run with room in the window, also for the next slot.
        let read = if let Some(p) = permits
            .as_ref()
            .filter(|_| paced && !st.done_sending && inflight.len() < plan.pipeline)
        {
            tokio::select! {
                r = tokio::time::timeout(REPLY_TIMEOUT, s.read_buf(&mut rbuf)) => Some(r),
                r = p.acquire() => {
                    drop(r);
                    None
                }
            }
        } else {
            Some(tokio::time::timeout(REPLY_TIMEOUT, s.read_buf(&mut rbuf)).await)
        };
        match read {
            None => continue,
            Some(Ok(Ok(0))) => {
                st.errors.short_read += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(_))) => {
                st.errors.io += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
            Some(Err(_)) => {
                st.errors.timeout += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
        }
        let done = Instant::now();
        loop {
            match (plan.wire.parse_reply)(&mut rbuf) {
                Ok(Some(kind)) => {
                    let Some((sched, sent, measured)) = inflight.pop_front() else {
                        // A reply nobody asked for.
                        st.errors.bad_frame += 1;
                        return End::Broken;
                    };
                    if measured {
                        st.hist.record(done - sent);
                        if paced {
                            st.sched.record(done.saturating_duration_since(sched));
                        }
                        st.kinds[kind as usize] += 1;
                        st.last_done = Some(done);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    st.errors.bad_frame += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
            }
        }
    }
}

/// Releases the slots of the global schedule to their connections, waking every 100 µs at most
/// (a thread wake-up per slot would cost the load tool more than the requests do); then marks
/// the end and wakes every connection once.
fn pacer(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let slots = pace(&sh, &stop);
    sh.pacer_slots.store(slots, Ordering::Release);
    sh.pacer_done.store(true, Ordering::Release);
    for p in &sh.permits {
        p.add_permits(1);
    }
}

/// Returns the number of slots released.
fn pace(sh: &Shared, stop: &AtomicBool) -> u64 {
    let n = sh.permits.len() as u64;
    let period = sh.slot_period;
    let mut k: u64 = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return k;
        }
        let now = Instant::now();
        if now >= sh.hard_end || sh.sending_over(now) {
            return k;
        }
        let elapsed = now.saturating_duration_since(sh.t0).as_secs_f64();
        let due = if now < sh.t0 {
            0
        } else {
            (elapsed / period).floor() as u64 + 1
        };
        while k < due {
            sh.permits[(k % n) as usize].add_permits(1);
            k += 1;
        }
        let next = sh.t0 + Duration::from_secs_f64(k as f64 * period);
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(PACER_TICK, Duration::from_millis(5));
        std::thread::sleep(wait);
    }
}

pub async fn run_once(plan: Arc<Plan>) -> Result<Outcome, String> {
    // Open every connection first, so that connecting is not measured.
    let mut firsts = Vec::with_capacity(plan.connections);
    let mut connect_errors = 0u64;
    for chunk in (0..plan.connections).collect::<Vec<_>>().chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let t = plan.target.clone();
            set.spawn(async move { (i, connect(&t).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, c) = r.map_err(|e| e.to_string())?;
            firsts.push((i, c));
        }
    }
    firsts.sort_by_key(|(i, _)| *i);
    let mut conns = Vec::with_capacity(plan.connections);
    let mut first_error = None;
    for (_, c) in firsts {
        match c {
            Ok(c) => conns.push(Some(c)),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(e);
                conns.push(None);
            }
        }
    }
    if connect_errors as usize == plan.connections {
        return Err(format!(
            "cannot connect to {}: {}",
            plan.target,
            first_error.map(|e| e.to_string()).unwrap_or_default()
        ));
    }

    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_start = t0 + plan.warmup;
    let measure_end = plan.duration.map(|d| measure_start + d);
    let hard_end = t0 + plan.time_limit;
    let permits = if plan.rate.is_some() {
        (0..plan.connections)
            .map(|_| Arc::new(Semaphore::new(0)))
            .collect()
    } else {
        Vec::new()
    };
    let sh = Arc::new(Shared {
        pacer_slots: AtomicU64::new(0),
        pacer_done: AtomicBool::new(false),
        t0,
        measure_start,
        measure_end,
        hard_end,
        budget: plan.requests.map(AtomicU64::new),
        permits,
        slot_period: plan.rate.map_or(0.0, |r| 1.0 / r),
        plan: plan.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let pacer_thread = if plan.rate.is_some() {
        let (sh, stop) = (sh.clone(), stop.clone());
        Some(
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pacer(sh, stop))
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };

    let loadavg_start = loadavg();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        let st = ConnState {
            index: i,
            rng: plan
                .seed
                .wrapping_mul(0x2545_F491_4F6C_DD1D)
                .wrapping_add(i as u64),
            hist: Latency::new(),
            sched: Latency::new(),
            kinds: [0; 5],
            errors: Errors::default(),
            last_done: None,
            slots_taken: 0,
            done_sending: false,
            incomplete: false,
            scratch: Vec::with_capacity(32),
        };
        tasks.spawn(drive(sh.clone(), st, c));
    }

    // CPU use over the measured window.
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
    let me = std::process::id().to_string();
    let server = plan.server_pid.map(|p| p.to_string());
    let c0 = cpu_ticks(&me).unwrap_or(0);
    let s0 = server.as_deref().and_then(cpu_ticks);
    let w0 = Instant::now();

    let mut hist = Latency::new();
    let mut sched = Latency::new();
    let mut kinds = [0u64; 5];
    let mut errors = Errors {
        connect: connect_errors,
        ..Errors::default()
    };
    let mut last_done = measure_start;
    let mut incomplete = false;
    while let Some(r) = tasks.join_next().await {
        let st = r.map_err(|e| e.to_string())?;
        hist.merge(&st.hist);
        sched.merge(&st.sched);
        for (a, b) in kinds.iter_mut().zip(st.kinds) {
            *a += b;
        }
        errors.merge(&st.errors);
        if let Some(d) = st.last_done {
            last_done = last_done.max(d);
        }
        incomplete |= st.incomplete;
    }
    let wall = w0.elapsed();
    let c1 = cpu_ticks(&me).unwrap_or(0);
    let s1 = server.as_deref().and_then(cpu_ticks);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = pacer_thread {
        let _ = t.join();
    }
    if plan.requests.is_some()
        && sh
            .budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) > 0)
    {
        incomplete = true;
    }
    Ok(Outcome {
        hist,
        sched,
        kinds,
        errors,
        measured: last_done.saturating_duration_since(measure_start),
        client_ticks: c1.saturating_sub(c0),
        server_ticks: match (s0, s1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        wall,
        incomplete,
        loadavg_start,
        loadavg_end: loadavg(),
    })
}

//! Room for a new Postfix client at `limits.max_connections`: the registry of open Postfix
//! connections with the moment each last went idle, and the accept loop that, at the cap,
//! closes the longest-idle connection to admit the new client.
//!
//! Postfix opens one connection per smtp(8) process and keeps it open between lookups; when it
//! finds the connection closed, its next lookup reconnects (socketmap_table(5), tcp_table(5)).
//! The plain cap of `listen::serve` would let a burst of leaked or hostile idle connections lock
//! the real clients out: new clients would wait in the accept queue until someone leaves. Here
//! the new client is accepted at once and the connection that has waited longest for its next
//! request is closed instead. A connection with a request in flight (its first byte read, its
//! reply not yet written) is never closed this way; when every connection is busy, the new
//! client waits until a permit is freed or a connection turns idle.
//!
//! Costs: a connection turns idle and busy again with one clock read and two atomic
//! compare-and-swaps per request; the registry's lock is taken at connect, at close and per
//! eviction. Finding the longest-idle connection scans the registry once per [`CANDIDATES`]
//! evictions.
//!
//! May import `listen` (not the reverse).

use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, TryAcquireError, oneshot, watch};
use tracing::{debug, warn};

use crate::serve::listen::{self, Accept, AcceptFailures, Cap, OwnedPath};

/// How many of the longest-idle connections one scan of the registry remembers: the next
/// evictions take them in order without scanning again.
pub const CANDIDATES: usize = 64;

/// How long the accept loop waits for the connection it chose to close before it chooses another
/// (the chosen one received a request just as it was chosen, and answers it first), and how
/// often it looks again for an idle connection when every one is busy.
const EVICT_PATIENCE: Duration = Duration::from_millis(50);

// A connection's state word: the nanoseconds since the registry's epoch at which it last turned
// idle, shifted left by two, and one of these states in the low two bits. Keeping both in one
// word lets the eviction check "still idle since that moment" and claim the connection in one
// compare-and-swap.
const IDLE: u64 = 0;
const BUSY: u64 = 1;
const EVICTED: u64 = 2;
const CLOSED: u64 = 3;
const STATE: u64 = 0b11;

/// The permit of an evicted connection, on its way to the accept loop that evicted it.
type Handoff = oneshot::Sender<OwnedSemaphorePermit>;

struct Entry {
    word: AtomicU64,
    /// Tells the connection it was chosen (after its state turned EVICTED).
    wake: Notify,
    /// Set with the EVICTED state: where the connection's permit goes once its socket is closed.
    handoff: Mutex<Option<Handoff>>,
}

impl Entry {
    fn handoff(&self) -> MutexGuard<'_, Option<Handoff>> {
        self.handoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// IDLE → BUSY; any other state stays.
    fn busy(&self) {
        let w = self.word.load(Ordering::Acquire);
        if w & STATE == IDLE {
            // Failing means the eviction claimed it meanwhile: it closes after this request.
            let _ = self.word.compare_exchange(
                w,
                (w & !STATE) | BUSY,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

struct Table {
    /// Indexed by [`Slot`] number; a closed connection's place is reused. A vector rather than a
    /// map: the scan for the longest idle walks it.
    open: Vec<Option<Arc<Entry>>>,
    /// Places free in `open`.
    free: Vec<usize>,
    /// Connections registered now.
    len: usize,
    /// The longest-idle connections at the last scan with their state words then, the oldest
    /// last. Every connection not listed had turned idle later (or was busy, and restamps when it
    /// turns idle again), so the first listed one whose word is unchanged is the longest idle.
    candidates: Vec<(u64, Arc<Entry>)>,
}

struct Inner {
    epoch: std::time::Instant,
    table: Mutex<Table>,
}

/// The open Postfix connections of every Postfix listener (they share one cap).
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry(Arc::new(Inner {
            epoch: std::time::Instant::now(),
            table: Mutex::new(Table {
                open: Vec::new(),
                free: Vec::new(),
                len: 0,
                candidates: Vec::new(),
            }),
        }))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.0.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current moment as a state word's time part.
    fn stamp(&self) -> u64 {
        let ns = u64::try_from(self.0.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        ns.min(u64::MAX >> 2) << 2
    }

    /// Registers a connection that holds `permit`; it counts as busy until it first waits for a
    /// request ([`Slot::evicted`]).
    pub fn register(&self, permit: OwnedSemaphorePermit) -> Slot {
        let entry = Arc::new(Entry {
            word: AtomicU64::new(self.stamp() | BUSY),
            wake: Notify::new(),
            handoff: Mutex::new(None),
        });
        let mut t = self.table();
        let id = match t.free.pop() {
            Some(i) => i,
            None => {
                t.open.push(None);
                t.open.len() - 1
            }
        };
        t.open[id] = Some(entry.clone());
        t.len += 1;
        drop(t);
        Slot {
            id,
            entry,
            registry: self.clone(),
            permit: Some(permit),
        }
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.table().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chooses the longest-idle connection and tells it to close. Its permit arrives on the
    /// receiver once its socket is closed. None: no connection is idle.
    pub fn evict_longest_idle(&self) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        let mut t = self.table();
        for scanned in [false, true] {
            if scanned {
                rescan(&mut t);
            }
            while let Some((word, entry)) = t.candidates.pop() {
                let mut handoff = entry.handoff();
                let claimed = entry
                    .word
                    .compare_exchange(
                        word,
                        (word & !STATE) | EVICTED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if claimed {
                    let (tx, rx) = oneshot::channel();
                    *handoff = Some(tx);
                    drop(handoff);
                    entry.wake.notify_one();
                    return Some(rx);
                }
            }
        }
        None
    }
}

/// Refills the candidates: the [`CANDIDATES`] idle connections that turned idle first.
fn rescan(t: &mut Table) {
    // A max-heap bounded to CANDIDATES keeps the smallest words.
    let mut oldest: BinaryHeap<(u64, usize)> = BinaryHeap::with_capacity(CANDIDATES);
    for (id, e) in t.open.iter().enumerate() {
        let Some(e) = e else { continue };
        let w = e.word.load(Ordering::Acquire);
        if w & STATE != IDLE {
            continue;
        }
        if oldest.len() < CANDIDATES {
            oldest.push((w, id));
        } else if let Some(mut newest) = oldest.peek_mut()
            && (w, id) < *newest
        {
            *newest = (w, id);
        }
    }
    let mut candidates: Vec<(u64, Arc<Entry>)> = oldest
        .into_sorted_vec()
        .into_iter()
        .filter_map(|(w, id)| Some((w, t.open.get(id)?.as_ref()?.clone())))
        .collect();
    candidates.reverse();
    t.candidates = candidates;
}

/// One open connection's place in the [`Registry`]. Holds the connection's permit; dropping it
/// (after the socket is closed) releases the permit, or hands it to the accept loop that
/// evicted this connection.
pub struct Slot {
    id: usize,
    entry: Arc<Entry>,
    registry: Registry,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Resolves when the accept loop chose this connection to make room for a new client. Only
    /// an `idle` connection (no request started, every reply written) can be chosen: it counts
    /// as idle from the first poll of this future until the future is dropped, and its idle time
    /// starts at that first poll. Meant as one arm of the connection's read `select!`.
    pub async fn evicted(&self, idle: bool) {
        if !idle {
            return std::future::pending().await;
        }
        // Busy again as soon as the read (or anything else) wins the select.
        let _busy_again = BusyOnDrop(&self.entry);
        let stamp = self.registry.stamp();
        let mut w = self.entry.word.load(Ordering::Acquire);
        loop {
            if w & STATE == EVICTED {
                // Chosen while a request was being answered: close now that it is answered.
                return;
            }
            match self.entry.word.compare_exchange_weak(
                w,
                stamp | IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        self.entry.wake.notified().await;
    }
}

struct BusyOnDrop<'a>(&'a Entry);

impl Drop for BusyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.busy();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.registry.table();
        if let Some(place) = t.open.get_mut(self.id)
            && place.take().is_some()
        {
            t.free.push(self.id);
            t.len -= 1;
        }
        drop(t);
        let handoff = {
            let mut h = self.entry.handoff();
            self.entry.word.fetch_or(CLOSED, Ordering::AcqRel);
            h.take()
        };
        if let (Some(tx), Some(permit)) = (handoff, self.permit.take()) {
            // When the accept loop stopped waiting, the permit goes back to the semaphore.
            let _ = tx.send(permit);
        }
    }
}

/// The accept loop of a Postfix listener: as [`listen::serve`], except that at the cap the new
/// client is accepted anyway and the longest-idle connection of `registry` is closed to make
/// room for it (`on_evict` counts each one). `handle(stream, slot)` serves a connection and must
/// poll [`Slot::evicted`] while it waits for a request.
pub async fn serve<L, F, Fut>(
    listener: L,
    cap: Cap,
    registry: Registry,
    on_evict: impl Fn(),
    mut shutdown: watch::Receiver<bool>,
    mut handle: F,
) where
    L: Accept + OwnedPath,
    F: FnMut(L::Stream, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failures = AcceptFailures::new(cap.name);
    let mut at_cap = false;
    loop {
        // No permit is held while waiting here: at the cap a new client is still accepted.
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                failures.back_off(&e).await;
                continue;
            }
        };
        let permit = match cap.permits.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap = false;
                p
            }
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                if !at_cap {
                    warn!(
                        listener = cap.name,
                        limit = cap.limit,
                        "connection limit reached; the longest-idle connection is closed for each new client"
                    );
                    at_cap = true;
                }
                match make_room(&cap, &registry, &on_evict, &mut shutdown).await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        tokio::spawn(handle(stream, registry.register(permit)));
    }
    listen::stopped(&listener, cap.name);
}

/// A permit for a client accepted at the cap: the longest-idle connection's, or the first one
/// freed otherwise. None when shutting down.
async fn make_room(
    cap: &Cap,
    registry: &Registry,
    on_evict: &impl Fn(),
    shutdown: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        let handoff = registry.evict_longest_idle();
        if handoff.is_some() {
            on_evict();
            debug!(
                listener = cap.name,
                "closing the longest-idle connection to admit a new client"
            );
        }
        let handed = async {
            match handoff {
                Some(rx) => rx.await.ok(),
                None => None,
            }
        };
        tokio::select! {
            Some(p) = handed => return Some(p),
            p = cap.permits.clone().acquire_owned() => return p.ok(),
            _ = tokio::time::sleep(EVICT_PATIENCE) => {}
            _ = shutdown.wait_for(|s| *s) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    fn permits(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n))
    }

    /// Polls `slot.evicted(true)` once, so the slot counts as idle from now, and keeps the
    /// future (dropping it makes the slot busy again).
    fn idle(slot: &Slot) -> std::pin::Pin<Box<dyn Future<Output = ()> + '_>> {
        let mut f = Box::pin(slot.evicted(true));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(f.as_mut().poll(&mut cx).is_pending());
        f
    }

    #[tokio::test]
    async fn the_longest_idle_is_chosen_and_its_permit_handed_over_when_it_closes() {
        let sem = permits(3);
        let reg = Registry::new();
        let a = reg.register(sem.clone().try_acquire_owned().unwrap());
        let b = reg.register(sem.clone().try_acquire_owned().unwrap());
        let c = reg.register(sem.clone().try_acquire_owned().unwrap());
        // Idle in the order b, a; c never waits for a request (busy).
        let fb = idle(&b);
        std::thread::sleep(Duration::from_millis(2));
        let fa = idle(&a);
        let rx = reg.evict_longest_idle().expect("an idle connection");
        // b was told to close; a was not.
        tokio::time::timeout(Duration::from_secs(1), fb)
            .await
            .expect("b is woken");
        assert_eq!(sem.available_permits(), 0);
        drop(b);
        let p = rx.await.expect("b's permit is handed over");
        assert_eq!(sem.available_permits(), 0, "not released to the semaphore");
        drop(p);
        assert_eq!(sem.available_permits(), 1);
        // Next: a. Then nothing: c is busy.
        let rx = reg.evict_longest_idle().expect("a is idle");
        fa.await;
        drop(a);
        drop(rx.await.expect("a's permit"));
        assert!(reg.evict_longest_idle().is_none(), "c is busy");
        assert_eq!(reg.len(), 1);
        drop(c);
        assert!(reg.is_empty());
        assert_eq!(sem.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_connection_is_busy_once_its_wait_ends_and_while_a_request_is_partial() {
        let sem = permits(2);
        let reg = Registry::new();
        let a = reg.register(sem.clone().try_acquire_owned().unwrap());
        let b = reg.register(sem.clone().try_acquire_owned().unwrap());
        // a waited, then its read won the select: busy again.
        drop(idle(&a));
        // b has half a request buffered.
        let mut fb = Box::pin(b.evicted(false));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fb.as_mut().poll(&mut cx).is_pending());
        assert!(reg.evict_longest_idle().is_none());
        // a waits again: now it is the one.
        let fa = idle(&a);
        assert!(reg.evict_longest_idle().is_some());
        fa.await;
        drop(fb);
        assert!(reg.evict_longest_idle().is_none(), "b never waited idle");
    }

    #[tokio::test]
    async fn chosen_as_a_request_arrives_it_answers_first_then_closes() {
        let sem = permits(1);
        let reg = Registry::new();
        let a = reg.register(sem.clone().try_acquire_owned().unwrap());
        let fa = idle(&a);
        // The eviction claims a in the instant its read returned a request, before the select
        // dropped the wait: a answers (its wait future is gone) ...
        let rx = reg.evict_longest_idle().expect("a is idle");
        drop(fa);
        // ... and its next wait for a request ends at once.
        tokio::time::timeout(Duration::from_secs(1), a.evicted(true))
            .await
            .expect("closes after answering");
        drop(a);
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn a_closed_connection_is_skipped_and_more_than_a_batch_is_found_in_idle_order() {
        let n = CANDIDATES * 2 + 3;
        let sem = permits(n);
        let reg = Registry::new();
        let register = || reg.register(sem.clone().try_acquire_owned().unwrap());
        let (first, second) = (register(), register());
        let rest: Vec<Slot> = (2..n).map(|_| register()).collect();
        let wait_first = idle(&first);
        let wait_second = idle(&second);
        let mut waits: Vec<_> = rest.iter().map(|s| Some(idle(s))).collect();
        // The first eviction scans and remembers a batch; then the second closes on its own.
        let mut pending = vec![reg.evict_longest_idle().expect("idle")];
        wait_first.await;
        drop(wait_second);
        drop(second);
        let mut chosen = Vec::new();
        while let Some(rx) = reg.evict_longest_idle() {
            pending.push(rx);
            let i = waits
                .iter_mut()
                .position(|w| {
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    w.as_mut()
                        .is_some_and(|f| f.as_mut().poll(&mut cx).is_ready())
                })
                .expect("the chosen connection is told");
            waits[i] = None;
            chosen.push(i + 2);
        }
        assert_eq!(chosen, (2..n).collect::<Vec<_>>());
        drop(waits);
        drop((first, rest));
        for rx in pending {
            assert!(rx.await.is_ok());
        }
        assert_eq!(sem.available_permits(), n);
        assert!(reg.is_empty());
    }
}

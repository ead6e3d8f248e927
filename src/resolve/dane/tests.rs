use std::sync::atomic::Ordering;

use super::*;
use crate::clock::TokioClock;
use crate::dane::{Rrset, Verdict};
use crate::discovery::dane::fake::FakeDane;

fn resolver(fake: &Arc<FakeDane>) -> Arc<DaneResolver> {
    let r = DaneResolver::new(1000, Arc::new(TokioClock::new()), Arc::new(Metrics::new()));
    r.set_source(Some(fake.clone()));
    Arc::new(r)
}

const DEADLINE: Duration = Duration::from_secs(15);

fn verdict(l: &DaneLookup) -> Option<Verdict> {
    match l {
        DaneLookup::State(e) => Some(e.state.verdict),
        _ => None,
    }
}

fn calls(f: &FakeDane) -> usize {
    f.calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_cached_state_is_answered_without_dns() {
    let f = Arc::new(FakeDane::default());
    f.signed("example.com", "mx.example.com", true);
    let r = resolver(&f);
    let l = r.lookup(b"example.com", DEADLINE).await;
    assert_eq!(verdict(&l), Some(Verdict::DaneOnly));
    assert_eq!(calls(&f), 3);
    let l = r.lookup(b"EXAMPLE.com.", DEADLINE).await;
    assert_eq!(verdict(&l), Some(Verdict::DaneOnly));
    assert_eq!(calls(&f), 3, "a hit asks nothing");
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_discovery() {
    let f = Arc::new(FakeDane::default());
    f.signed("example.com", "mx.example.com", false);
    *f.delay.lock().unwrap() = Duration::from_millis(100);
    let r = resolver(&f);
    let all = futures_all((0..20).map(|_| {
        let r = r.clone();
        async move { r.lookup(b"example.com", DEADLINE).await }
    }))
    .await;
    assert!(all.iter().all(|l| verdict(l) == Some(Verdict::NoTlsa)));
    assert_eq!(calls(&f), 3);
}

async fn futures_all<F: std::future::Future + Send + 'static>(
    it: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = it.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn rfc7672_2_1_1_a_failed_lookup_keeps_the_cached_state_until_it_expires() {
    let f = Arc::new(FakeDane::default());
    f.signed("example.com", "mx.example.com", true);
    let r = resolver(&f);
    r.lookup(b"example.com", DEADLINE).await;
    // The TLSA RRset of the MX now fails (SERVFAIL at the validating resolver).
    f.tlsa.lock().unwrap().insert(
        "_25._tcp.mx.example.com".into(),
        Rrset::Failed("SERVFAIL".into()),
    );
    let l = r.refresh("example.com").await;
    assert_eq!(verdict(&l), Some(Verdict::DaneOnly), "kept");
    // The TTL was an hour: after it, nothing valid is left and the lookup fails (TEMP).
    tokio::time::advance(Duration::from_secs(3600)).await;
    let l = r.lookup(b"example.com", DEADLINE).await;
    assert!(
        matches!(l, DaneLookup::Failed(ref why) if why.contains("TLSA")),
        "{l:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_with_nothing_cached_is_a_failure_and_not_remembered() {
    let f = Arc::new(FakeDane::default());
    f.mx.lock()
        .unwrap()
        .insert("example.com".into(), Rrset::Failed("timeout".into()));
    let r = resolver(&f);
    let l = r.lookup(b"example.com", DEADLINE).await;
    assert!(matches!(l, DaneLookup::Failed(_)));
    f.signed("example.com", "mx.example.com", true);
    let l = r.lookup(b"example.com", DEADLINE).await;
    assert_eq!(verdict(&l), Some(Verdict::DaneOnly));
}

#[tokio::test(start_paused = true)]
async fn a_slow_discovery_fails_at_the_deadline_and_fills_the_cache_later() {
    let f = Arc::new(FakeDane::default());
    f.signed("example.com", "mx.example.com", true);
    *f.delay.lock().unwrap() = Duration::from_secs(10);
    let r = resolver(&f);
    let l = r.lookup(b"example.com", Duration::from_secs(5)).await;
    assert!(matches!(l, DaneLookup::Failed(ref why) if why.contains("deadline")));
    tokio::time::sleep(Duration::from_secs(20)).await;
    *f.delay.lock().unwrap() = Duration::ZERO;
    let before = calls(&f);
    let l = r.lookup(b"example.com", Duration::from_secs(5)).await;
    assert_eq!(verdict(&l), Some(Verdict::DaneOnly));
    assert_eq!(
        calls(&f),
        before,
        "filled by the discovery the first lookup started"
    );
}

#[tokio::test(start_paused = true)]
async fn the_refresh_task_checks_again_before_the_ttl_runs_out() {
    let f = Arc::new(FakeDane::default());
    f.signed("example.com", "mx.example.com", true);
    let r = resolver(&f);
    r.lookup(b"example.com", DEADLINE).await;
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(refresh_loop(r.clone(), 4, rx));
    // TTL 3600 s: checked again at 2700 s, before it runs out.
    tokio::time::sleep(Duration::from_secs(2699)).await;
    assert_eq!(calls(&f), 3);
    f.tlsa.lock().unwrap().insert(
        "_25._tcp.mx.example.com".into(),
        Rrset::Empty {
            nxdomain: true,
            authenticated: true,
            ttl: 600,
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls(&f), 6);
    assert_eq!(
        verdict(&r.lookup(b"example.com", DEADLINE).await),
        Some(Verdict::NoTlsa)
    );
    let _ = tx.send(true);
    let _ = task.await;
}

#[tokio::test]
async fn without_a_source_nothing_is_learnt() {
    let r = Arc::new(DaneResolver::new(
        10,
        Arc::new(TokioClock::new()),
        Arc::new(Metrics::new()),
    ));
    assert!(matches!(
        r.lookup(b"example.com", DEADLINE).await,
        DaneLookup::Failed(_)
    ));
    assert!(matches!(
        r.lookup(b"[192.0.2.1]", DEADLINE).await,
        DaneLookup::Skipped(_)
    ));
}

//! The table of open connections: connection caps (total and per peer address), the
//! "busy" state that shortens header deadlines, and shedding.
//!
//! When a connection arrives and a cap is reached, the server does not leave it waiting
//! in the kernel's listen backlog (where it would queue behind every hostile
//! connection). It accepts it and closes the open connection least likely to be a
//! working client, in this order:
//!
//! 1. the connection that has waited longest for a request head (an idle keep-alive
//!    connection, or a client sending its head byte by byte);
//! 2. else the download with the lowest average transfer rate (a slow reader);
//! 3. else the oldest connection.
//!
//! Connections younger than [`SHED_GRACE`] are passed over in 1 and 2, so a new client
//! gets the time to send its request before it can be picked. With a per-peer cap the
//! victim is taken among the same peer's connections, so one address can only ever
//! push out its own connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::limits::Activity;

/// A connection younger than this (in its current phase) is only shed when nothing
/// older can be.
pub const SHED_GRACE: Duration = Duration::from_millis(250);

/// A peer address as counted by the per-peer cap: IPv4 addresses as they are, IPv6
/// addresses by their /64 (one host usually owns a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey(u128);

impl PeerKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(u128::from(u32::from(v4))),
                None => PeerKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

/// One open connection, as the table and the connection task see it.
#[derive(Debug)]
pub struct ConnState {
    id: u64,
    peer: PeerKey,
    activity: Arc<Activity>,
    in_request: AtomicBool,
    /// Milliseconds since `activity.started()` when the current phase began.
    phase_since_ms: AtomicU64,
    shed: AtomicBool,
    kill: Notify,
}

impl ConnState {
    /// The connection's byte activity.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.activity.started())
            .as_millis() as u64
    }

    /// A request head arrived: the connection is now answering a request.
    pub fn begin_request(&self) {
        self.begin_request_at(Instant::now());
    }

    fn begin_request_at(&self, at: Instant) {
        self.phase_since_ms
            .store(self.millis(at), Ordering::Relaxed);
        self.in_request.store(true, Ordering::Relaxed);
    }

    /// The response was handed over: the connection waits for the next request head.
    pub fn end_request(&self) {
        self.phase_since_ms
            .store(self.millis(Instant::now()), Ordering::Relaxed);
        self.in_request.store(false, Ordering::Relaxed);
    }

    /// True while a request is being answered.
    pub fn in_request(&self) -> bool {
        self.in_request.load(Ordering::Relaxed)
    }

    /// When the current phase (waiting for a head, or answering) began.
    pub fn phase_since(&self) -> Instant {
        self.activity.started() + Duration::from_millis(self.phase_since_ms.load(Ordering::Relaxed))
    }

    /// True once the table chose this connection to make room for another.
    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Relaxed)
    }

    /// Completes once the connection has been shed.
    pub async fn shed_signal(&self) {
        if self.is_shed() {
            return;
        }
        self.kill.notified().await;
    }

    fn mark_shed(&self) {
        self.shed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }
}

/// Ranks a shedding candidate: smaller is shed first.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Rank {
    /// Waiting for a request head since `since_ms` ago (older first).
    Idle(std::cmp::Reverse<u64>),
    /// Downloading at `rate` bytes per second (slower first).
    Slow(f64),
    /// Anything else, oldest first.
    Young(std::cmp::Reverse<u64>),
}

impl Rank {
    fn class(&self) -> u8 {
        match self {
            Rank::Idle(_) => 0,
            Rank::Slow(_) => 1,
            Rank::Young(_) => 2,
        }
    }

    fn better_victim_than(&self, other: &Rank) -> bool {
        match (self, other) {
            (Rank::Idle(a), Rank::Idle(b)) => a < b,
            (Rank::Slow(a), Rank::Slow(b)) => a < b,
            (Rank::Young(a), Rank::Young(b)) => a < b,
            _ => self.class() < other.class(),
        }
    }
}

fn rank(c: &ConnState, now: Instant) -> Rank {
    let phase_age = now.saturating_duration_since(c.phase_since());
    let age = now.saturating_duration_since(c.activity.started());
    if phase_age < SHED_GRACE {
        return Rank::Young(std::cmp::Reverse(age.as_millis() as u64));
    }
    if !c.in_request() {
        return Rank::Idle(std::cmp::Reverse(phase_age.as_millis() as u64));
    }
    Rank::Slow(c.activity.written() as f64 / age.as_secs_f64().max(0.001))
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnState>>,
    /// Connections not yet shed.
    active: usize,
    /// Connections not yet shed, per peer.
    per_peer: HashMap<PeerKey, usize>,
}

/// The table of open connections.
#[derive(Debug)]
pub struct Conns {
    max: usize,
    per_peer_max: usize,
    busy_on: usize,
    busy_off: usize,
    inner: Mutex<Inner>,
    busy: watch::Sender<bool>,
    shed_total: AtomicU64,
}

impl Conns {
    /// A table for at most `max` connections, `per_peer_max` per peer (0: no per-peer
    /// cap). The server counts as busy from half of `max` open connections until fewer
    /// than three eighths are.
    pub fn new(max: usize, per_peer_max: usize) -> Arc<Conns> {
        let busy_on = max.div_ceil(2).max(1);
        Arc::new(Conns {
            max,
            per_peer_max,
            busy_on,
            busy_off: (max * 3 / 8).clamp(1, busy_on),
            inner: Mutex::new(Inner::default()),
            busy: watch::channel(false).0,
            shed_total: AtomicU64::new(0),
        })
    }

    /// Follows the busy state (true when at least half the connection slots are taken).
    pub fn busy(&self) -> watch::Receiver<bool> {
        self.busy.subscribe()
    }

    /// Connections whose tasks are still running, shed or not.
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections shed so far.
    pub fn shed_total(&self) -> u64 {
        self.shed_total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a new connection from `peer`, shedding others if a cap is reached. The
    /// returned guard removes the connection from the table when dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> ConnGuard {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, peer: IpAddr, now: Instant) -> ConnGuard {
        let key = PeerKey::of(peer);
        let mut inner = self.lock();
        if self.per_peer_max > 0
            && inner.per_peer.get(&key).copied().unwrap_or(0) >= self.per_peer_max
        {
            if let Some(victim) = pick_victim(&inner, Some(key), now) {
                self.shed_locked(&mut inner, &victim);
            }
        }
        if inner.active >= self.max {
            if let Some(victim) = pick_victim(&inner, None, now) {
                self.shed_locked(&mut inner, &victim);
            }
        }
        inner.next_id += 1;
        let state = Arc::new(ConnState {
            id: inner.next_id,
            peer: key,
            activity: Activity::starting_at(now),
            in_request: AtomicBool::new(false),
            phase_since_ms: AtomicU64::new(0),
            shed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        inner.conns.insert(state.id, Arc::clone(&state));
        inner.active += 1;
        *inner.per_peer.entry(key).or_default() += 1;
        self.update_busy(inner.active);
        drop(inner);
        ConnGuard {
            conns: Arc::clone(self),
            state,
        }
    }

    /// Shed one connection by the usual order (used when the process is out of file
    /// descriptors). False if there was none to shed.
    pub fn shed_one(&self) -> bool {
        let mut inner = self.lock();
        match pick_victim(&inner, None, Instant::now()) {
            Some(victim) => {
                self.shed_locked(&mut inner, &victim);
                true
            }
            None => false,
        }
    }

    fn shed_locked(&self, inner: &mut Inner, victim: &Arc<ConnState>) {
        victim.mark_shed();
        self.shed_total.fetch_add(1, Ordering::Relaxed);
        inner.active -= 1;
        uncount_peer(inner, victim.peer);
        tracing::debug!(
            in_request = victim.in_request(),
            "connection cap reached: shedding a connection"
        );
        self.update_busy(inner.active);
    }

    fn update_busy(&self, active: usize) {
        let busy = *self.busy.borrow();
        if !busy && active >= self.busy_on {
            self.busy.send_replace(true);
        } else if busy && active < self.busy_off {
            self.busy.send_replace(false);
        }
    }

    fn remove(&self, state: &ConnState) {
        let mut inner = self.lock();
        if inner.conns.remove(&state.id).is_some() && !state.is_shed() {
            inner.active -= 1;
            uncount_peer(&mut inner, state.peer);
            self.update_busy(inner.active);
        }
    }
}

fn uncount_peer(inner: &mut Inner, peer: PeerKey) {
    if let Some(n) = inner.per_peer.get_mut(&peer) {
        *n -= 1;
        if *n == 0 {
            inner.per_peer.remove(&peer);
        }
    }
}

/// The connection to shed (among `peer`'s connections if given): see the module docs.
fn pick_victim(inner: &Inner, peer: Option<PeerKey>, now: Instant) -> Option<Arc<ConnState>> {
    let mut best: Option<(Rank, &Arc<ConnState>)> = None;
    // Bounded: one pass over the table, which holds at most the connection cap plus
    // the shed connections whose tasks have not ended yet.
    for c in inner.conns.values() {
        if c.is_shed() || peer.is_some_and(|p| p != c.peer) {
            continue;
        }
        let r = rank(c, now);
        if best.as_ref().is_none_or(|(b, _)| r.better_victim_than(b)) {
            best = Some((r, c));
        }
    }
    best.map(|(_, c)| Arc::clone(c))
}

/// A connection's place in the table; dropping it frees the place.
#[derive(Debug)]
pub struct ConnGuard {
    conns: Arc<Conns>,
    state: Arc<ConnState>,
}

impl ConnGuard {
    /// The connection's state.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.remove(&self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            PeerKey::of(ip("2001:db8::1")),
            PeerKey::of(ip("2001:db8::ffff:2"))
        );
        assert_ne!(
            PeerKey::of(ip("2001:db8::1")),
            PeerKey::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            PeerKey::of(ip("::ffff:10.0.0.1")),
            PeerKey::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_is_shed_before_young_or_busy_ones() {
        let conns = Conns::new(3, 0);
        let t0 = Instant::now();
        let busy = conns.admit_at(ip("10.0.0.2"), t0);
        busy.state().begin_request_at(t0);
        let idle_old = conns.admit_at(ip("10.0.0.1"), secs(t0, 1));
        let young = conns.admit_at(ip("10.0.0.3"), secs(t0, 10));
        let _new = conns.admit_at(ip("10.0.0.4"), secs(t0, 10));
        assert!(idle_old.state().is_shed());
        assert!(!busy.state().is_shed() && !young.state().is_shed());
        assert_eq!(conns.shed_total(), 1);
        // Next: the download (older than the grace period) goes before the young one.
        let _new2 = conns.admit_at(ip("10.0.0.5"), secs(t0, 10));
        assert!(busy.state().is_shed());
        assert!(!young.state().is_shed());
    }

    #[test]
    fn per_peer_cap_sheds_only_that_peers_connections() {
        let conns = Conns::new(100, 2);
        let t0 = Instant::now();
        let other = conns.admit_at(ip("10.0.0.9"), t0);
        let a1 = conns.admit_at(ip("10.0.0.1"), secs(t0, 5));
        let a2 = conns.admit_at(ip("10.0.0.1"), secs(t0, 6));
        let _a3 = conns.admit_at(ip("10.0.0.1"), secs(t0, 7));
        assert!(a1.state().is_shed());
        assert!(!a2.state().is_shed() && !other.state().is_shed());
    }

    #[test]
    fn busy_turns_on_at_half_the_cap_and_off_below_three_eighths() {
        let conns = Conns::new(8, 0);
        let rx = conns.busy();
        let mut held: Vec<_> = (0..3).map(|_| conns.admit(ip("10.0.0.1"))).collect();
        assert!(!*rx.borrow());
        held.push(conns.admit(ip("10.0.0.1")));
        assert!(*rx.borrow());
        held.pop();
        assert!(*rx.borrow(), "hysteresis: still busy at 3 of 8");
        held.pop();
        assert!(!*rx.borrow());
    }
}

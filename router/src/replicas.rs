//! A service's replicas as the router sees them: where each one is, what it last reported
//! (see [`modelpod_scoring::busy`]), and what this router has sent it and not yet had answered.
//! Requests go to the least-busy ready replica; when every one is at capacity they wait here.

use modelpod_scoring::ScoringLimits;
use modelpod_scoring::busy::BusyReport;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a connection to a replica's gRPC port may take: replicas are on the same node or
/// network, so a slow connect means a replica that is gone.
const GRPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One replica: a scoring server at `base_url`.
pub struct Replica {
    pub id: u64,
    pub base_url: String,
    state: Mutex<ReplicaState>,
    /// Requests this router has sent and not yet had answered.
    outstanding: AtomicUsize,
    /// The channel to the gRPC port the replica last reported, made on first use.
    grpc: Mutex<Option<(u16, tonic::transport::Channel)>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ReplicaState {
    report: Option<BusyReport>,
    /// The last poll or request reached it.
    reachable: bool,
    /// Taken out of the set: pollers stop, no new requests.
    removed: bool,
}

impl Replica {
    /// In flight on the replica: what it reported, or what this router alone has sent it if
    /// that is more (a report can be up to one poll old).
    fn load(&self, state: &ReplicaState) -> usize {
        let reported = state.report.map_or(0, |r| r.in_flight + r.waiting);
        reported.max(self.outstanding.load(Ordering::Acquire))
    }

    fn capacity(state: &ReplicaState) -> usize {
        state.report.map_or(1, |r| r.capacity.max(1))
    }

    fn routable(state: &ReplicaState) -> bool {
        state.reachable && !state.removed && state.report.is_some_and(|r| r.ready)
    }

    pub fn removed(&self) -> bool {
        self.state.lock().removed
    }

    pub fn last_report(&self) -> Option<BusyReport> {
        self.state.lock().report
    }

    /// A channel to the replica's gRPC listener: the host of its base URL, the port of its
    /// last report (a replica restarted on the same HTTP port may listen for gRPC on another).
    /// `None` when it reports none. Made lazily and kept: one HTTP/2 connection per replica
    /// carries every call.
    pub fn grpc_channel(&self) -> Option<tonic::transport::Channel> {
        let port = self.state.lock().report?.grpc_port?;
        let mut cached = self.grpc.lock();
        if let Some((known, channel)) = &*cached
            && *known == port
        {
            return Some(channel.clone());
        }
        let (origin, _) = self.base_url.rsplit_once(':')?;
        let channel = tonic::transport::Endpoint::from_shared(format!("{origin}:{port}"))
            .ok()?
            .tcp_nodelay(true)
            .connect_timeout(GRPC_CONNECT_TIMEOUT)
            .connect_lazy();
        *cached = Some((port, channel.clone()));
        Some(channel)
    }
}

/// Why no replica could take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReplica {
    /// None is ready (or reachable).
    NoneReady,
    /// Every ready replica stayed at capacity for the whole wait.
    AllBusy,
}

/// The replicas of one service.
#[derive(Default)]
pub struct ReplicaSet {
    replicas: Mutex<Vec<Arc<Replica>>>,
    next_id: AtomicU64,
    /// Requests waiting here for a replica.
    waiting: AtomicUsize,
    /// Signalled whenever a replica may have become able to take a request.
    freed: Notify,
    /// Rotates ties between equally busy replicas.
    turn: AtomicUsize,
    /// The limits the replicas last reported: they share one configuration.
    limits: Mutex<Option<ScoringLimits>>,
}

/// A request's hold on a replica; dropping it ends the request.
pub struct Lease {
    pub replica: Arc<Replica>,
    set: Arc<ReplicaSet>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.replica.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.set.freed.notify_waiters();
    }
}

impl ReplicaSet {
    pub fn add(&self, base_url: String) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            base_url,
            state: Mutex::new(ReplicaState::default()),
            outstanding: AtomicUsize::new(0),
            grpc: Mutex::new(None),
        });
        self.replicas.lock().push(replica.clone());
        replica
    }

    /// Takes a replica out: no new requests; those it is serving finish.
    pub fn remove(&self, base_url: &str) {
        self.replicas.lock().retain(|r| {
            if r.base_url == base_url {
                r.state.lock().removed = true;
                false
            } else {
                true
            }
        });
    }

    pub fn urls(&self) -> Vec<String> {
        self.replicas
            .lock()
            .iter()
            .map(|r| r.base_url.clone())
            .collect()
    }

    /// Each replica's URL, reachability and last report, for the router's status page.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.replicas
            .lock()
            .iter()
            .map(|r| {
                let state = *r.state.lock();
                serde_json::json!({
                    "url": r.base_url,
                    "reachable": state.reachable,
                    "routable": Replica::routable(&state),
                    "outstanding": r.outstanding.load(Ordering::Acquire),
                    "report": state.report,
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.replicas.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ready(&self) -> usize {
        self.replicas
            .lock()
            .iter()
            .filter(|r| Replica::routable(&r.state.lock()))
            .count()
    }

    /// Records a replica's report; it is reachable again.
    pub fn report(&self, replica: &Replica, report: BusyReport) {
        {
            let mut state = replica.state.lock();
            state.report = Some(report);
            state.reachable = true;
        }
        if report.limits.is_some() {
            *self.limits.lock() = report.limits;
        }
        self.freed.notify_waiters();
    }

    /// The limits the replicas enforce, once one has reported them.
    pub fn reported_limits(&self) -> Option<ScoringLimits> {
        *self.limits.lock()
    }

    /// The replica stopped answering (refused, reset, timed out): no requests until it reports.
    pub fn unreachable(&self, replica: &Replica) {
        replica.state.lock().reachable = false;
    }

    /// Busy replicas, Azure's way: each replica counts for the share of its capacity in use,
    /// and requests waiting here count as work too.
    pub fn busy_replicas(&self) -> f64 {
        let replicas = self.replicas.lock();
        let mut busy = 0.0;
        let mut capacity_sum = 0;
        for replica in replicas.iter() {
            let state = replica.state.lock();
            let capacity = Replica::capacity(&state);
            capacity_sum += capacity;
            busy += replica.load(&state) as f64 / capacity as f64;
        }
        let mean_capacity = if replicas.is_empty() {
            1.0
        } else {
            capacity_sum as f64 / replicas.len() as f64
        };
        busy + self.waiting.load(Ordering::Acquire) as f64 / mean_capacity
    }

    /// The least-busy ready replica with a free slot, leased.
    fn try_lease(self: &Arc<Self>) -> Result<Lease, NoReplica> {
        let replicas = self.replicas.lock();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, &Arc<Replica>)> = None;
        let mut any_ready = false;
        for i in 0..replicas.len() {
            let replica = &replicas[(turn + i) % replicas.len()];
            let state = replica.state.lock();
            if !Replica::routable(&state) {
                continue;
            }
            any_ready = true;
            let (load, capacity) = (replica.load(&state), Replica::capacity(&state));
            if load >= capacity {
                continue;
            }
            let busy = load as f64 / capacity as f64;
            if best.is_none_or(|(b, _)| busy < b) {
                best = Some((busy, replica));
            }
        }
        match best {
            Some((_, replica)) => {
                replica.outstanding.fetch_add(1, Ordering::AcqRel);
                Ok(Lease {
                    replica: replica.clone(),
                    set: self.clone(),
                })
            }
            None if any_ready => Err(NoReplica::AllBusy),
            None => Err(NoReplica::NoneReady),
        }
    }

    /// Leases the least-busy ready replica, waiting up to `wait` for one to have a free slot
    /// (or, if none is ready, to become ready).
    pub async fn lease(self: &Arc<Self>, wait: Duration) -> Result<Lease, NoReplica> {
        let deadline = Instant::now() + wait;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let result = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_lease() {
                Ok(lease) => break Ok(lease),
                // Nothing to wait for (replicas starting, crashed or backing off): 503 now.
                Err(NoReplica::NoneReady) => break Err(NoReplica::NoneReady),
                Err(why) => {
                    if tokio::time::timeout_at(deadline.into(), freed)
                        .await
                        .is_err()
                    {
                        break Err(why);
                    }
                }
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(in_flight: usize, capacity: usize, ready: bool) -> BusyReport {
        BusyReport {
            seq: 1,
            in_flight,
            waiting: 0,
            capacity,
            ready,
            limits: None,
            grpc_port: None,
        }
    }

    #[test]
    fn the_limits_replicas_report_are_the_ones_requests_are_held_to() {
        let set = ReplicaSet::default();
        let a = set.add("http://a".into());
        assert_eq!(set.reported_limits(), None, "nothing reported yet");
        let allowed = ScoringLimits {
            max_request_bytes: 200 << 20,
            ..ScoringLimits::default()
        };
        set.report(
            &a,
            BusyReport {
                limits: Some(allowed),
                ..report(0, 1, true)
            },
        );
        assert_eq!(set.reported_limits(), Some(allowed));
        // A replica that predates the field does not erase what another reported.
        set.report(&a, report(0, 1, true));
        assert_eq!(set.reported_limits(), Some(allowed));
    }

    #[tokio::test]
    async fn requests_go_to_the_least_busy_ready_replica() {
        let set = Arc::new(ReplicaSet::default());
        let a = set.add("http://a".into());
        let b = set.add("http://b".into());
        let c = set.add("http://c".into());
        set.report(&a, report(3, 4, true));
        set.report(&b, report(1, 4, true));
        set.report(&c, report(0, 4, false)); // idle but not ready
        let lease = set.lease(Duration::ZERO).await.unwrap();
        assert_eq!(lease.replica.base_url, "http://b");
        // b now has 1 reported and 1 outstanding from here: still less busy than a.
        let second = set.lease(Duration::ZERO).await.unwrap();
        assert_eq!(second.replica.base_url, "http://b");
        // Unreachable replicas are skipped.
        set.unreachable(&b);
        assert_eq!(
            set.lease(Duration::ZERO).await.unwrap().replica.base_url,
            "http://a"
        );
    }

    #[tokio::test]
    async fn requests_wait_for_a_free_slot_then_give_up() {
        let set = Arc::new(ReplicaSet::default());
        assert_eq!(
            set.lease(Duration::from_millis(10)).await.err(),
            Some(NoReplica::NoneReady)
        );
        let a = set.add("http://a".into());
        set.report(&a, report(0, 1, true));
        let held = set.lease(Duration::ZERO).await.unwrap();
        // At capacity: a second request waits, and counts as busy work meanwhile.
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move {
                set.lease(Duration::from_secs(5))
                    .await
                    .map(|l| l.replica.id)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            (set.busy_replicas() - 2.0).abs() < 1e-9,
            "{}",
            set.busy_replicas()
        );
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(a.id));
        // Nobody frees the slot: the wait ends with AllBusy.
        let _held = set.lease(Duration::ZERO).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            set.lease(Duration::from_millis(30)).await.err(),
            Some(NoReplica::AllBusy)
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn removed_replicas_take_nothing_new() {
        let set = Arc::new(ReplicaSet::default());
        let a = set.add("http://a".into());
        set.report(&a, report(0, 2, true));
        set.remove("http://a");
        assert!(a.removed());
        assert!(set.try_lease().is_err());
        assert!(set.is_empty());
    }
}

//! The busy state a scoring server reports to its router: requests being scored, requests
//! waiting for a scoring slot, capacity and readiness.
//!
//! The router long-polls `GET /modelpod/busy?after=SEQ&wait_ms=MS`: the answer comes at once
//! when the state changed after `SEQ`, else at the first change or after `wait_ms` (the
//! router's refresh period), whichever is first. Recording a change (a request starts or stops
//! waiting, starts or stops scoring) costs two atomic updates and a wake-up of the pollers, if
//! any; nothing is sent while nothing
//! changes but one answer per refresh period. Polls are short, so a server that is shutting
//! down drains without waiting on its router.

use crate::deployment::ScoringLimits;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What one poll returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyReport {
    /// Increases at every change; pass it back as `after`.
    pub seq: u64,
    /// Requests holding a scoring slot.
    pub in_flight: usize,
    /// Requests waiting for a slot (at most maxQueueWaitMs each).
    pub waiting: usize,
    /// maxConcurrentRequestsPerContainer.
    pub capacity: usize,
    /// Readiness, as `/v2/health/ready` answers it.
    pub ready: bool,
    /// The limits the replica enforces, which its router forwards by (absent from replicas
    /// that predate them).
    #[serde(default)]
    pub limits: Option<ScoringLimits>,
    /// The port of the replica's v2 gRPC listener, on the host its HTTP is on; absent when
    /// gRPC is off. The router forwards gRPC calls there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u16>,
}

#[derive(Default)]
pub struct BusyBoard {
    seq: AtomicU64,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    changed: Notify,
}

impl BusyBoard {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests waiting for a slot now.
    pub fn waiting_now(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Counts a request waiting for a slot until the guard is dropped.
    pub fn waiting(&self) -> BusyGuard<'_> {
        BusyGuard::enter(self, &self.waiting)
    }

    /// Counts a request holding a slot until the guard is dropped.
    pub fn scoring(&self) -> BusyGuard<'_> {
        BusyGuard::enter(self, &self.in_flight)
    }

    /// Readiness changes (start-up loading finished, models loaded or failed) are changes too.
    pub fn touch(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub fn report(&self, limits: ScoringLimits, ready: bool) -> BusyReport {
        BusyReport {
            seq: self.seq.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            capacity: limits.max_concurrent_requests,
            ready,
            limits: Some(limits),
            grpc_port: None,
        }
    }

    /// Waits until the state has changed after `after`, or `wait` has passed.
    pub async fn changed_after(&self, after: u64, wait: Duration) {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        // Registered before the check, so a change between the check and the wait wakes us.
        notified.as_mut().enable();
        if self.seq.load(Ordering::Acquire) != after {
            return;
        }
        let _ = tokio::time::timeout(wait, notified).await;
    }
}

pub struct BusyGuard<'a> {
    board: &'a BusyBoard,
    counter: &'a AtomicUsize,
}

impl<'a> BusyGuard<'a> {
    fn enter(board: &'a BusyBoard, counter: &'a AtomicUsize) -> BusyGuard<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        board.touch();
        BusyGuard { board, counter }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
        self.board.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn four_slots() -> ScoringLimits {
        ScoringLimits {
            max_concurrent_requests: 4,
            ..ScoringLimits::default()
        }
    }

    #[tokio::test]
    async fn a_poll_returns_at_the_first_change_or_after_its_wait() {
        let board = Arc::new(BusyBoard::default());
        let seq = board.report(four_slots(), true).seq;
        // Nothing changes: the poll waits its full period.
        let started = Instant::now();
        board.changed_after(seq, Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A change while waiting ends the wait at once.
        let poller = {
            let board = board.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                board.changed_after(seq, Duration::from_secs(10)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let guard = board.scoring();
        assert!(poller.await.unwrap() < Duration::from_secs(5));
        let report = board.report(four_slots(), true);
        assert_eq!((report.in_flight, report.waiting), (1, 0));
        assert!(report.seq > seq);
        drop(guard);
        // A poll for an old sequence number answers without waiting.
        let started = Instant::now();
        board.changed_after(seq, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(board.report(four_slots(), true).in_flight, 0);
    }
}

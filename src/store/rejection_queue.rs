//! The rejection log's own path to the writer. Refused requests (404, 401, …) must
//! not compete with authentic events for the append queue or a batch's slots, so
//! they wait in this bounded buffer instead; each batch the writer commits takes a
//! bounded share of them. Over the bound, a rejection is dropped and counted (the
//! count is exported in `/metrics`): under a flood of refusals the log samples, and
//! ingest keeps its speed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::store::{NewRejection, REJECTION_BODY_PREFIX};

/// How many rejections may wait for the writer.
pub const QUEUE_CAPACITY: usize = 4096;
/// How many waiting rejections one batch writes.
pub const PER_BATCH: usize = 256;

/// Longest stored texts: with the body prefix, every row has a bounded size, so the
/// log's row cap (`REJECTION_LOG_CAPACITY`) is also a cap in bytes.
const MAX_MESSAGE: usize = 1024;
const MAX_SHORT: usize = 200;

#[derive(Default)]
pub struct RejectionQueue {
    waiting: Mutex<VecDeque<NewRejection>>,
    dropped: AtomicU64,
    /// A wake-up is in the writer's queue (at most one at a time).
    wake_queued: AtomicBool,
}

impl RejectionQueue {
    /// Adds a rejection; returns whether the writer should be woken for it (false
    /// when a wake-up is already on its way, or the rejection was dropped).
    pub fn push(&self, rejection: NewRejection) -> bool {
        {
            let mut waiting = self.waiting.lock().expect("rejection queue lock");
            if waiting.len() >= QUEUE_CAPACITY {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            waiting.push_back(bounded(rejection));
        }
        !self.wake_queued.swap(true, Ordering::AcqRel)
    }

    /// The writer's queue was full: the wake-up was not sent.
    pub fn wake_failed(&self) {
        self.wake_queued.store(false, Ordering::Release);
    }

    /// The writer got the wake-up.
    pub fn woken(&self) {
        self.wake_queued.store(false, Ordering::Release);
    }

    /// Up to [`PER_BATCH`] waiting rejections, oldest first.
    pub fn take(&self) -> Vec<NewRejection> {
        let mut waiting = self.waiting.lock().expect("rejection queue lock");
        let n = waiting.len().min(PER_BATCH);
        waiting.drain(..n).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting
            .lock()
            .expect("rejection queue lock")
            .is_empty()
    }

    /// Rejections not logged because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Cuts every field to its bound (the body to its prefix; its hash and length say
/// what the whole body was).
fn bounded(mut r: NewRejection) -> NewRejection {
    r.body.truncate(REJECTION_BODY_PREFIX);
    r.message = cut(r.message, MAX_MESSAGE);
    r.reason = cut(r.reason, MAX_SHORT);
    r.source = r.source.map(|s| cut(s, MAX_SHORT));
    r.remote_addr = r.remote_addr.map(|s| cut(s, MAX_SHORT));
    r
}

fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(body_len: usize) -> NewRejection {
        NewRejection {
            at_ms: 0,
            source: Some("s".repeat(10_000)),
            reason: "unknown_source".into(),
            status: 404,
            message: "m".repeat(10_000),
            body: vec![b'x'; body_len],
            body_len,
            body_sha256: None,
            remote_addr: None,
        }
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let queue = RejectionQueue::default();
        assert!(queue.push(rejection(10)), "the first one wakes the writer");
        assert!(!queue.push(rejection(10)), "one wake-up at a time");
        for _ in 2..QUEUE_CAPACITY + 5 {
            queue.push(rejection(10));
        }
        assert_eq!(queue.dropped(), 5);
        assert_eq!(queue.take().len(), PER_BATCH);
        queue.woken();
        assert!(
            queue.push(rejection(10)),
            "woken again after the writer took it"
        );
    }

    #[test]
    fn every_field_is_cut_to_its_bound() {
        let queue = RejectionQueue::default();
        queue.push(rejection(1 << 20));
        let kept = queue.take().remove(0);
        assert_eq!(kept.body.len(), REJECTION_BODY_PREFIX);
        assert_eq!(kept.body_len, 1 << 20, "the whole length is still said");
        assert_eq!(kept.message.len(), MAX_MESSAGE);
        assert_eq!(kept.source.unwrap().len(), MAX_SHORT);
    }
}

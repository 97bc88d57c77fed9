//! The byte budget for request bodies: how many bytes of bodies the gateway holds at
//! once, across all connections. A request reserves its declared `Content-Length`
//! before a byte of its body is read (a chunked body reserves as its chunks arrive);
//! when the reservation does not fit, the request is answered 503 at once instead of
//! waiting, so a flood is shed instead of growing memory. A reservation is released
//! when it is dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

/// Bytes held for one body; given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

/// The reservation does not fit in what is left of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes of request bodies are already in flight")]
pub struct OverBudget(pub usize);

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// Reserves `bytes` now or not at all (never waits).
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, OverBudget> {
        let mut reservation = Reservation::default();
        self.grow(&mut reservation, bytes)?;
        Ok(reservation)
    }

    /// Adds `more` bytes to `reservation`, or leaves it as it was.
    pub fn grow(&self, reservation: &mut Reservation, more: usize) -> Result<(), OverBudget> {
        let mut taken: Option<OwnedSemaphorePermit> = None;
        let mut left = more;
        while left > 0 {
            // Semaphores take at most u32::MAX permits in one call.
            let piece = left.min(u32::MAX as usize);
            let permit = self
                .permits
                .clone()
                .try_acquire_many_owned(piece as u32)
                .map_err(|_| OverBudget(self.in_use()))?;
            match &mut taken {
                Some(taken) => taken.merge(permit),
                None => taken = Some(permit),
            }
            left -= piece;
        }
        if let Some(taken) = taken {
            match &mut reservation.permit {
                Some(held) => held.merge(taken),
                None => reservation.permit = Some(taken),
            }
            reservation.bytes += more;
        }
        Ok(())
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_or_fail_whole_and_are_given_back_on_drop() {
        let budget = BodyBudget::new(100);
        let first = budget.reserve(60).unwrap();
        assert_eq!(budget.in_use(), 60);
        assert_eq!(budget.reserve(41).unwrap_err(), OverBudget(60));
        assert_eq!(budget.in_use(), 60, "a failed reservation holds nothing");
        let mut second = budget.reserve(30).unwrap();
        assert!(budget.grow(&mut second, 11).is_err());
        assert_eq!(second.bytes(), 30);
        budget.grow(&mut second, 10).unwrap();
        assert_eq!((second.bytes(), budget.in_use()), (40, 100));
        drop(first);
        assert_eq!(budget.in_use(), 40);
        drop(second);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.reserve(0).unwrap().bytes(), 0);
        assert!(budget.reserve(101).is_err());
    }
}

//! The node's memory budget for message data in flight (ARCHITECTURE §6).
//!
//! Every front-end reserves the bytes it is about to hold — a request body
//! before reading it, a fetch before reading the log — and gives them back
//! when done. When the budget is spent, new work waits (FIFO, so nothing
//! starves) instead of allocating: a burst slows clients down, it does not
//! grow the process. A single reservation larger than the whole budget is
//! refused, since it could never be served.

use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::BrokerError;

const UNIT_BYTES: u64 = 1024;

#[derive(Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    units: u64,
    in_use: IntGauge,
}

/// Bytes held until dropped.
pub struct MemoryPermit {
    _permit: OwnedSemaphorePermit,
    in_use: IntGauge,
    bytes: i64,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.in_use.sub(self.bytes);
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64, in_use: IntGauge) -> Self {
        let units = bytes.div_ceil(UNIT_BYTES).max(1);
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            in_use,
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.units * UNIT_BYTES
    }

    /// Waits until `bytes` fit in the budget and holds them.
    pub async fn reserve(&self, bytes: u64) -> Result<MemoryPermit, BrokerError> {
        let units = bytes.div_ceil(UNIT_BYTES).max(1);
        if units > self.units {
            return Err(BrokerError::MessageTooLarge {
                size: bytes as usize,
                max: self.capacity_bytes(),
            });
        }
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(units as u32)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        let held = (units * UNIT_BYTES) as i64;
        self.in_use.add(held);
        Ok(MemoryPermit {
            _permit: permit,
            in_use: self.in_use.clone(),
            bytes: held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_when_spent_and_refuses_the_impossible() {
        let g = IntGauge::new("t", "t").unwrap();
        let b = MemoryBudget::new(10 * 1024, g.clone());
        let p1 = b.reserve(6 * 1024).await.unwrap();
        assert_eq!(g.get(), 6 * 1024);
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(6 * 1024).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second reservation must wait");
        drop(p1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(b.reserve(11 * 1024).await.is_err());
    }
}

//! Admission: how many invocations may run at once, per function and per
//! namespace. A request over a limit waits in a bounded queue (at most as
//! many waiting as may run) for up to the function's `queue_timeout`, then
//! is turned away with 429 and `Retry-After`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A concurrency limit with its wait queue. A slot is an owned permit, so
/// it can live as long as the call it admits: past the response head, until
/// the body is sent and the guest is done.
pub struct Limit {
    slots: Arc<Semaphore>,
    max: u32,
    waiting: AtomicU32,
    scope: String,
}

/// A request turned away by a [`Limit`].
#[derive(Debug)]
pub struct Rejected {
    /// Why, naming the limit.
    pub message: String,
    /// When to try again.
    pub retry_after: Duration,
}

impl Limit {
    /// A limit of `max` concurrent invocations; `scope` names it in errors ("function hello").
    pub fn new(scope: String, max: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            waiting: AtomicU32::new(0),
            scope,
        }
    }

    /// A slot, at once or after waiting up to `queue_timeout`.
    pub async fn acquire(&self, queue_timeout: Duration) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let reject = |why: &str| Rejected {
            message: format!(
                "{} is at its limit of {} concurrent invocations{why}",
                self.scope, self.max
            ),
            retry_after: queue_timeout.max(Duration::from_secs(1)),
        };
        if queue_timeout.is_zero() {
            return Err(reject(""));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(reject(" and its queue is full"));
        }
        let acquired =
            tokio::time::timeout(queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(reject(&format!(
                " (waited {}ms for a slot)",
                queue_timeout.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_limit_waits_then_is_rejected() {
        let limit = Limit::new("function f".into(), 1);
        let held = limit.acquire(Duration::ZERO).await.unwrap();
        let error = limit.acquire(Duration::ZERO).await.unwrap_err();
        assert!(error.message.contains("limit of 1"), "{}", error.message);
        let error = limit.acquire(Duration::from_millis(20)).await.unwrap_err();
        assert!(error.message.contains("waited 20ms"), "{}", error.message);
        assert_eq!(error.retry_after, Duration::from_secs(1));
        let (waited, ()) = tokio::join!(limit.acquire(Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        assert!(waited.is_ok(), "a slot freed while waiting is taken");
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let limit = Limit::new("function f".into(), 1);
        let _held = limit.acquire(Duration::ZERO).await.unwrap();
        let (first, second) = tokio::join!(limit.acquire(Duration::from_millis(200)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            limit.acquire(Duration::from_millis(200)).await
        });
        assert!(first.unwrap_err().message.contains("waited"));
        assert!(second.unwrap_err().message.contains("queue is full"));
    }
}

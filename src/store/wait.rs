//! `WAIT`s shared on one connection. A `WAIT` covers every write its connection made before it
//! went out, and blocks that connection until it is answered; so the callers of one connection
//! send one `WAIT` at a time, and those whose writes were done before it went out take its
//! answer instead of sending their own.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
};

use redis::RedisResult;

/// The `WAIT`s of one connection.
#[derive(Default)]
pub struct Waits {
    /// How many callers have asked so far, each after its writes were answered.
    asked: AtomicU64,
    /// Held while a `WAIT` is out: how many callers the last answered one covered, and its
    /// answer (the replicas that have those writes).
    answered: tokio::sync::Mutex<(u64, i64)>,
}

impl Waits {
    /// The replicas that have this caller's writes (made on the connection before this call):
    /// the answer of a `WAIT` sent after them, by `send` unless another caller's covers them.
    pub(super) async fn wait<F>(&self, send: impl FnOnce() -> F) -> RedisResult<i64>
    where
        F: Future<Output = RedisResult<i64>>,
    {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut answered = self.answered.lock().await;
        let (covered, replicas) = *answered;
        if covered >= ticket {
            return Ok(replicas);
        }
        // Every caller counted by now has had its writes answered: this WAIT covers them.
        let covering = self.asked.load(Ordering::SeqCst);
        let replicas = send().await?;
        *answered = (covering, replicas);
        Ok(replicas)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicUsize, Arc};

    use super::*;

    /// Callers that ask while a `WAIT` is out were not covered by it: the first of them sends
    /// the next, and the others take its answer.
    #[tokio::test]
    async fn callers_asking_while_a_wait_is_out_share_the_next_one() {
        let waits = Arc::new(Waits::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let (waits, sent) = (waits.clone(), sent.clone());
            async move {
                waits
                    .wait(|| async move {
                        sent.fetch_add(1, Ordering::SeqCst);
                        held.await.unwrap();
                        Ok(1)
                    })
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "the first WAIT is out");
        let later: Vec<_> = (0..3)
            .map(|_| {
                let (waits, sent) = (waits.clone(), sent.clone());
                tokio::spawn(async move {
                    waits
                        .wait(|| async move {
                            sent.fetch_add(1, Ordering::SeqCst);
                            Ok(2)
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "the others wait for it");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        for caller in later {
            assert_eq!(
                caller.await.unwrap().unwrap(),
                2,
                "the second WAIT's answer"
            );
        }
        assert_eq!(sent.load(Ordering::SeqCst), 2, "three callers, one WAIT");
    }

    /// A `WAIT` that failed covers no one: the next caller sends its own.
    #[tokio::test]
    async fn after_a_failed_wait_the_next_caller_sends_its_own() {
        let waits = Waits::default();
        let failed = waits
            .wait(|| async { Err(redis::RedisError::from(std::io::Error::other("gone"))) })
            .await;
        assert!(failed.is_err());
        assert_eq!(waits.wait(|| async { Ok(1) }).await.unwrap(), 1);
    }
}

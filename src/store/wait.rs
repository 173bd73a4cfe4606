//! `WAIT`s shared on one connection. A `WAIT` covers every write its connection made before it
//! went out, and blocks that connection until it is answered; so the callers of one connection
//! send one `WAIT` at a time, and those whose writes were answered before it went out take its
//! answer instead of sending their own.
//!
//! A `WAIT` covers only the writes of its own connection, and redis-rs connects again, silently,
//! after a connection is lost. So every request on the connection that fails as a lost
//! connection is noted ([`Waits::note`]), and a caller that asked before such a failure gets no
//! `WAIT`'s answer at all, but an error: whether a replica has its writes is not known.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use redis::{RedisError, RedisResult};

/// The `WAIT`s of one connection.
#[derive(Default)]
pub struct Waits {
    /// How many callers have asked so far, each after its writes were answered.
    asked: AtomicU64,
    /// How many requests on the connection have failed as a lost connection (on a cluster: on
    /// any master's, and how often the slot map changed).
    losses: Arc<AtomicU64>,
    /// Held while a `WAIT` is out; the last one answered.
    answered: tokio::sync::Mutex<Answered>,
}

/// A `WAIT` answered, and whom it covered.
#[derive(Default, Clone, Copy)]
struct Answered {
    /// The callers that had asked before it went out.
    covered: u64,
    /// The losses noted when it went out (and still when it was answered).
    losses: u64,
    /// The replicas that have their writes.
    replicas: i64,
}

/// Whether `error` says that the connection is lost (or cannot be trusted to be the same).
pub(super) fn connection_lost(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
}

impl Waits {
    /// The `WAIT`s of one connection among others, whose losses are all counted in `losses`.
    pub(super) fn counting_losses_in(losses: Arc<AtomicU64>) -> Self {
        Self {
            losses,
            ..Self::default()
        }
    }

    /// Notes `result` of a request on the connection: a lost connection ends what the `WAIT`s
    /// after it can vouch for.
    pub(super) fn note<T>(&self, result: &RedisResult<T>) {
        if result.as_ref().is_err_and(connection_lost) {
            self.losses.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The replicas that have this caller's writes (made on the connection before this call):
    /// the answer of a `WAIT` sent after them, by `send` unless another caller's covers them.
    pub(super) async fn wait<F>(&self, send: impl FnOnce() -> F) -> RedisResult<i64>
    where
        F: Future<Output = RedisResult<i64>>,
    {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let losses = self.losses.load(Ordering::SeqCst);
        let mut answered = self.answered.lock().await;
        if answered.covered >= ticket && answered.losses == losses {
            return Ok(answered.replicas);
        }
        // Every caller counted by now has had its writes answered: this WAIT covers them.
        let covered = self.asked.load(Ordering::SeqCst);
        let answer = send().await;
        self.note(&answer);
        let replicas = answer?;
        if self.losses.load(Ordering::SeqCst) != losses {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection to Redis was lost after the write: whether a replica has it is not known",
            )
            .into());
        }
        *answered = Answered {
            covered,
            losses,
            replicas,
        };
        Ok(replicas)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

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

    /// A connection lost while callers wait (here: the `WAIT` out fails as such): none of them
    /// is answered by a `WAIT` on the connection that replaces it. Callers asking after the
    /// loss are.
    #[tokio::test]
    async fn callers_that_asked_before_a_lost_connection_get_an_error() {
        let waits = Arc::new(Waits::default());
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let waits = waits.clone();
            async move {
                waits
                    .wait(|| async move {
                        held.await.unwrap();
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
                    })
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let queued = tokio::spawn({
            let waits = waits.clone();
            async move { waits.wait(|| async { Ok(1) }).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        release.send(()).unwrap();
        assert!(first.await.unwrap().is_err());
        let queued = queued.await.unwrap();
        assert!(
            queued.as_ref().is_err_and(connection_lost),
            "a caller whose writes went over the lost connection: {queued:?}"
        );
        assert_eq!(waits.wait(|| async { Ok(1) }).await.unwrap(), 1);
    }

    /// A request of another caller failing as a lost connection while a `WAIT` is out makes
    /// that `WAIT`'s answer worthless to the callers it was to cover.
    #[tokio::test]
    async fn a_loss_noted_while_a_wait_is_out_voids_its_answer() {
        let waits = Waits::default();
        let answer = waits
            .wait(|| async {
                waits.note::<()>(&Err(
                    std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()
                ));
                Ok(1)
            })
            .await;
        assert!(answer.is_err_and(|error| connection_lost(&error)));
    }
}

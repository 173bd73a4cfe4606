//! Retrying with exponential backoff, for everything that waits for a server to come back: the
//! RabbitMQ connection and commands that find Redis out of reach; and [`LogThrottle`], which
//! spaces out the log lines of a failure that repeats in the same way.

use std::time::{Duration, Instant};

/// Delays that double from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`; never waits longer than `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// How long to wait before the next try; the one after waits twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts over at `min`, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Spaces out the log lines of a failure that repeats (Redis out of reach at every tick of the
/// relay): the first failure is logged at once, a later one only once the next delay of its
/// [`Backoff`] has passed since the last line; a success starts over. So the log keeps saying
/// why for as long as it lasts, without a line per attempt.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    delays: Backoff,
    /// When the next failure may be logged; `None` while none has been since the last success.
    next_line: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// Lines spaced by `delays`.
    pub const fn new(delays: Backoff) -> Self {
        Self {
            delays,
            next_line: None,
            unlogged: 0,
        }
    }

    /// A failure: `Some(n)` when it is to be logged now, `n` failures having gone unlogged
    /// since the line before.
    pub fn failed(&mut self) -> Option<u64> {
        self.failed_at(Instant::now())
    }

    fn failed_at(&mut self, now: Instant) -> Option<u64> {
        match self.next_line {
            Some(next) if now < next => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.next_line = Some(now + self.delays.next_delay());
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// A success: `true` when a failure was logged before it (so that its end is worth a line).
    pub fn succeeded(&mut self) -> bool {
        self.delays.reset();
        self.unlogged = 0;
        self.next_line.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_failure_is_logged_at_growing_intervals_and_a_success_starts_over() {
        let mut throttle =
            LogThrottle::new(Backoff::new(Duration::from_secs(1), Duration::from_secs(4)));
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        // Failures every 250 ms for 12 s: lines at 0, 1, 3, 7 and 11 s.
        let logged: Vec<(u64, u64)> = (0..48)
            .map(|n| n * 250)
            .filter_map(|millis| {
                throttle
                    .failed_at(at(millis))
                    .map(|unlogged| (millis, unlogged))
            })
            .collect();
        assert_eq!(
            logged,
            [(0, 0), (1000, 3), (3000, 7), (7000, 15), (11_000, 15)]
        );
        assert!(throttle.succeeded());
        assert!(!throttle.succeeded(), "nothing failed since");
        assert_eq!(
            throttle.failed_at(at(11_100)),
            Some(0),
            "logged at once again"
        );
    }

    #[test]
    fn delays_double_up_to_the_most_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}

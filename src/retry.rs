//! One retry-with-backoff for every loop that retries (the checkpoint, the changelog before its
//! alerts, the outbox, the alerts produce, HTTP deliveries). A loop that keeps failing is never
//! silent: every failed attempt counts in a metric (`qos_sentinel_retries_total{loop}`, for
//! deliveries `qos_sentinel_deliveries_total{outcome="retried"}`), and it logs at its first
//! failure, then at most once a minute while it lasts, and once when it recovers.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::{error, info};

/// First wait after a failure; it doubles up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Least time between two log lines of one failing loop.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// How the waits of a loop grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub first: Duration,
    pub max: Duration,
    /// Wait a random 50-100 % of each step, so that many clients retrying one server do not
    /// come back in step.
    pub jitter: bool,
}

/// Local loops (disk, the local broker client): 100 ms doubling to 10 s.
pub const LOCAL: Policy = Policy {
    first: FIRST_DELAY,
    max: MAX_DELAY,
    jitter: false,
};

/// The state of one retrying loop.
pub struct Backoff {
    what: Cow<'static, str>,
    policy: Policy,
    delay: Duration,
    failures: u64,
    last_log: Option<Instant>,
    counter: Option<IntCounter>,
    rng: u64,
}

impl Backoff {
    /// A loop doing `what` ("write the checkpoint"), counted in `counter` when given.
    pub fn new(what: impl Into<Cow<'static, str>>, counter: Option<IntCounter>) -> Self {
        Self::with_policy(what, counter, LOCAL)
    }

    /// Like [`Backoff::new`], with waits growing as `policy` says.
    pub fn with_policy(
        what: impl Into<Cow<'static, str>>,
        counter: Option<IntCounter>,
        policy: Policy,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Backoff {
            what: what.into(),
            policy,
            delay: policy.first,
            failures: 0,
            last_log: None,
            counter,
            rng: seed | 1,
        }
    }

    /// The wait the next failure would ask for (jittered), without recording one: for a loop
    /// that first checks whether it may still wait that long.
    pub fn next_wait(&mut self) -> Duration {
        if !self.policy.jitter {
            return self.delay;
        }
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.delay.as_millis() as u64;
        Duration::from_millis(step / 2 + self.rng % (step / 2 + 1))
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Records a failed attempt (metric; a log line unless one was written in the last
    /// minute) and returns how long to wait before the next one.
    pub fn failed(&mut self, error: impl std::fmt::Display) -> Duration {
        self.failures += 1;
        if let Some(c) = &self.counter {
            c.inc();
        }
        let wait = self.next_wait();
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.last_log = Some(Instant::now());
            error!(
                failures = self.failures,
                retry_in_ms = wait.as_millis() as u64,
                %error,
                "Cannot {}; retrying.",
                self.what
            );
        }
        self.delay = (self.delay * 2).min(self.policy.max);
        wait
    }

    /// Records a failed attempt; the returned sleep is the wait before the next one.
    pub fn wait(&mut self, error: impl std::fmt::Display) -> tokio::time::Sleep {
        tokio::time::sleep(self.failed(error))
    }

    /// The loop got through: says so if it had failed.
    pub fn succeeded(self) {
        if self.failures > 0 {
            info!(failures = self.failures, "Could {} again.", self.what);
        }
    }
}

/// Runs `attempt` until it succeeds, waiting with [`Backoff`] between failures.
pub async fn until_ok<T, E: std::fmt::Display>(
    what: &'static str,
    counter: Option<IntCounter>,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> T {
    let mut b = Backoff::new(what, counter);
    loop {
        match attempt() {
            Ok(v) => {
                b.succeeded();
                return v;
            }
            Err(e) => {
                let wait = b.wait(e);
                wait.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_every_failure_counts() {
        let c = IntCounter::new("t", "t").expect("a counter");
        let mut b = Backoff::new("test", Some(c.clone()));
        let waits: Vec<Duration> = (0..10).map(|_| b.failed("no")).collect();
        assert_eq!(waits[0], FIRST_DELAY);
        assert_eq!(waits[1], FIRST_DELAY * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().expect("ten waits"), MAX_DELAY);
        assert_eq!(c.get(), 10);
        assert_eq!(b.failures(), 10);
    }

    #[test]
    fn jittered_waits_stay_within_half_and_whole_of_each_step() {
        let policy = Policy {
            first: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: true,
        };
        let mut b = Backoff::with_policy(format!("deliver to {}", "hook"), None, policy);
        let mut step = policy.first;
        for _ in 0..12 {
            let w = b.failed("503");
            assert!(w >= step / 2 && w <= step, "{w:?} for a step of {step:?}");
            step = (step * 2).min(policy.max);
        }
        assert_eq!(b.failures(), 12);
    }

    #[tokio::test]
    async fn until_ok_retries_until_the_attempt_succeeds() {
        let c = IntCounter::new("t", "t").expect("a counter");
        let mut left = 3;
        let v = until_ok("test", Some(c.clone()), || {
            left -= 1;
            if left > 0 { Err("not yet") } else { Ok(42) }
        })
        .await;
        assert_eq!((v, c.get()), (42, 2));
    }
}

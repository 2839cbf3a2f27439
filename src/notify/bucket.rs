//! A receiver's rate limit.

use std::time::{Duration, Instant};

/// Token bucket of `per_minute` tokens refilled continuously; 0 = unlimited.
pub(super) struct Bucket {
    per_minute: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(per_minute: u32) -> Self {
        Bucket {
            per_minute,
            tokens: f64::from(per_minute),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(super) fn take(&mut self) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_rate() {
        let mut b = Bucket::new(2);
        assert!(b.take().is_none());
        assert!(b.take().is_none());
        let wait = b.take().unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(Bucket::new(0).take().is_none());
    }
}

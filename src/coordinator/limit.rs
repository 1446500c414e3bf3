//! Per-client rate limits: a token bucket per client (a token's name, or without tokens a
//! connection), refilled at `rate` trees a second up to `burst`. A client over its rate is
//! refused with RESOURCE_EXHAUSTED, the wait until its next token in the message and in the
//! `grpc-retry-pushback-ms` trailer (gRPC's retry pushback, which clients with a retry policy
//! honour).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered before full buckets are forgotten (a full bucket is the state of a client
/// never seen, so forgetting it changes nothing).
const PRUNE_ABOVE: usize = 65_536;

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` trees a second on average (above 0), in bursts of at most `burst` (at least 1).
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Takes a token for `client`, or says how long until one is available.
    pub fn take(&self, client: &str) -> Result<(), Duration> {
        self.take_at(client, Instant::now())
    }

    fn take_at(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate) < burst);
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

fn refilled(bucket: &Bucket, now: Instant, rate: f64) -> f64 {
    bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_with_the_wait_said() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take_at("a", t0), Ok(()));
        }
        // Empty: the next token is half a second away at 2 a second.
        assert_eq!(limiter.take_at("a", t0), Err(Duration::from_millis(500)));
        // Another client has its own bucket.
        assert_eq!(limiter.take_at("b", t0), Ok(()));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.take_at("a", later), Ok(()));
        assert!(limiter.take_at("a", later).is_err());
        // Idle for long: back to a full burst, no more.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.take_at("a", much_later), Ok(()));
        }
        assert!(limiter.take_at("a", much_later).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_too_many() {
        let limiter = RateLimiter::new(1000.0, 1);
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            limiter.take_at(&i.to_string(), t0).unwrap();
        }
        // A second later every bucket has refilled: all are forgotten but the newcomer.
        limiter.take_at("new", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}

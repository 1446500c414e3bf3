//! Per-client limits. A client is a token's name, or without tokens a connection
//! ([`client_key`]). It may hold at most so many trees in flight ([`PerClient::slot`]), so no
//! single client can take every tree slot; and it may be held to a rate ([`RateLimiter`]): a
//! token bucket refilled at `rate` trees a second up to `burst`. Over either, it is refused with
//! RESOURCE_EXHAUSTED; over its rate, with the wait until its next token in the message and in
//! the `grpc-retry-pushback-ms` trailer (gRPC's retry pushback, which clients with a retry policy
//! honour).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use super::auth::ClientName;
use crate::rpc::ServiceError;

/// Who a call counts against: the token's name, or without tokens the connection the call came
/// on.
pub fn client_key<T>(name: &ClientName, request: &Request<T>) -> String {
    let remote = crate::server::PeerInfo::of(request).and_then(|p| p.remote);
    match (name, remote) {
        (Some(name), _) => format!("client {name:?}"),
        (None, Some(addr)) => format!("connection {addr}"),
        (None, None) => "an unknown connection".to_string(),
    }
}

/// Each client's trees in flight, and its rate if one is set.
pub struct PerClient {
    max_in_flight: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    rate: Option<RateLimiter>,
}

impl PerClient {
    pub fn new(max_in_flight: usize, rate: Option<RateLimiter>) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            in_flight: Arc::default(),
            rate,
        }
    }

    /// Takes one of `key`'s slots for a tree, unless it holds its maximum already.
    pub fn slot(&self, key: String) -> Result<ClientSlot, ServiceError> {
        let max = self.max_in_flight;
        let mut counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= max {
            return Err(ServiceError::ResourceExhausted(format!(
                "{key} has {max} trees in flight, the most one client may have: retry when one \
                 finishes"
            )));
        }
        *n += 1;
        Ok(ClientSlot {
            counts: self.in_flight.clone(),
            client: key,
        })
    }

    /// Takes one of `key`'s tokens for a new tree, or refuses with RESOURCE_EXHAUSTED, saying how
    /// long to wait in the message and in the `grpc-retry-pushback-ms` trailer.
    pub fn admit(&self, key: &str) -> Result<(), Status> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        limiter.take(key).map_err(|wait| {
            let ms = wait.as_millis().max(1);
            let mut status = Status::resource_exhausted(format!(
                "{key} is starting trees faster than the {} a second (in bursts of {}) one \
                 client may: retry in {ms} ms",
                limiter.rate(),
                limiter.burst()
            ));
            if let Ok(value) = ms.to_string().parse() {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
            status
        })
    }
}

/// One tree's hold on its client's share of the slots, given back when dropped.
pub struct ClientSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

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

//! Per-client limits. A client is a token's name, or without tokens a connection
//! ([`client_key`]). It may hold at most so many trees in flight ([`PerClient::slot`]), so no
//! single client can take every tree slot; and it may be held to a rate ([`RateLimiter`]): a
//! token bucket refilled at `rate` trees a second up to `burst`. Over either, it is refused with
//! RESOURCE_EXHAUSTED; over its rate, with the wait until its next token in the message and in
//! the `grpc-retry-pushback-ms` trailer (gRPC's retry pushback, which clients with a retry policy
//! honour).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tonic::{Request, Status};

use super::auth::ClientName;
use crate::rpc::ServiceError;

/// Who a call counts against: the token's name, or without tokens the connection the call came
/// on. Typed rather than text, so that admitting a tree makes no string (it is printed only into
/// a refusal's message).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Named(Arc<str>),
    Connection(SocketAddr),
    Unknown,
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Named(name) => write!(f, "client {name:?}"),
            ClientKey::Connection(addr) => write!(f, "connection {addr}"),
            ClientKey::Unknown => f.write_str("an unknown connection"),
        }
    }
}

/// The [`ClientKey`] of a call by `name` (`None` without tokens).
pub fn client_key<T>(name: &ClientName, request: &Request<T>) -> ClientKey {
    match name {
        Some(name) => ClientKey::Named(name.clone()),
        None => match crate::server::PeerInfo::of(request).and_then(|p| p.remote) {
            Some(addr) => ClientKey::Connection(addr),
            None => ClientKey::Unknown,
        },
    }
}

/// Each client's trees in flight, and its rate if one is set.
///
/// The counts are in a sharded map: every tree takes and gives back a slot, and one lock for
/// all clients would be taken twice per tree by every core.
pub struct PerClient {
    max_in_flight: usize,
    in_flight: Arc<DashMap<ClientKey, usize>>,
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
    pub fn slot(&self, key: ClientKey) -> Result<ClientSlot, ServiceError> {
        let max = self.max_in_flight;
        let mut n = self.in_flight.entry(key.clone()).or_default();
        if *n >= max {
            return Err(ServiceError::ResourceExhausted(format!(
                "{key} has {max} trees in flight, the most one client may have: retry when one \
                 finishes"
            )));
        }
        *n += 1;
        drop(n);
        Ok(ClientSlot {
            counts: self.in_flight.clone(),
            client: key,
        })
    }

    /// Takes one of `key`'s tokens for a new tree, or refuses with RESOURCE_EXHAUSTED, saying how
    /// long to wait in the message and in the `grpc-retry-pushback-ms` trailer.
    pub fn admit(&self, key: &ClientKey) -> Result<(), Status> {
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
    counts: Arc<DashMap<ClientKey, usize>>,
    client: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut n) = self.counts.entry(self.client.clone()) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
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
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
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
    pub fn take(&self, client: &ClientKey) -> Result<(), Duration> {
        self.take_at(client, Instant::now())
    }

    fn take_at(&self, client: &ClientKey, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate) < burst);
        }
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
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

    fn named(name: &str) -> ClientKey {
        ClientKey::Named(name.into())
    }

    #[test]
    fn a_client_holds_at_most_its_slots_and_gives_them_back() {
        let per_client = PerClient::new(2, None);
        let alice: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let a = || ClientKey::Connection(alice);
        let (s1, s2) = (per_client.slot(a()).unwrap(), per_client.slot(a()).unwrap());
        let e = per_client.slot(a()).err().unwrap();
        assert!(
            e.to_string()
                .contains("connection 10.0.0.1:4000 has 2 trees in flight"),
            "{e}"
        );
        // Another client, another count.
        let bob = per_client.slot(named("bob")).unwrap();
        drop(s1);
        let s3 = per_client.slot(a()).unwrap();
        drop((s2, s3, bob));
        // Every slot given back: nothing is left behind for clients gone.
        assert!(per_client.in_flight.is_empty());
        assert_eq!(ClientKey::Unknown.to_string(), "an unknown connection");
        assert_eq!(named("bob").to_string(), "client \"bob\"");
    }

    #[test]
    fn a_burst_then_the_rate_with_the_wait_said() {
        let (a, b) = (&named("a"), &named("b"));
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take_at(a, t0), Ok(()));
        }
        // Empty: the next token is half a second away at 2 a second.
        assert_eq!(limiter.take_at(a, t0), Err(Duration::from_millis(500)));
        // Another client has its own bucket.
        assert_eq!(limiter.take_at(b, t0), Ok(()));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.take_at(a, later), Ok(()));
        assert!(limiter.take_at(a, later).is_err());
        // Idle for long: back to a full burst, no more.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.take_at(a, much_later), Ok(()));
        }
        assert!(limiter.take_at(a, much_later).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_too_many() {
        let limiter = RateLimiter::new(1000.0, 1);
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            limiter.take_at(&named(&i.to_string()), t0).unwrap();
        }
        // A second later every bucket has refilled: all are forgotten but the newcomer.
        limiter
            .take_at(&named("new"), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}

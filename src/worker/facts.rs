//! The worker's cache of instances, keyed by content hash, so facts cross the wire once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::domain::{Domain, Instance, InstanceId};

/// A bounded map from instance id to parsed instance, evicting the oldest insert first. Evicted
/// facts are not lost to the caller: a request that refers to them is answered with
/// `missing_facts`, and the coordinator resends the text.
pub struct FactsCache<D: Domain> {
    inner: Mutex<Inner<D>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner<D: Domain> {
    map: HashMap<InstanceId, Arc<Instance<D>>>,
    order: VecDeque<InstanceId>,
}

impl<D: Domain> FactsCache<D> {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The instance with this id, if held (counted as a hit or a miss).
    pub fn get(&self, id: &InstanceId) -> Option<Arc<Instance<D>>> {
        let found = self.lock().map.get(id).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// (hits, misses, instances held).
    pub fn counts(&self) -> (u64, u64, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.len(),
        )
    }

    pub fn insert(&self, instance: Arc<Instance<D>>) {
        let mut inner = self.lock();
        if inner.map.insert(instance.id(), instance.clone()).is_none() {
            inner.order.push_back(instance.id());
            while inner.order.len() > self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.map.remove(&old);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<D>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wildcard::Wildcard;

    #[test]
    fn evicts_the_oldest_beyond_capacity() {
        let cache = FactsCache::new(2);
        let a = Instance::generate(&Wildcard, 8, 1).unwrap();
        let b = Instance::generate(&Wildcard, 8, 2).unwrap();
        let c = Instance::generate(&Wildcard, 8, 3).unwrap();
        cache.insert(a.clone());
        cache.insert(b.clone());
        cache.insert(a.clone()); // already present: no reordering, no growth
        cache.insert(c.clone());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&a.id()).is_none());
        assert!(cache.get(&b.id()).is_some());
        assert!(cache.get(&c.id()).is_some());
    }
}

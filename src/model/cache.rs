//! The worker's encoding cache: each instance's facts encoded once per model, then reused by
//! every batch that asks about the instance.
//!
//! A question is cheap next to its instance's facts: the decoder reads one question position, the
//! encoder 65 fact positions through self-attention, and each question layer projects every fact
//! into keys and values. A worker sees the same instances again and again (every node of a tree
//! asks about the tree's instance, and many trees share instances), so the cache keeps, per
//! instance, the keys and values each question layer's cross-attention reads
//! ([`Encoded`]); a batch about known instances then runs the question decoder alone.
//!
//! **Same answers to the last bit.** An instance is always encoded on its own (never padded into a
//! batch of others), so what the cache holds is a function of the weights and the facts alone, and
//! a batch computes the same logits whether its encodings came from the cache or were computed
//! just now (`tests/model.rs` checks it bit for bit). The cache belongs to one set of weights: it
//! lives inside a [`ModelAnswerer`](super::answerer::ModelAnswerer), which serves one generation,
//! and a newly loaded generation gets an empty one.
//!
//! **Bounded by memory.** Entries are sized by their tensors' bytes (on the model's device: GPU
//! memory on a GPU) and evicted least recently used once the total passes the budget. A budget of
//! zero keeps nothing (every batch encodes its instances afresh, the same way).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::net::Encoded;
use crate::domain::InstanceId;

/// Default budget. An instance takes 65 positions × width × 4 bytes × 2 (keys, values) × question
/// layers: 256 MiB holds about 4,000 instances at the tiny preset, 670 at the medium one and 170 at
/// the paper's (a GPU worker wants more: `hch worker --encoding-cache-mib`).
pub const DEFAULT_BUDGET_BYTES: usize = 256 << 20;

/// Counters of a cache, readable without its lock (for metrics).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    /// Bytes held now, by every cache counting here (around a reload, the old generation's cache
    /// holds its encodings until its last batch ends).
    pub bytes: AtomicU64,
    /// Instances held now, likewise.
    pub entries: AtomicU64,
}

impl CacheStats {
    /// (hits, misses, evictions, bytes, entries).
    pub fn read(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.evictions.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}

struct Slot {
    encoded: Encoded,
    bytes: usize,
    /// When last used (a counter): the key of this slot in `EncodingCache::by_use`.
    used: u64,
}

/// Encoded instances of one model, least recently used evicted first once `budget` bytes are held.
pub struct EncodingCache {
    slots: HashMap<InstanceId, Slot>,
    /// Use stamp to instance: the first entry is the least recently used.
    by_use: BTreeMap<u64, InstanceId>,
    clock: u64,
    held: usize,
    budget: usize,
    stats: Arc<CacheStats>,
}

impl EncodingCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self::with_stats(budget_bytes, Arc::default())
    }

    /// A cache counting into `stats`, which may outlive it: a worker's counters run on across the
    /// generations it loads, each with an empty cache of its own (which takes back what it held
    /// from the gauges when dropped).
    pub fn with_stats(budget_bytes: usize, stats: Arc<CacheStats>) -> Self {
        Self {
            slots: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            held: 0,
            budget: budget_bytes,
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A handle to the encoding of `id` if held (marking it used), counted as a hit or a miss.
    pub fn get(&mut self, id: &InstanceId) -> Option<Encoded> {
        let Some(slot) = self.slots.get_mut(id) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.clock += 1;
        self.by_use.remove(&slot.used);
        slot.used = self.clock;
        self.by_use.insert(self.clock, *id);
        Some(slot.encoded.share())
    }

    /// Keeps `encoded` for `id`, evicting the least recently used until the budget holds. An
    /// encoding larger than the whole budget is not kept.
    pub fn insert(&mut self, id: InstanceId, encoded: &Encoded) {
        let bytes = encoded.bytes();
        if bytes > self.budget {
            return;
        }
        if let Some(old) = self.slots.remove(&id) {
            self.by_use.remove(&old.used);
            self.release(old.bytes);
        }
        while self.held + bytes > self.budget {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.release(slot.bytes);
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.clock += 1;
        self.by_use.insert(self.clock, id);
        self.slots.insert(
            id,
            Slot {
                encoded: encoded.share(),
                bytes,
                used: self.clock,
            },
        );
        self.held += bytes;
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
    }

    /// Accounts for a slot that was removed.
    fn release(&mut self, bytes: usize) {
        self.held -= bytes;
        self.stats.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        self.stats.entries.fetch_sub(1, Ordering::Relaxed);
    }

    /// Instances held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.held
    }
}

impl Drop for EncodingCache {
    fn drop(&mut self) {
        self.stats
            .bytes
            .fetch_sub(self.held as u64, Ordering::Relaxed);
        self.stats
            .entries
            .fetch_sub(self.slots.len() as u64, Ordering::Relaxed);
    }
}

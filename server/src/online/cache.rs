//! [`StateCache`]: the plain views' values writers last read or wrote, kept in
//! memory so that a push does not read RocksDB for every entity it updates.
//!
//! A push into a plain view is a read-modify-write per entity: the stored row's
//! version decides whether the pushed row is newer. Reading it from RocksDB,
//! through the memtables, every level-0 file's bloom filter and the block cache,
//! costs more than the rest of the push together. The cache holds the bytes of
//! the data keys writers touched, up to a byte budget
//! (`online_store.state_cache_mb`), in shards with their own locks. Aggregation
//! views never use it: their pushes append merge operands without reading
//! (`super::log_merge`), which the cache would not see.
//!
//! Coherence: only writers fill it, and every write of a view happens under that
//! view's lock; [`OnlineStore::commit_batch`](super::OnlineStore::commit_batch)
//! updates it after RocksDB accepted the batch, and a bulk load drops the view's
//! entries. Lookups never read it (they read RocksDB, which the cache only ever
//! mirrors). When a shard is over its budget, about a quarter of its entries are
//! dropped, whichever the hash table yields first (random eviction: cheap, and
//! with a push's keys spread across entities as good as recency).

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Bytes charged per entry on top of its key and value (table slot, boxes).
const ENTRY_OVERHEAD: usize = 64;

/// A sharded map from data key to value bytes, bounded in bytes; see the module docs.
pub(crate) struct StateCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    budget_per_shard: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<[u8]>, Box<[u8]>, RandomState>,
    bytes: usize,
}

fn charge(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Shard {
    fn remove(&mut self, key: &[u8]) {
        if let Some((k, v)) = self.map.remove_entry(key) {
            self.bytes -= charge(&k, &v);
        }
    }

    fn insert(&mut self, key: &[u8], value: &[u8], budget: usize) {
        if let Some(v) = self.map.get_mut(key) {
            if v.len() == value.len() {
                v.copy_from_slice(value);
                return;
            }
        }
        self.remove(key);
        let cost = charge(key, value);
        if cost > budget {
            return;
        }
        if self.bytes + cost > budget {
            self.evict(budget - cost);
        }
        self.bytes += cost;
        self.map.insert(key.into(), value.into());
    }

    /// Drops entries until at most `target` bytes (and at least a quarter of the
    /// entries) are gone, so evictions stay rare.
    fn evict(&mut self, target: usize) {
        let floor = target.min(self.bytes - self.bytes / 4);
        let mut bytes = self.bytes;
        self.map.retain(|k, v| {
            if bytes <= floor {
                return true;
            }
            bytes -= charge(k, v);
            false
        });
        self.bytes = bytes;
    }
}

impl StateCache {
    /// A cache of at most `budget` bytes (0 disables it).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            budget_per_shard: budget / SHARDS,
        }
    }

    fn enabled(&self) -> bool {
        self.budget_per_shard > 0
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while a shard is locked leaves a consistent map: go on with it.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value of `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !self.enabled() {
            return None;
        }
        self.shard(key).map.get(key).map(|v| v.to_vec())
    }

    /// Records that `key` holds `value` (`None`: no value) in the store.
    pub(crate) fn put(&self, key: &[u8], value: Option<&[u8]>) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.shard(key);
        match value {
            Some(v) => shard.insert(key, v, self.budget_per_shard),
            None => shard.remove(key),
        }
    }

    /// Drops every entry whose key starts with `prefix`.
    pub(crate) fn forget_prefix(&self, prefix: &[u8]) {
        if !self.enabled() {
            return;
        }
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let mut bytes = shard.bytes;
            shard.map.retain(|k, v| {
                let keep = !k.starts_with(prefix);
                if !keep {
                    bytes -= charge(k, v);
                }
                keep
            });
            shard.bytes = bytes;
        }
    }

    /// Bytes held (keys, values and the per-entry charge).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        (self.shards.iter())
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_put_and_forgets_deletes_and_prefixes() {
        let c = StateCache::new(1 << 20);
        c.put(b"a1", Some(b"x"));
        c.put(b"a2", Some(b"y"));
        c.put(b"b1", Some(b"z"));
        assert_eq!(c.get(b"a1"), Some(b"x".to_vec()));
        c.put(b"a1", Some(b"xx"));
        assert_eq!(c.get(b"a1"), Some(b"xx".to_vec()));
        c.put(b"a2", None);
        assert_eq!(c.get(b"a2"), None);
        c.forget_prefix(b"a");
        assert_eq!(c.get(b"a1"), None);
        assert_eq!(c.get(b"b1"), Some(b"z".to_vec()));
        assert_eq!(c.bytes(), charge(b"b1", b"z"));
    }

    #[test]
    fn stays_within_its_budget() {
        let budget = 64 << 10;
        let c = StateCache::new(budget);
        for i in 0..10_000u32 {
            c.put(&i.to_be_bytes(), Some(&[7u8; 100]));
            assert!(c.bytes() <= budget, "{} bytes after {i} puts", c.bytes());
        }
        // The last value written is always there (eviction happens before insert).
        assert_eq!(c.get(&9_999u32.to_be_bytes()), Some(vec![7u8; 100]));
        let held = (0..10_000u32)
            .filter(|i| c.get(&i.to_be_bytes()).is_some())
            .count();
        assert!(held > 100 && held < 10_000, "{held} entries held");
    }

    #[test]
    fn a_zero_budget_disables_it() {
        let c = StateCache::new(0);
        c.put(b"k", Some(b"v"));
        assert_eq!(c.get(b"k"), None);
    }
}

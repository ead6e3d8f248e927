//! The map under the cache's lock: domain name ([`Name`]) → value, in one hashbrown table.
//!
//! It is what `std::collections::HashMap` is (the same table, the same SipHash with a
//! per-process key, no extra bytes per entry) plus what the std map does not offer: access to a
//! bucket by its index. Eviction uses that to sample entries at random instead of taking the
//! first ones in iteration order, and the expiry sweep to walk the table a bounded slice at a
//! time, resuming where it stopped (removing an entry never moves the others). No locking here:
//! `memory.rs` owns the lock.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use super::Name;

pub struct Table<V> {
    table: HashTable<(Name, V)>,
    hasher: RandomState,
    /// State of the generator that picks buckets at random (splitmix64), seeded per process so
    /// that which entries a full cache evicts cannot be steered from outside.
    rng: u64,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        let hasher = RandomState::new();
        let rng = hasher.hash_one("eviction sample");
        Table {
            table: HashTable::new(),
            hasher,
            rng,
        }
    }
}

impl<V> Table<V> {
    // Every key is hashed as a `&str`, whether it arrives as one or as the `Name` stored.
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, key: &str) -> Option<(&Name, &V)> {
        let hash = self.hash(key);
        self.touch_home(hash);
        self.table
            .find(hash, |(k, _)| k.as_str() == key)
            .map(|(k, v)| (k, v))
    }

    /// Starts reading the bucket where a lookup of `hash` most likely ends, before the lookup
    /// has read the control bytes that say which bucket it is. hashbrown begins probing at
    /// `hash & (buckets - 1)` and puts an entry in the first free bucket from there, so at the
    /// load a large cache runs at most entries sit in that very bucket. In a cache far larger
    /// than the CPU caches both reads miss; issued together, they cost one memory latency
    /// instead of two (the bucket's address does not depend on the control bytes' value, only
    /// on a branch the CPU predicts). A wrong guess costs one wasted read, never a wrong answer.
    fn touch_home(&self, hash: u64) {
        let home = (hash as usize) & (self.table.num_buckets().wrapping_sub(1));
        if let Some((k, _)) = self.table.get_bucket(home) {
            std::hint::black_box(k.len());
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`; returns the value it replaced. Like `HashMap::insert`, a key
    /// already present keeps its first copy (the one the schedule and the journal may share).
    pub fn insert(&mut self, key: Name, value: V) -> Option<V> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(key.as_str());
        match self.table.entry(
            hash,
            |(k, _)| *k == key,
            |(k, _)| hasher.hash_one(k.as_str()),
        ) {
            Entry::Occupied(mut o) => Some(std::mem::replace(&mut o.get_mut().1, value)),
            Entry::Vacant(v) => {
                v.insert((key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let hash = self.hash(key);
        self.table
            .find_entry(hash, |(k, _)| k.as_str() == key)
            .ok()
            .map(|e| e.remove().0.1)
    }

    pub fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |(k, _)| hasher.hash_one(k.as_str()));
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Name, &V)> {
        self.table.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|(_, v)| v)
    }

    /// The range of bucket indices, occupied or not (a power of two, at most about 2.3 times
    /// the entries when the table has grown to its size, 8/7 when it was reserved at once).
    pub fn buckets(&self) -> usize {
        self.table.num_buckets()
    }

    /// The entry in bucket `index`, if that bucket is occupied.
    pub fn bucket(&self, index: usize) -> Option<(&Name, &V)> {
        self.table.get_bucket(index).map(|(k, v)| (k, v))
    }

    /// Removes the entry in bucket `index`; no other entry moves.
    pub fn remove_bucket(&mut self, index: usize) -> Option<(Name, V)> {
        self.table
            .get_bucket_entry(index)
            .ok()
            .map(|e| e.remove().0)
    }

    /// A bucket index drawn uniformly at random (occupied or not).
    pub fn random_bucket(&mut self) -> usize {
        // splitmix64: one add and three multiply-xorshifts, good enough to sample with.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Multiply-shift maps the 64 random bits onto 0..buckets without a division.
        ((u128::from(z) * self.buckets() as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_and_keeps_the_first_key() {
        let mut t: Table<u32> = Table::default();
        let first = Name::from("a-name-longer-than-23-bytes.test");
        assert_eq!(t.insert(first.clone(), 1), None);
        assert_eq!(
            t.insert("a-name-longer-than-23-bytes.test".into(), 2),
            Some(1)
        );
        let kept = t
            .get_key_value("a-name-longer-than-23-bytes.test")
            .unwrap()
            .0;
        assert!(
            std::ptr::eq(kept.as_str(), first.as_str()),
            "the first key's copy stays"
        );
        assert_eq!(t.remove("a-name-longer-than-23-bytes.test"), Some(2));
        assert_eq!(t.insert("a.test".into(), 1), None);
        assert_eq!(t.insert("a.test".into(), 2), Some(1));
        assert_eq!(t.get("a.test"), Some(&2));
        *t.get_mut("a.test").unwrap() = 3;
        assert!(t.contains_key("a.test") && !t.contains_key("b.test"));
        assert_eq!(t.remove("a.test"), Some(3));
        assert_eq!(t.remove("a.test"), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn every_entry_is_in_exactly_one_bucket_and_removal_moves_nothing() {
        let mut t: Table<usize> = Table::default();
        for i in 0..1000 {
            t.insert(format!("d{i}.test").into(), i);
        }
        let at: Vec<usize> = (0..t.buckets())
            .filter(|&b| t.bucket(b).is_some())
            .collect();
        assert_eq!(at.len(), 1000);
        let (gone, _) = t.remove_bucket(at[10]).unwrap();
        assert!(!t.contains_key(&gone));
        for &b in &at[11..] {
            let (k, v) = t.bucket(b).unwrap();
            assert_eq!(**k, format!("d{v}.test"));
        }
        assert!(t.remove_bucket(at[10]).is_none());
    }

    #[test]
    fn random_buckets_cover_the_table_evenly() {
        let mut t: Table<()> = Table::default();
        t.reserve(100);
        let n = t.buckets();
        let mut seen = vec![0u32; n];
        for _ in 0..n * 200 {
            seen[t.random_bucket()] += 1;
        }
        // 200 expected per bucket; a fair generator stays well within 100..300.
        assert!(seen.iter().all(|&c| (100..300).contains(&c)), "{seen:?}");
    }
}

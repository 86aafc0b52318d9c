//! A hash index of entries kept in a `Vec`, by a string key of the entry (a vehicle or device
//! id). Its slots hold only the entry's position: at a million vehicles, 4 bytes a slot
//! instead of a copy of the key and the value.

use ahash::RandomState;
use hashbrown::HashTable;

/// Positions of entries by key; the entries and their keys live elsewhere, and every call
/// is given `key`, which returns the key of the entry at a position.
#[derive(Debug, Default)]
pub(crate) struct IdIndex {
    state: RandomState,
    table: HashTable<u32>,
}

impl IdIndex {
    /// The position of the entry whose key is `id`.
    pub(crate) fn get<'a>(&self, id: &str, key: impl Fn(u32) -> &'a str) -> Option<u32> {
        let hash = self.state.hash_one(id);
        self.table.find(hash, |&i| key(i) == id).copied()
    }

    /// Adds entry `i`, whose key `id` is not in the index yet.
    pub(crate) fn insert<'a>(&mut self, id: &str, i: u32, key: impl Fn(u32) -> &'a str) {
        let state = &self.state;
        self.table
            .insert_unique(state.hash_one(id), i, |&j| state.hash_one(key(j)));
    }

    /// The positions in the index, in no particular order.
    pub(crate) fn positions(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_after_growing_and_nothing_else() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("K{i}")).collect();
        let mut index = IdIndex::default();
        for (i, k) in (0u32..).zip(&keys) {
            index.insert(k, i, |j| &keys[j as usize]);
        }
        for (i, k) in (0u32..).zip(&keys) {
            assert_eq!(index.get(k, |j| &keys[j as usize]), Some(i));
        }
        assert_eq!(index.get("K10000", |j| &keys[j as usize]), None);
        let mut all: Vec<u32> = index.positions().collect();
        all.sort_unstable();
        assert!(all.iter().copied().eq(0..10_000));
    }
}

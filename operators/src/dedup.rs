//! Per-device duplicate detection (SPEC §2, §4a): a reading is a duplicate if its `seq` was
//! seen recently, or if its `ts` and raw payload equal one of the device's last readings.
//!
//! State is small and fixed-size (it is kept for every device): a ring bitmap over the last
//! [`SEQ_WINDOW`] sequence numbers and a 64-bit key of (ts, payload hash) for each of the last
//! [`RECENT`] readings. A `seq` more than the window below the highest seen is a device
//! reboot: it starts a new sequence instead of dropping everything that follows.

use serde::{Deserialize, Deserializer, Serialize};

/// Sequence numbers remembered per device.
pub const SEQ_WINDOW: u64 = 1024;
/// Readings remembered for content de-duplication.
pub const RECENT: usize = 8;

const WORDS: usize = (SEQ_WINDOW / 64) as usize;

/// Duplicate detector of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dedup {
    /// The highest sequence number seen (meaningful once `has_seq`).
    max_seq: u64,
    /// Event time of the reading with `max_seq`.
    max_seq_ts: i64,
    seen: [u64; WORDS],
    /// [`recent_key`] of the last readings (0: an empty slot). One word each instead of the
    /// pair: 64 bytes less per device, which keep its state in mimalloc's 512-byte blocks.
    #[serde(deserialize_with = "recent_keys")]
    recent: [u64; RECENT],
    recent_next: u8,
    /// Whether a sequence number was seen (an `Option<u64>` would take 8 more bytes).
    has_seq: bool,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            max_seq: 0,
            max_seq_ts: i64::MIN,
            seen: [0; WORDS],
            // No reading has this key, so the empty slots match nothing.
            recent: [0; RECENT],
            recent_next: 0,
            has_seq: false,
        }
    }
}

impl Dedup {
    /// Records a reading and tells whether it is a duplicate of one seen before.
    pub fn is_duplicate(&mut self, seq: Option<u64>, ts_ms: i64, content_hash: u64) -> bool {
        let key = recent_key(ts_ms, content_hash);
        if self.recent.contains(&key) {
            return true;
        }
        if seq.is_some_and(|seq| self.seq_seen(seq, ts_ms)) {
            return true;
        }
        self.recent[usize::from(self.recent_next)] = key;
        self.recent_next = (self.recent_next + 1) % RECENT as u8;
        false
    }

    /// Checks `seq` against the window and records it. A seen `seq` with an event time after
    /// the newest sequence number's is not a re-delivery but a device that restarted its
    /// sequence (a re-delivered reading keeps its original, older time).
    fn seq_seen(&mut self, seq: u64, ts_ms: i64) -> bool {
        match self.has_seq.then_some(self.max_seq) {
            Some(max) if seq <= max && max - seq < SEQ_WINDOW => {
                if self.bit(seq) && ts_ms > self.max_seq_ts {
                    self.restart(seq, ts_ms);
                    return false;
                }
                let seen = self.bit(seq);
                self.set_bit(seq);
                seen
            }
            Some(max) if seq > max => {
                if seq - max >= SEQ_WINDOW {
                    self.seen = [0; WORDS];
                } else {
                    for s in max + 1..=seq {
                        self.clear_bit(s);
                    }
                }
                self.max_seq = seq;
                self.max_seq_ts = ts_ms;
                self.set_bit(seq);
                false
            }
            _ => {
                // First reading, or a jump far back: a (re)started sequence.
                self.restart(seq, ts_ms);
                false
            }
        }
    }

    fn restart(&mut self, seq: u64, ts_ms: i64) {
        self.seen = [0; WORDS];
        self.max_seq = seq;
        self.has_seq = true;
        self.max_seq_ts = ts_ms;
        self.set_bit(seq);
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn bit(&self, seq: u64) -> bool {
        let (w, m) = Self::slot(seq);
        self.seen[w] & m != 0
    }

    fn set_bit(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        self.seen[w] |= m;
    }

    fn clear_bit(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        self.seen[w] &= !m;
    }
}

/// A reading's event time and payload hash in one word, never 0. Two different readings share
/// a key with probability 2^-64 (the splitmix64 finalizer is a bijection, so only the xor of
/// the hash with the scaled time can collide), about as likely as two payloads sharing their
/// 64-bit hash, which the check relied on already.
fn recent_key(ts_ms: i64, content_hash: u64) -> u64 {
    let mut z = content_hash ^ (ts_ms as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// Reads the recent readings of a snapshot: keys from version 4 on, the (ts, payload hash)
/// pairs before (an empty slot had time `i64::MIN`).
fn recent_keys<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; RECENT], D::Error> {
    if crate::snapshot::body_version() >= 4 {
        return <[u64; RECENT]>::deserialize(d);
    }
    let pairs = <[(i64, u64); RECENT]>::deserialize(d)?;
    Ok(pairs.map(|(ts_ms, hash)| {
        if ts_ms == i64::MIN {
            0
        } else {
            recent_key(ts_ms, hash)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_seq_is_duplicate() {
        let mut d = Dedup::default();
        assert!(!d.is_duplicate(Some(10), 1, 1));
        assert!(!d.is_duplicate(Some(11), 2, 2));
        assert!(
            d.is_duplicate(Some(10), 1, 3),
            "a re-delivery keeps its time"
        );
        assert!(
            !d.is_duplicate(Some(9), 0, 4),
            "an unseen older seq is late, not a duplicate"
        );
        assert!(d.is_duplicate(Some(9), 0, 5));
    }

    #[test]
    fn same_ts_and_payload_without_seq_is_duplicate() {
        let mut d = Dedup::default();
        assert!(!d.is_duplicate(None, 1000, 7));
        assert!(!d.is_duplicate(None, 1000, 8), "same ts, other content");
        assert!(d.is_duplicate(None, 1000, 7));
    }

    #[test]
    fn reboot_starts_a_new_sequence() {
        let mut d = Dedup::default();
        for s in 50_000..50_010 {
            assert!(!d.is_duplicate(Some(s), s as i64, s));
        }
        for s in 0..10 {
            assert!(!d.is_duplicate(Some(s), 100 + s as i64, 100 + s), "seq {s}");
        }
        assert!(d.is_duplicate(Some(5), 1, 1));
    }

    #[test]
    fn short_reboot_within_the_window_is_a_new_sequence() {
        let mut d = Dedup::default();
        for s in 0..300 {
            assert!(!d.is_duplicate(Some(s), s as i64 * 1000, s));
        }
        // Restarted 3 hours later at seq 0: new readings, not duplicates.
        for s in 0..300 {
            let ts = 10_800_000 + s as i64 * 1000;
            assert!(!d.is_duplicate(Some(s), ts, 1000 + s), "seq {s}");
        }
        // A re-delivery of a reading of the new sequence is still a duplicate.
        assert!(d.is_duplicate(Some(5), 10_805_000, 9999));
    }

    proptest! {
        /// Without `seq`, against a reference that keeps the last [`RECENT`] (ts, hash) pairs
        /// themselves: the keys answer as the pairs do.
        #[test]
        fn recent_keys_answer_as_the_pairs(
            readings in proptest::collection::vec((0i64..20, 0u64..6), 1..300),
        ) {
            let mut d = Dedup::default();
            let mut last: std::collections::VecDeque<(i64, u64)> = Default::default();
            for (ts, hash) in readings {
                let expected = last.contains(&(ts, hash));
                prop_assert_eq!(d.is_duplicate(None, ts, hash), expected);
                if !expected {
                    if last.len() == RECENT {
                        last.pop_front();
                    }
                    last.push_back((ts, hash));
                }
            }
        }

        /// Against a reference that remembers every seq: within the window the answers agree
        /// (a re-delivered reading keeps the time it was made at).
        #[test]
        fn matches_a_set_within_the_window(seqs in proptest::collection::vec(0u64..600, 1..400)) {
            let mut d = Dedup::default();
            let mut seen = std::collections::HashSet::new();
            for (i, s) in seqs.into_iter().enumerate() {
                let expected = !seen.insert(s);
                let ts = s as i64 * 1000;
                prop_assert_eq!(d.is_duplicate(Some(s), ts, i as u64 + 1_000_000), expected);
            }
        }
    }
}

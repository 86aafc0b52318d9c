//! A counter that should only grow (the odometer, the distance since trouble codes were
//! cleared), read with glitches: a value counts only once the next reading confirms it (close
//! to it, not below it), so a single spike or dip never looks like a drop.

use serde::{Deserialize, Serialize};

use crate::packed::Packed;

/// Consecutive readings further apart than this (km) do not confirm each other.
const CONFIRM_SPAN_KM: f64 = 2_000.0;

/// A confirmed drop of the counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drop {
    /// Time of the first reading at the lower value.
    pub at_ms: i64,
    /// The last confirmed value before the drop.
    pub before: f64,
    /// The lower value.
    pub after: f64,
    /// The reading that confirmed it.
    pub confirmed_by: f64,
}

/// Confirmed state of one counter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardCounter {
    confirmed: Packed<f64>,
    previous: Packed<(i64, f64)>,
}

impl ForwardCounter {
    /// Reads the next value; returns a drop of more than `min_drop` once it is confirmed.
    pub fn observe(&mut self, ts_ms: i64, value: f64, min_drop: f64) -> Option<Drop> {
        let mut drop = None;
        // A value below the confirmed one is confirmed only by a reading that is low too: a
        // reading back at the earlier level makes it a glitch.
        let still_low = self.confirmed.get().is_none_or(|b| value < b - min_drop);
        if let Some((at_ms, candidate)) = self.previous.get()
            && value >= candidate - min_drop
            && value <= candidate + CONFIRM_SPAN_KM
            && (still_low
                || self
                    .confirmed
                    .get()
                    .is_none_or(|b| candidate >= b - min_drop))
        {
            if let Some(before) = self.confirmed.get().filter(|b| candidate < b - min_drop) {
                drop = Some(Drop {
                    at_ms,
                    before,
                    after: candidate,
                    confirmed_by: value,
                });
            }
            self.confirmed = Packed::some(candidate);
        }
        self.previous = Packed::some((ts_ms, value));
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(values: &[f64]) -> Vec<(i64, f64, f64)> {
        let mut c = ForwardCounter::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| c.observe(i as i64, *v, 1.0))
            .map(|d| (d.at_ms, d.before, d.after))
            .collect()
    }

    #[test]
    fn confirmed_drop_is_reported_at_its_first_reading() {
        assert_eq!(
            drops(&[98_350.0, 98_351.0, 44_453.0, 44_453.5, 44_454.0]),
            vec![(2, 98_350.0, 44_453.0)]
        );
    }

    #[test]
    fn single_dips_spikes_and_jumps_after_gaps_are_not_drops() {
        assert!(drops(&[49_999.0, 50_000.0, 0.0, 50_001.0, 50_002.0]).is_empty());
        assert!(drops(&[45_210.0, 45_210.5, 999_999.0, 45_211.0, 45_211.5]).is_empty());
        assert!(drops(&[45_210.0, 45_211.0, 48_000.0, 48_001.0, 48_001.5]).is_empty());
        assert!(
            drops(&[10.0, 9.5, 10.2, 9.9, 10.4]).is_empty(),
            "jitter below min_drop"
        );
    }
}

//! All vehicles of one worker, the pipeline clock, and the timer index.
//!
//! The clock follows SPEC §4: the watermark is the largest accepted event time seen anywhere in
//! the pipeline, minus the reorder window. Every worker receives, per ingest epoch, the largest
//! event times each source saw ([`EpochSample`]), so every worker computes the same clock.

use std::collections::BTreeSet;

use ahash::AHashMap as HashMap;
use std::sync::Arc;

use schemas::{Record, Reject, RejectReason};

use crate::config::{RulesConfig, secs_ms};
use crate::fences::FenceIndex;
use crate::registry::Registry;
use crate::vehicle::{Arrival, Env, Outputs, Profile, VehicleState};

/// How many of an epoch's largest event times a source reports. A few are enough to skip
/// readings that will be rejected as future timestamps and still know the epoch's maximum.
pub const SAMPLE_SIZE: usize = 16;

/// The largest event times one source decoded in one epoch, descending, at most
/// [`SAMPLE_SIZE`].
pub type EpochSample = Vec<i64>;

/// Keeps the [`SAMPLE_SIZE`] largest values of a stream of event times.
#[derive(Clone, Debug, Default)]
pub struct TopTimes(Vec<i64>);

impl TopTimes {
    /// Offers an event time.
    pub fn offer(&mut self, ts_ms: i64) {
        if self.0.len() == SAMPLE_SIZE && self.0[SAMPLE_SIZE - 1] >= ts_ms {
            return;
        }
        let at = self.0.partition_point(|t| *t > ts_ms);
        self.0.insert(at, ts_ms);
        self.0.truncate(SAMPLE_SIZE);
    }

    /// Takes the sample, leaving this empty.
    pub fn take(&mut self) -> EpochSample {
        std::mem::take(&mut self.0)
    }

    /// Whether nothing was offered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The pipeline clock, driven by epoch samples (replay: event time only, no wall clock).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineClock {
    max_accepted_ms: Option<i64>,
}

impl PipelineClock {
    /// Readings of the epoch with a later event time are rejected as `future_ts`. The
    /// reference is the largest accepted event time of the previous epochs; in the first epoch,
    /// the smallest of the epoch's [`SAMPLE_SIZE`] largest event times, which a handful of
    /// future readings cannot move.
    pub fn future_limit_ms<'a>(
        &self,
        rules: &RulesConfig,
        samples: impl IntoIterator<Item = &'a EpochSample>,
    ) -> i64 {
        let reference = self.max_accepted_ms.unwrap_or_else(|| {
            let mut top: Vec<i64> = samples.into_iter().flatten().copied().collect();
            top.sort_unstable_by(|a, b| b.cmp(a));
            top.truncate(SAMPLE_SIZE);
            top.last().copied().unwrap_or(i64::MAX)
        });
        reference.saturating_add(secs_ms(rules.max_future_s))
    }

    /// Closes an epoch with the samples of all sources and the limit the epoch was checked
    /// against.
    pub fn close_epoch<'a>(
        &mut self,
        samples: impl IntoIterator<Item = &'a EpochSample>,
        future_limit_ms: i64,
    ) {
        let epoch_max = samples
            .into_iter()
            .flat_map(|s| s.iter().copied())
            .filter(|t| *t <= future_limit_ms)
            .max();
        if let Some(m) = epoch_max {
            self.max_accepted_ms = Some(self.max_accepted_ms.map_or(m, |c| c.max(m)));
        }
    }

    /// The watermark, once anything was accepted.
    pub fn watermark_ms(&self, rules: &RulesConfig) -> Option<i64> {
        Some(self.max_accepted_ms? - rules.reorder_window_ms())
    }
}

/// Counters of one worker's fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Readings accepted (in order or late).
    pub accepted: u64,
    /// Accepted readings that were late.
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Readings rejected as future timestamps.
    pub future: u64,
    /// Readings of devices missing from the registry.
    pub unregistered: u64,
    /// Vehicles with state.
    pub vehicles: u64,
}

/// Everything a fleet step produced.
#[derive(Debug, Default)]
pub struct FleetOutputs {
    /// Alerts and archived readings.
    pub vehicle: Outputs,
    /// Readings rejected here (future timestamps).
    pub rejects: Vec<Reject>,
}

/// The vehicles of one worker.
pub struct Fleet {
    rules: Arc<RulesConfig>,
    registry: Arc<Registry>,
    fences: Arc<FenceIndex>,
    vehicles: Vec<VehicleState>,
    index: HashMap<String, u32>,
    /// (due, vehicle) of every vehicle's next timer.
    timers: BTreeSet<(i64, u32)>,
    scheduled: Vec<Option<i64>>,
    /// Vehicles with buffered readings.
    buffered: Vec<u32>,
    clock: PipelineClock,
    /// Counters.
    pub stats: FleetStats,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(rules: RulesConfig, registry: Arc<Registry>, fences: Arc<FenceIndex>) -> Self {
        Self {
            rules: Arc::new(rules),
            registry,
            fences,
            vehicles: Vec::new(),
            index: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: Vec::new(),
            buffered: Vec::new(),
            clock: PipelineClock::default(),
            stats: FleetStats::default(),
        }
    }

    /// The pipeline clock.
    pub fn clock(&self) -> &PipelineClock {
        &self.clock
    }

    /// The rule settings.
    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    fn vehicle_index(&mut self, record: &Record) -> u32 {
        if let Some(&i) = self.index.get(&record.vehicle_id) {
            return i;
        }
        let entry = self.registry.vehicle(&record.vehicle_id);
        let profile = Profile {
            loan_id: record.loan_id.clone(),
            vin: entry.and_then(|e| e.vin.clone()),
            permitted: entry
                .map(|e| {
                    e.permitted_fences
                        .iter()
                        .filter_map(|id| self.fences.lookup(id))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let i = u32::try_from(self.vehicles.len()).expect("fewer than 2^32 vehicles per worker");
        self.vehicles
            .push(VehicleState::new(record.vehicle_id.clone(), profile));
        self.scheduled.push(None);
        self.index.insert(record.vehicle_id.clone(), i);
        self.stats.vehicles += 1;
        i
    }

    /// Runs one ingest epoch: the epoch's records of this worker (any order; they are
    /// processed in input order), then the clock advances with the samples of all sources.
    pub fn run_epoch(
        &mut self,
        mut records: Vec<Record>,
        samples: &[EpochSample],
        wall_now_ms: i64,
        out: &mut FleetOutputs,
    ) {
        records.sort_unstable_by_key(|r| r.ingest_seq);
        let limit = self.clock.future_limit_ms(&self.rules, samples);
        let (rules, fences) = (Arc::clone(&self.rules), Arc::clone(&self.fences));
        let env = Env {
            rules: &rules,
            fences: &fences,
            detected_at_ms: wall_now_ms,
        };
        for record in records {
            if record.reading.ts_ms > limit {
                self.stats.future += 1;
                out.rejects.push(future_reject(&record, limit));
                continue;
            }
            if !record.registered {
                self.stats.unregistered += 1;
            }
            let v = self.vehicle_index(&record);
            let vehicle = &mut self.vehicles[v as usize];
            let had_buffered = vehicle.has_buffered();
            match vehicle.arrive(record, &env, &mut out.vehicle) {
                Arrival::Duplicate => self.stats.duplicates += 1,
                Arrival::Late => {
                    self.stats.accepted += 1;
                    self.stats.late += 1;
                }
                Arrival::Buffered => {
                    self.stats.accepted += 1;
                    if !had_buffered {
                        self.buffered.push(v);
                    }
                }
            }
        }
        self.clock.close_epoch(samples, limit);
        if let Some(watermark) = self.clock.watermark_ms(&self.rules) {
            self.advance(watermark, &env, &mut out.vehicle);
        }
    }

    /// Moves every vehicle with buffered readings or due timers to `watermark`.
    fn advance(&mut self, watermark: i64, env: &Env<'_>, out: &mut Outputs) {
        let mut still = Vec::new();
        for v in std::mem::take(&mut self.buffered) {
            let vehicle = &mut self.vehicles[v as usize];
            vehicle.advance(watermark, env, out);
            if vehicle.has_buffered() {
                still.push(v);
            }
            self.reschedule(v);
        }
        self.buffered = still;
        while let Some(&(due, v)) = self.timers.first() {
            if due > watermark {
                break;
            }
            self.timers.pop_first();
            self.scheduled[v as usize] = None;
            self.vehicles[v as usize].advance(watermark, env, out);
            self.reschedule(v);
        }
    }

    fn reschedule(&mut self, v: u32) {
        let due = self.vehicles[v as usize].next_due(&self.rules, &self.fences);
        let slot = &mut self.scheduled[v as usize];
        if *slot == due {
            return;
        }
        if let Some(old) = slot.take() {
            self.timers.remove(&(old, v));
        }
        if let Some(new) = due {
            self.timers.insert((new, v));
        }
        *slot = due;
    }

    /// End of input: processes every buffered reading. Open incidents stay open.
    pub fn finish(&mut self, wall_now_ms: i64, out: &mut FleetOutputs) {
        let (rules, fences) = (Arc::clone(&self.rules), Arc::clone(&self.fences));
        let env = Env {
            rules: &rules,
            fences: &fences,
            detected_at_ms: wall_now_ms,
        };
        for v in std::mem::take(&mut self.buffered) {
            self.vehicles[v as usize].flush(&env, &mut out.vehicle);
        }
    }
}

fn future_reject(record: &Record, limit_ms: i64) -> Reject {
    let r = &record.reading;
    Reject {
        reason: RejectReason::FutureTs.as_str().to_owned(),
        detail: format!(
            "ts {} is after the limit {} (reference clock + max_future_s); raw re-encoded from the decoded reading",
            schemas::time::rfc3339_ms(r.ts_ms),
            schemas::time::rfc3339_ms(limit_ms)
        ),
        device_id: Some(r.device_id.clone()),
        ts_ms: Some(r.ts_ms),
        received_at_ms: r.received_at_ms,
        raw: serde_json::to_vec(r).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_times_keeps_the_largest() {
        let mut t = TopTimes::default();
        for v in 0..100 {
            t.offer((v * 37) % 101);
        }
        let s = t.take();
        assert_eq!(s.len(), SAMPLE_SIZE);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(s[0], 100);
        assert!(t.is_empty());
    }

    #[test]
    fn clock_skips_future_samples() {
        let rules = RulesConfig::default();
        let mut c = PipelineClock::default();
        let day = 86_400_000;
        // First epoch: one reading 5 days ahead among ordinary ones does not move the clock.
        let first = [vec![15 * day, 10 * day], vec![10 * day - 5, 9 * day]];
        let limit = c.future_limit_ms(&rules, &first);
        assert_eq!(limit, 10 * day);
        c.close_epoch(&first, limit);
        assert_eq!(c.watermark_ms(&rules), Some(10 * day - 120_000));
        // Later epochs check against the clock so far, not against their own samples.
        let second = [vec![15 * day], vec![10 * day + 5]];
        let limit = c.future_limit_ms(&rules, &second);
        assert_eq!(limit, 11 * day);
        c.close_epoch(&second, limit);
        assert_eq!(c.watermark_ms(&rules), Some(10 * day + 5 - 120_000));
    }
}

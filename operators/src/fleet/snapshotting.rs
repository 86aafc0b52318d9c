//! A fleet snapshot encoded a slice at a time while the fleet goes on.
//!
//! Encoding a worker's whole state at a checkpoint stops the worker for as long as it takes,
//! and every reading waits behind it: about 1 s for a worker whose reorder buffers hold 400 k
//! readings (the SPEC's 2-min window at wall-clock time; `benches/README.md`). So
//! [`Fleet::begin_snapshot`](super::Fleet::begin_snapshot) writes only the header at the
//! checkpoint (clock, counters, the fences referred to, the number of vehicles), and the
//! vehicles are encoded in order between epochs; a vehicle about to change before its turn
//! is encoded first, as it was at the checkpoint (copy on write). The bytes are those
//! [`Fleet::snapshot`](super::Fleet::snapshot) gives at the checkpoint.

use ahash::AHashMap as HashMap;

use crate::snapshot::{Kind, SnapshotBytes, SnapshotError, Writer, encode_into};
use crate::vehicle::VehicleState;

use super::SnapshotHeader;

/// Bytes of body reserved per vehicle in the first piece: about 2.7 KB with a month of
/// history (`measure_snapshot_of_a_month`); a larger body takes more pieces.
const BYTES_PER_VEHICLE: usize = 2816;

/// A checkpoint's fleet snapshot, encoded.
#[derive(Debug)]
pub struct FinishedSnapshot {
    /// The checkpoint epoch it was begun at.
    pub epoch: u64,
    /// The snapshot ([`Fleet::snapshot`](super::Fleet::snapshot)'s format), or why the state
    /// could not be encoded.
    pub bytes: Result<SnapshotBytes, SnapshotError>,
}

/// A snapshot whose vehicles are still being encoded.
pub(super) struct SnapshotInProgress {
    epoch: u64,
    /// The frame, the header, then the vehicles before `next`.
    writer: Writer,
    /// Vehicles at the checkpoint: those added since are not in it.
    vehicles: u32,
    /// The next vehicle in order to encode.
    next: u32,
    /// Vehicles from `next` on, encoded before they changed.
    early: HashMap<u32, Vec<u8>>,
    /// The first encoding error: the snapshot then fails as a whole.
    error: Option<SnapshotError>,
}

impl SnapshotInProgress {
    /// A snapshot of `vehicles` with `header`, taken at checkpoint `epoch`.
    pub(super) fn start(epoch: u64, header: &SnapshotHeader, vehicles: &[VehicleState]) -> Self {
        let mut writer = Writer::new(Kind::Fleet, 256 + vehicles.len() * BYTES_PER_VEHICLE);
        let error = writer.write(header).err();
        Self {
            epoch,
            writer,
            vehicles: u32::try_from(vehicles.len()).expect("fewer than 2^32 vehicles per worker"),
            next: 0,
            early: HashMap::default(),
            error,
        }
    }

    /// Whether vehicle `v`'s state at the checkpoint is not encoded yet: it must not change
    /// before [`preserve`](Self::preserve).
    pub(super) fn waits_for(&self, v: u32) -> bool {
        v >= self.next && v < self.vehicles && !self.early.contains_key(&v)
    }

    /// Encodes vehicle `v` now if its state at the checkpoint is not encoded yet: it is about
    /// to change.
    pub(super) fn preserve(&mut self, v: u32, vehicle: &VehicleState) {
        if !self.waits_for(v) || self.error.is_some() {
            return;
        }
        let mut bytes = Vec::new();
        if let Err(e) = encode_into(Kind::Fleet, &mut bytes, vehicle) {
            self.error.get_or_insert(e);
        }
        self.early.insert(v, bytes);
    }

    /// Encodes up to `count` more vehicles in order; true when every vehicle is in.
    pub(super) fn encode_next(&mut self, vehicles: &[VehicleState], count: usize) -> bool {
        if self.error.is_some() {
            self.next = self.vehicles;
            return true;
        }
        let end = self.vehicles.min(
            self.next
                .saturating_add(u32::try_from(count).unwrap_or(u32::MAX)),
        );
        for v in self.next..end {
            if let Some(bytes) = self.early.remove(&v) {
                self.writer.append_encoded(&bytes);
            } else if let Err(e) = self.writer.write(&vehicles[v as usize]) {
                self.error.get_or_insert(e);
            }
        }
        self.next = end;
        self.next == self.vehicles
    }

    /// Encodes the vehicles not in yet and frames the snapshot.
    pub(super) fn finish(mut self, vehicles: &[VehicleState]) -> FinishedSnapshot {
        self.encode_next(vehicles, usize::MAX);
        FinishedSnapshot {
            epoch: self.epoch,
            bytes: match self.error {
                Some(e) => Err(e),
                None => Ok(self.writer.finish()),
            },
        }
    }
}

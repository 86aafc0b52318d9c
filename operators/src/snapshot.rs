//! The byte format of checkpoints of a worker's state ([`Fleet::snapshot`],
//! [`VinIndex::snapshot`]): pure encoding and decoding, no I/O.
//!
//! A snapshot is a 28-byte frame followed by a body:
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | magic: `LWFLEET\0` (a fleet) or `LWVINIX\0` (a VIN index) |
//! | 8..12 | format version, `u32` little endian ([`FORMAT_VERSION`]) |
//! | 12..20 | body length, `u64` little endian |
//! | 20..28 | xxh3-64 of the body, `u64` little endian |
//! | 28.. | body: bincode 1.3 (varint integers, little endian) |
//!
//! The body is not self-describing: any change to the serde layout of the state (a field
//! added, removed, reordered or retyped in [`VehicleState`](crate::vehicle::VehicleState) or
//! anything it holds, in [`PipelineClock`](crate::fleet::PipelineClock),
//! [`FleetStats`](crate::fleet::FleetStats) or the VIN index's claimants) must bump
//! [`FORMAT_VERSION`]; the golden snapshot test in `fleet.rs` fails until it is done. A build
//! also reads the versions back to [`OLDEST_READABLE_VERSION`] (the changed fields read the
//! old layout when [`body_version`] says so; a golden file of each such version is restored in
//! the tests), so an upgrade keeps the state; a snapshot of any other version is refused with
//! [`SnapshotError::Version`]. The magic, the length and the checksum refuse truncated,
//! foreign or corrupted bytes before anything is decoded, and decoding never panics on any
//! input.
//!
//! [`Fleet::snapshot`]: crate::fleet::Fleet::snapshot
//! [`VinIndex::snapshot`]: crate::vin_index::VinIndex::snapshot

use bincode::Options;
use bincode::de::read::SliceReader;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Version of the snapshot format this build writes.
pub const FORMAT_VERSION: u32 = 5;

/// The oldest version this build still reads, so an upgrade restores the state of the builds
/// before it. Each version differs from the next in one field, read either way through
/// [`body_version`]: 3 from 4 in the de-duplication window's recent readings
/// ([`crate::dedup::Dedup`]), 4 from 5 in the side of `geofence_exit`'s last next fix
/// ([`crate::kinds::geofence_exit::GeofenceExit`], a signed distance before).
pub const OLDEST_READABLE_VERSION: u32 = 3;

thread_local! {
    /// The format version of the body being decoded on this thread ([`Reader::read`]).
    static BODY_VERSION: std::cell::Cell<u32> = const { std::cell::Cell::new(FORMAT_VERSION) };
}

/// The format version of the snapshot body being decoded on this thread, for the few
/// `Deserialize` impls whose layout changed between readable versions; [`FORMAT_VERSION`]
/// outside a restore.
pub(crate) fn body_version() -> u32 {
    BODY_VERSION.with(std::cell::Cell::get)
}

/// Sets [`body_version`] while it lives.
struct BodyVersion(u32);

impl BodyVersion {
    fn set(version: u32) -> Self {
        Self(BODY_VERSION.with(|v| v.replace(version)))
    }
}

impl Drop for BodyVersion {
    fn drop(&mut self) {
        BODY_VERSION.with(|v| v.set(self.0));
    }
}

/// Bytes of the frame before the body.
pub const FRAME_BYTES: usize = 28;

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A worker's [`Fleet`](crate::fleet::Fleet).
    Fleet,
    /// A worker's [`VinIndex`](crate::vin_index::VinIndex).
    VinIndex,
}

impl Kind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Fleet => b"LWFLEET\0",
            Kind::VinIndex => b"LWVINIX\0",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Fleet => "fleet",
            Kind::VinIndex => "VIN index",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state could not be encoded (not expected: every part of the state encodes).
    #[error("encoding the {kind} snapshot failed: {source}")]
    Encode {
        /// What was encoded.
        kind: Kind,
        /// The encoder's error.
        source: bincode::Error,
    },
    /// The bytes do not start with the magic of this kind of snapshot.
    #[error(
        "{kind} snapshot part {part}: not a {kind} snapshot (the first 8 bytes are {found:02x?})"
    )]
    NotASnapshot {
        /// What was expected.
        kind: Kind,
        /// Index of the part in the parts given.
        part: usize,
        /// The first bytes found (fewer when the input is shorter).
        found: Vec<u8>,
    },
    /// Written by a build with another format version.
    #[error(
        "{kind} snapshot part {part}: format version {found}, but this build reads versions {oldest} to {expected}"
    )]
    Version {
        /// What was expected.
        kind: Kind,
        /// Index of the part.
        part: usize,
        /// The version in the bytes.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
        /// [`OLDEST_READABLE_VERSION`].
        oldest: u32,
    },
    /// The frame does not match the body: truncated, extended or corrupted bytes.
    #[error("{kind} snapshot part {part}: truncated or corrupt: {detail}")]
    Corrupt {
        /// What was expected.
        kind: Kind,
        /// Index of the part.
        part: usize,
        /// What does not match.
        detail: String,
    },
    /// The body passed the checksum but does not decode (written by a build whose layout
    /// differs under the same version, or damaged before it was framed).
    #[error("{kind} snapshot part {part}: cannot decode {at}: {source}")]
    Decode {
        /// What was expected.
        kind: Kind,
        /// Index of the part.
        part: usize,
        /// What was being decoded, e.g. `vehicle 17 of 250 (after "V0016")`.
        at: String,
        /// The decoder's error.
        source: bincode::Error,
    },
    /// Two parts (or one part twice) hold the same vehicle: the parts are not the snapshots
    /// of the distinct workers of one checkpoint.
    #[error(
        "fleet snapshot parts {first} and {second} both hold vehicle {vehicle_id:?}: not the parts of one checkpoint"
    )]
    DuplicateVehicle {
        /// The vehicle.
        vehicle_id: String,
        /// The part it was found in first.
        first: usize,
        /// The part it was found in again.
        second: usize,
    },
}

fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
}

/// Appends `value` to `buf` as [`Writer::write`] appends it to a snapshot of `kind`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    kind: Kind,
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), SnapshotError> {
    options()
        .serialize_into(buf, value)
        .map_err(|source| SnapshotError::Encode { kind, source })
}

/// Body bytes per piece of a [`SnapshotBytes`]: a worker's fleet snapshot runs to tens of MB
/// (the reorder buffers of the 2-min window), and one buffer grown to that size is copied
/// whole at every doubling, which stopped a worker for 0.1–0.4 s on the machine of
/// `benches/README.md`. Pieces are never copied again: the object store takes them as they are.
const PIECE_BYTES: usize = 1 << 20;

/// Room a piece keeps past [`PIECE_BYTES`] for the value that crosses it (a vehicle is a few
/// KB), so that a piece is not reallocated.
const PIECE_SLACK: usize = 64 << 10;

/// An encoded snapshot, in pieces to be stored one after the other: the frame, then the body.
#[derive(Clone, Debug)]
pub struct SnapshotBytes {
    pieces: Vec<Vec<u8>>,
}

impl SnapshotBytes {
    /// Length in bytes, frame included.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    /// Whether there are no bytes (never, for a finished snapshot: the frame is there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, in order.
    pub fn into_pieces(self) -> Vec<Vec<u8>> {
        self.pieces
    }

    /// The bytes in one buffer (tests, small snapshots).
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

/// Builds a snapshot: the frame, then values appended one by one.
pub(crate) struct Writer {
    kind: Kind,
    /// Full pieces of the body.
    pieces: Vec<Vec<u8>>,
    /// The piece being written.
    piece: Vec<u8>,
    /// Of the full pieces.
    hasher: Xxh3,
    len: u64,
}

impl Writer {
    /// A snapshot of `kind` with room for about `capacity` bytes of body in its first piece.
    pub(crate) fn new(kind: Kind, capacity: usize) -> Self {
        Self {
            kind,
            pieces: Vec::new(),
            piece: Vec::with_capacity(capacity.min(PIECE_BYTES + PIECE_SLACK)),
            hasher: Xxh3::new(),
            len: 0,
        }
    }

    /// Appends one value to the body.
    pub(crate) fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SnapshotError> {
        encode_into(self.kind, &mut self.piece, value)?;
        self.seal_if_full();
        Ok(())
    }

    /// Appends values [`encode_into`] encoded for a snapshot of this kind.
    pub(crate) fn append_encoded(&mut self, encoded: &[u8]) {
        self.piece.extend_from_slice(encoded);
        self.seal_if_full();
    }

    fn seal_if_full(&mut self) {
        if self.piece.len() >= PIECE_BYTES {
            self.seal(Vec::with_capacity(PIECE_BYTES + PIECE_SLACK));
        }
    }

    /// Ends the piece being written, continuing in `next`.
    fn seal(&mut self, next: Vec<u8>) {
        let full = std::mem::replace(&mut self.piece, next);
        self.hasher.update(&full);
        self.len += full.len() as u64;
        self.pieces.push(full);
    }

    /// The frame and the body.
    pub(crate) fn finish(mut self) -> SnapshotBytes {
        if !self.piece.is_empty() {
            self.seal(Vec::new());
        }
        let mut frame = Vec::with_capacity(FRAME_BYTES);
        frame.extend_from_slice(self.kind.magic());
        frame.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        frame.extend_from_slice(&self.len.to_le_bytes());
        frame.extend_from_slice(&self.hasher.digest().to_le_bytes());
        let mut pieces = Vec::with_capacity(1 + self.pieces.len());
        pieces.push(frame);
        pieces.append(&mut self.pieces);
        SnapshotBytes { pieces }
    }
}

/// Reads the body of one checked snapshot, value by value.
pub(crate) struct Reader<'a> {
    kind: Kind,
    part: usize,
    version: u32,
    de: bincode::Deserializer<SliceReader<'a>, bincode::DefaultOptions>,
}

impl<'a> Reader<'a> {
    /// Checks the frame of `bytes`, part `part` of a restore, and opens its body.
    pub(crate) fn open(kind: Kind, part: usize, bytes: &'a [u8]) -> Result<Self, SnapshotError> {
        let corrupt = |detail: String| SnapshotError::Corrupt { kind, part, detail };
        let magic = bytes.get(..8).unwrap_or(bytes);
        if magic != kind.magic() {
            return Err(SnapshotError::NotASnapshot {
                kind,
                part,
                found: magic.to_vec(),
            });
        }
        let word = |at: usize, what: &str| {
            bytes.get(at..at + 8).map_or_else(
                || {
                    Err(corrupt(format!(
                        "{} bytes, too short for the {what}",
                        bytes.len()
                    )))
                },
                |b| Ok(u64::from_le_bytes(b.try_into().unwrap_or_default())),
            )
        };
        let version = bytes
            .get(8..12)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| corrupt(format!("{} bytes, too short for the version", bytes.len())))?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::Version {
                kind,
                part,
                found: version,
                expected: FORMAT_VERSION,
                oldest: OLDEST_READABLE_VERSION,
            });
        }
        let len = word(12, "body length")?;
        let sum = word(20, "checksum")?;
        let body = &bytes[FRAME_BYTES..];
        if body.len() as u64 != len {
            return Err(corrupt(format!(
                "the frame announces {len} bytes of body, {} follow",
                body.len()
            )));
        }
        if xxh3_64(body) != sum {
            return Err(corrupt("the body does not match its checksum".to_owned()));
        }
        Ok(Self {
            kind,
            part,
            version,
            de: bincode::Deserializer::from_slice(body, bincode::DefaultOptions::new()),
        })
    }

    /// Decodes the next value; `at` names it in the error.
    pub(crate) fn read<T: Deserialize<'a>>(
        &mut self,
        at: impl FnOnce() -> String,
    ) -> Result<T, SnapshotError> {
        let _version = BodyVersion::set(self.version);
        T::deserialize(&mut self.de).map_err(|source| SnapshotError::Decode {
            kind: self.kind,
            part: self.part,
            at: at(),
            source,
        })
    }

    /// Checks that the body was read to its end.
    pub(crate) fn finish(mut self) -> Result<(), SnapshotError> {
        match u8::deserialize(&mut self.de) {
            Err(_) => Ok(()),
            Ok(_) => Err(SnapshotError::Corrupt {
                kind: self.kind,
                part: self.part,
                detail: "bytes left after the last value".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Kind::VinIndex, 16);
        w.write(&(7u64, "seven", f64::NAN)).expect("encodes");
        w.finish().to_vec()
    }

    fn read(bytes: &[u8]) -> Result<(u64, String, f64), SnapshotError> {
        let mut r = Reader::open(Kind::VinIndex, 3, bytes)?;
        let v = r.read(|| "the tuple".to_owned())?;
        r.finish()?;
        Ok(v)
    }

    #[test]
    fn round_trip_keeps_nan() {
        let (n, s, f) = read(&sample()).expect("reads");
        assert_eq!((n, s.as_str()), (7, "seven"));
        assert!(f.is_nan());
    }

    #[test]
    fn every_damage_is_an_error() {
        let good = sample();
        // Another kind, another version, any truncation, any flipped bit, trailing bytes.
        let fleet = Reader::open(Kind::Fleet, 0, &good).err();
        assert!(
            matches!(fleet, Some(SnapshotError::NotASnapshot { .. })),
            "{fleet:?}"
        );
        let mut old = good.clone();
        old[8..12].copy_from_slice(&0u32.to_le_bytes());
        let e = read(&old).expect_err("old version");
        assert!(
            matches!(
                e,
                SnapshotError::Version {
                    found: 0,
                    part: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("format version 0"), "{e}");
        for cut in 0..good.len() {
            assert!(read(&good[..cut]).is_err(), "cut at {cut}");
        }
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                // A flip to another readable version is read in that version's layout, which
                // this sample's body shares (the checksum covers the body only).
                let version = u32::from_le_bytes(bad[8..12].try_into().expect("4 bytes"));
                if (8..12).contains(&byte)
                    && (OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version)
                {
                    continue;
                }
                assert!(read(&bad).is_err(), "bit {bit} of byte {byte}");
            }
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(read(&long), Err(SnapshotError::Corrupt { .. })));
    }

    #[test]
    fn a_well_framed_body_of_another_layout_is_a_decode_error() {
        let mut w = Writer::new(Kind::VinIndex, 16);
        w.write(&(7u64, "seven")).expect("encodes");
        let e = read(&w.finish().to_vec()).expect_err("too short a body");
        assert!(matches!(e, SnapshotError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains("the tuple"), "{e}");
        let mut w = Writer::new(Kind::VinIndex, 16);
        w.write(&(7u64, "seven", 1.0f64, 9u8)).expect("encodes");
        let e = read(&w.finish().to_vec()).expect_err("trailing value");
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e:?}");
    }

    #[test]
    fn a_body_in_pieces_is_the_body_in_one() {
        // 5 000 values of ~1 KB: several pieces, each filled without a reallocation.
        let values: Vec<(u32, String)> = (0..5_000u32)
            .map(|i| {
                (
                    i,
                    char::from(b'a' + (i % 26) as u8).to_string().repeat(1000),
                )
            })
            .collect();
        let mut w = Writer::new(Kind::VinIndex, 16);
        for v in &values {
            w.write(v).expect("encodes");
        }
        let bytes = w.finish();
        let pieces = bytes.clone().into_pieces();
        assert!(pieces.len() >= 5, "{} pieces", pieces.len());
        assert_eq!(pieces[0].len(), FRAME_BYTES);
        for piece in &pieces[1..] {
            assert!(piece.len() < PIECE_BYTES + PIECE_SLACK, "{}", piece.len());
            assert!(
                piece.capacity() <= PIECE_BYTES + PIECE_SLACK,
                "{}",
                piece.capacity()
            );
        }
        let whole = bytes.to_vec();
        assert_eq!(whole.len(), bytes.len());
        let mut r = Reader::open(Kind::VinIndex, 0, &whole).expect("frame and checksum agree");
        for v in &values {
            let read: (u32, String) = r.read(|| "a value".to_owned()).expect("reads");
            assert!(&read == v);
        }
        r.finish().expect("nothing after");
    }
}

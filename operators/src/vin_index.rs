//! `duplicate_collateral` (docs/rules.md): the fleet-wide index of who claims which VIN.
//!
//! Vehicles send a [`VinClaim`] when a device's OBD VIN changes and when their registered VIN
//! first shows or changes; claims are exchanged by VIN, so each worker holds the VINs it owns.
//! A claim meets the VIN's owners — the vehicles registered with it, else the vehicles that
//! claimed it before — and raises the alert when an owner is under another loan.

use ahash::AHashMap as HashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::alert::alert_id;
use schemas::{Alert, AlertKind, Phase, Severity};

use crate::ctx::evidence;
use crate::registry::Registry;
use crate::snapshot::{Kind, Reader, SnapshotBytes, SnapshotError, Writer};

/// Where a claimed VIN comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimSource {
    /// Read over OBD.
    Reported,
    /// The vehicle's registry row.
    Registered,
}

impl ClaimSource {
    fn as_str(self) -> &'static str {
        match self {
            ClaimSource::Reported => "reported",
            ClaimSource::Registered => "registered",
        }
    }
}

/// A registered vehicle saying a VIN is its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VinClaim {
    /// The VIN.
    pub vin: String,
    /// The claiming vehicle.
    pub vehicle_id: String,
    /// Its loan.
    pub loan_id: String,
    /// The device whose reading made the claim.
    pub device_id: String,
    /// Event time of that reading.
    pub ts_ms: i64,
    /// The vehicle's last valid position then.
    pub position: Option<(f64, f64)>,
    /// Reported or registered.
    pub source: ClaimSource,
}

/// A vehicle that claimed a VIN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Claimant {
    vehicle_id: String,
    loan_id: String,
    /// The device, position and source of its latest claim.
    device_id: String,
    position: Option<(f64, f64)>,
    source: ClaimSource,
    alerted: bool,
}

/// The VINs one worker owns.
#[derive(Debug, Default)]
pub struct VinIndex {
    claims: HashMap<String, Vec<Claimant>>,
}

/// Another vehicle under another loan with the same VIN.
struct Other {
    vehicle_id: String,
    loan_id: String,
    source: ClaimSource,
}

fn owner_under_other_loan(
    registry: &Registry,
    claimants: &[Claimant],
    vehicle_id: &str,
    loan_id: &str,
    vin: &str,
) -> Option<Other> {
    // The registered owners decide when there are any; otherwise the first claimant owns it.
    let mut registered = registry.vehicles_with_vin(vin).peekable();
    if registered.peek().is_some() {
        return registered
            .find(|v| &*v.loan_id != loan_id && &*v.vehicle_id != vehicle_id)
            .map(|v| Other {
                vehicle_id: v.vehicle_id.to_string(),
                loan_id: v.loan_id.to_string(),
                source: ClaimSource::Registered,
            });
    }
    claimants
        .iter()
        .find(|c| c.loan_id != loan_id && c.vehicle_id != vehicle_id)
        .map(|c| Other {
            vehicle_id: c.vehicle_id.clone(),
            loan_id: c.loan_id.clone(),
            source: ClaimSource::Reported,
        })
}

#[allow(clippy::too_many_arguments)]
fn alert(
    vin: &str,
    vehicle_id: &str,
    loan_id: &str,
    device_id: &str,
    ts_ms: i64,
    position: Option<(f64, f64)>,
    source: ClaimSource,
    other: &Other,
    detected_at_ms: i64,
) -> Alert {
    let (lat, lon) = position.unzip();
    Alert {
        alert_id: alert_id(vehicle_id, AlertKind::DuplicateCollateral, ts_ms),
        kind: AlertKind::DuplicateCollateral,
        phase: Phase::Instant,
        severity: Severity::Critical,
        vehicle_id: vehicle_id.to_owned(),
        loan_id: Some(loan_id.to_owned()),
        device_id: device_id.to_owned(),
        event_time_ms: ts_ms,
        detected_at_ms,
        lat,
        lon,
        backfill: false,
        evidence: evidence(json!({
            "vin": vin,
            "source": source.as_str(),
            "other_vehicle_id": other.vehicle_id,
            "other_loan_id": other.loan_id,
            "other_source": other.source.as_str(),
        })),
    }
}

impl VinIndex {
    /// Takes a claim; returns the alert it raises, if any.
    pub fn claim(
        &mut self,
        c: &VinClaim,
        registry: &Registry,
        detected_at_ms: i64,
    ) -> Option<Alert> {
        let claimants = self.claims.entry(c.vin.clone()).or_default();
        let other = owner_under_other_loan(registry, claimants, &c.vehicle_id, &c.loan_id, &c.vin);
        let i = match claimants.iter().position(|x| x.vehicle_id == c.vehicle_id) {
            Some(i) => {
                // A vehicle moved to another loan starts over under it.
                if claimants[i].loan_id != c.loan_id {
                    claimants[i].loan_id = c.loan_id.clone();
                    claimants[i].alerted = false;
                }
                claimants[i].device_id.clone_from(&c.device_id);
                claimants[i].position = c.position;
                claimants[i].source = c.source;
                i
            }
            None => {
                claimants.push(Claimant {
                    vehicle_id: c.vehicle_id.clone(),
                    loan_id: c.loan_id.clone(),
                    device_id: c.device_id.clone(),
                    position: c.position,
                    source: c.source,
                    alerted: false,
                });
                claimants.len() - 1
            }
        };
        let other = other.filter(|_| !claimants[i].alerted)?;
        claimants[i].alerted = true;
        Some(alert(
            &c.vin,
            &c.vehicle_id,
            &c.loan_id,
            &c.device_id,
            c.ts_ms,
            c.position,
            c.source,
            &other,
            detected_at_ms,
        ))
    }

    /// The registry changed: earlier claims that now meet an owner under another loan raise
    /// their alert at once, at event time `now_ms` (the pipeline clock).
    pub fn registry_changed(
        &mut self,
        registry: &Registry,
        now_ms: i64,
        detected_at_ms: i64,
        out: &mut Vec<Alert>,
    ) {
        // In VIN order, so the alerts do not depend on the hash map's.
        let mut vins: Vec<(&String, &mut Vec<Claimant>)> = self.claims.iter_mut().collect();
        vins.sort_by(|a, b| a.0.cmp(b.0));
        for (vin, claimants) in vins {
            for i in 0..claimants.len() {
                let (earlier, rest) = claimants.split_at_mut(i);
                let c = &mut rest[0];
                if c.alerted {
                    continue;
                }
                if let Some(other) =
                    owner_under_other_loan(registry, earlier, &c.vehicle_id, &c.loan_id, vin)
                {
                    c.alerted = true;
                    out.push(alert(
                        vin,
                        &c.vehicle_id,
                        &c.loan_id,
                        &c.device_id,
                        now_ms,
                        c.position,
                        c.source,
                        &other,
                        detected_at_ms,
                    ));
                }
            }
        }
    }
}

impl VinIndex {
    /// The index as bytes ([`crate::snapshot`] describes the format): every VIN with its
    /// claimants in claim order, VINs sorted. The registry is not in it.
    pub fn snapshot(&self) -> Result<SnapshotBytes, SnapshotError> {
        let mut vins: Vec<(&String, &Vec<Claimant>)> = self.claims.iter().collect();
        vins.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut w = Writer::new(Kind::VinIndex, 128 * vins.len());
        w.write(&(vins.len() as u64))?;
        for entry in vins {
            w.write(&entry)?;
        }
        Ok(w.finish())
    }

    /// An index from the snapshots of one or more workers' indexes, keeping the VINs for
    /// which `keep(vin)` holds (the dataflow routes a claim to worker
    /// `id_key(vin) % workers`, [`crate::dataflow::id_key`]). A VIN in several parts (not
    /// expected: each worker owns its VINs) gets the claimants of the first part first, then
    /// those of later parts that are not already there, so its first claimant stays its
    /// owner.
    pub fn restore(
        parts: &[&[u8]],
        keep: impl Fn(&str) -> bool,
    ) -> Result<VinIndex, SnapshotError> {
        let mut index = VinIndex::default();
        for (part, bytes) in parts.iter().enumerate() {
            let mut reader = Reader::open(Kind::VinIndex, part, bytes)?;
            let count: u64 = reader.read(|| "the number of VINs".to_owned())?;
            for i in 0..count {
                let (vin, claimants): (String, Vec<Claimant>) =
                    reader.read(|| format!("VIN {} of {count}", i + 1))?;
                if !keep(&vin) {
                    continue;
                }
                let held = index.claims.entry(vin).or_default();
                for c in claimants {
                    if held.iter().all(|h| h.vehicle_id != c.vehicle_id) {
                        held.push(c);
                    }
                }
            }
            reader.finish()?;
        }
        Ok(index)
    }

    /// VINs held.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether no VIN is held.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(rows: &str) -> Registry {
        Registry::from_csv_str(
            &format!(
                "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n{rows}"
            ),
            "v.csv",
        )
        .expect("valid registry")
    }

    fn claim(vehicle: &str, loan: &str, vin: &str, ts: i64, source: ClaimSource) -> VinClaim {
        VinClaim {
            vin: vin.into(),
            vehicle_id: vehicle.into(),
            loan_id: loan.into(),
            device_id: format!("D-{vehicle}"),
            ts_ms: ts,
            position: None,
            source,
        }
    }

    #[test]
    fn a_reported_vin_registered_to_another_loan_fires_once() {
        let reg = registry("A,LA,DA,VINA,obd,,\nB,LB,DB,VINB,obd,,\n");
        let mut idx = VinIndex::default();
        assert!(
            idx.claim(
                &claim("B", "LB", "VINB", 1, ClaimSource::Registered),
                &reg,
                0
            )
            .is_none()
        );
        let a = idx
            .claim(&claim("A", "LA", "VINB", 2, ClaimSource::Reported), &reg, 0)
            .expect("duplicate");
        assert_eq!(a.vehicle_id, "A");
        assert_eq!(a.device_id, "D-A");
        assert_eq!(a.evidence["other_vehicle_id"], "B");
        assert_eq!(a.evidence["other_loan_id"], "LB");
        assert!(
            idx.claim(&claim("A", "LA", "VINB", 3, ClaimSource::Reported), &reg, 0)
                .is_none()
        );
        // Its own VIN is no duplicate.
        assert!(
            idx.claim(&claim("A", "LA", "VINA", 4, ClaimSource::Reported), &reg, 0)
                .is_none()
        );
    }

    #[test]
    fn a_double_registration_fires_for_each_vehicle() {
        let reg = registry("C,LC,DC,VINX,obd,,\nD,LD,DD,VINX,obd,,\n");
        let mut idx = VinIndex::default();
        let c = idx.claim(
            &claim("C", "LC", "VINX", 5, ClaimSource::Registered),
            &reg,
            0,
        );
        let d = idx.claim(
            &claim("D", "LD", "VINX", 6, ClaimSource::Registered),
            &reg,
            0,
        );
        assert_eq!(c.expect("C").evidence["other_vehicle_id"], "D");
        assert_eq!(d.expect("D").evidence["other_vehicle_id"], "C");
    }

    #[test]
    fn unregistered_vins_belong_to_the_first_claimant_and_reloads_fire_at_once() {
        let empty = registry("");
        let mut idx = VinIndex::default();
        assert!(
            idx.claim(
                &claim("E", "LE", "VINZ", 1, ClaimSource::Reported),
                &empty,
                0
            )
            .is_none()
        );
        let f = idx.claim(
            &claim("F", "LF", "VINZ", 2, ClaimSource::Reported),
            &empty,
            0,
        );
        assert_eq!(f.expect("F").evidence["other_vehicle_id"], "E");
        // VINQ is reported by G; a reload registers it to H under another loan.
        assert!(
            idx.claim(
                &claim("G", "LG", "VINQ", 3, ClaimSource::Reported),
                &empty,
                0
            )
            .is_none()
        );
        let reloaded = registry("H,LH,DH,VINQ,obd,,\n");
        let mut out = Vec::new();
        idx.registry_changed(&reloaded, 100, 0, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].vehicle_id, "G");
        assert_eq!(out[0].event_time_ms, 100);
        assert_eq!(out[0].evidence["other_vehicle_id"], "H");
    }

    /// An index with several VINs: owners, duplicates already alerted, a vehicle moved to
    /// another loan.
    fn busy(reg: &Registry) -> VinIndex {
        let mut idx = VinIndex::default();
        let claims = [
            ("B", "LB", "VINB", ClaimSource::Registered),
            ("A", "LA", "VINB", ClaimSource::Reported),
            ("E", "LE", "VINZ", ClaimSource::Reported),
            ("F", "LF", "VINZ", ClaimSource::Reported),
            ("G", "LG", "VINQ", ClaimSource::Reported),
            ("A", "LA", "VINA", ClaimSource::Registered),
        ];
        for (i, (v, l, vin, source)) in claims.into_iter().enumerate() {
            let mut c = claim(v, l, vin, i as i64, source);
            c.position = Some((31.0 + i as f64, f64::NAN));
            idx.claim(&c, reg, 0);
        }
        for n in 0..40 {
            idx.claim(
                &claim(
                    &format!("V{n}"),
                    "LV",
                    &format!("VIN{n:03}"),
                    100,
                    ClaimSource::Reported,
                ),
                reg,
                0,
            );
        }
        idx
    }

    /// What the index answers next: the alerts of further claims and of a reload.
    fn answers(idx: &mut VinIndex) -> Vec<String> {
        let reg = registry("A,LA,DA,VINA,obd,,\nB,LB,DB,VINB,obd,,\nH,LH,DH,VINQ,obd,,\n");
        let mut out: Vec<Alert> = [
            claim("C", "LC", "VINB", 50, ClaimSource::Reported),
            claim("A", "LA", "VINB", 51, ClaimSource::Reported),
            claim("E2", "LE2", "VINZ", 52, ClaimSource::Reported),
            claim("V7", "LW", "VIN007", 53, ClaimSource::Reported),
        ]
        .iter()
        .filter_map(|c| idx.claim(c, &reg, 9))
        .collect();
        idx.registry_changed(&reg, 60, 9, &mut out);
        out.iter().map(|a| format!("{a:?}")).collect()
    }

    #[test]
    fn a_restored_index_answers_as_the_original() {
        let reg = registry("A,LA,DA,VINA,obd,,\nB,LB,DB,VINB,obd,,\n");
        let original = busy(&reg);
        let bytes = original.snapshot().expect("snapshot").to_vec();
        let mut restored = VinIndex::restore(&[&bytes], |_| true).expect("restore");
        assert_eq!(restored.len(), original.len());
        assert!(restored.snapshot().expect("snapshot").to_vec() == bytes);
        let mut original = original;
        let expected = answers(&mut original);
        assert!(expected.len() >= 3, "{expected:#?}");
        assert_eq!(answers(&mut restored), expected);
    }

    #[test]
    fn parts_split_by_vin_merge_back() {
        let reg = registry("A,LA,DA,VINA,obd,,\nB,LB,DB,VINB,obd,,\n");
        let whole = busy(&reg).snapshot().expect("snapshot").to_vec();
        // Three workers' shares of the VINs, then merged onto two.
        let owner = |vin: &str, n: u64| crate::dataflow::id_key(vin) % n;
        let shares: Vec<Vec<u8>> = (0..3)
            .map(|j| {
                VinIndex::restore(&[&whole], |vin| owner(vin, 3) == j)
                    .expect("restore")
                    .snapshot()
                    .expect("snapshot")
                    .to_vec()
            })
            .collect();
        let shares: Vec<&[u8]> = shares.iter().map(Vec::as_slice).collect();
        let two: Vec<VinIndex> = (0..2)
            .map(|j| VinIndex::restore(&shares, |vin| owner(vin, 2) == j).expect("restore"))
            .collect();
        assert_eq!(two.iter().map(VinIndex::len).sum::<usize>(), 44);
        for (j, idx) in two.iter().enumerate() {
            assert!(!idx.is_empty());
            assert!(idx.claims.keys().all(|vin| owner(vin, 2) == j as u64));
        }
        let parts: Vec<Vec<u8>> = two
            .iter()
            .map(|i| i.snapshot().expect("snapshot").to_vec())
            .collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let merged = VinIndex::restore(&parts, |_| true).expect("restore");
        assert!(merged.snapshot().expect("snapshot").to_vec() == whole);
    }

    #[test]
    fn a_vin_in_two_parts_keeps_its_first_claimant_first() {
        let empty = registry("");
        let mut first = VinIndex::default();
        first.claim(
            &claim("E", "LE", "VINZ", 1, ClaimSource::Reported),
            &empty,
            0,
        );
        let mut second = VinIndex::default();
        second.claim(
            &claim("F", "LF", "VINZ", 2, ClaimSource::Reported),
            &empty,
            0,
        );
        second.claim(
            &claim("E", "LE", "VINZ", 3, ClaimSource::Reported),
            &empty,
            0,
        );
        let (a, b) = (
            first.snapshot().expect("snapshot").to_vec(),
            second.snapshot().expect("snapshot").to_vec(),
        );
        let mut merged = VinIndex::restore(&[&a, &b], |_| true).expect("restore");
        let holders: Vec<&str> = merged.claims["VINZ"]
            .iter()
            .map(|c| c.vehicle_id.as_str())
            .collect();
        assert_eq!(holders, ["E", "F"]);
        // E owns it: a new claimant under another loan meets E.
        let g = merged
            .claim(
                &claim("G", "LG", "VINZ", 4, ClaimSource::Reported),
                &empty,
                0,
            )
            .expect("duplicate");
        assert_eq!(g.evidence["other_vehicle_id"], "E");
    }

    #[test]
    fn damaged_or_foreign_bytes_are_errors() {
        let reg = registry("A,LA,DA,VINA,obd,,\nB,LB,DB,VINB,obd,,\n");
        let bytes = busy(&reg).snapshot().expect("snapshot").to_vec();
        for cut in 0..bytes.len() {
            assert!(
                VinIndex::restore(&[&bytes[..cut]], |_| true).is_err(),
                "cut {cut}"
            );
        }
        for byte in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[byte] ^= 0x10;
            assert!(VinIndex::restore(&[&bad], |_| true).is_err(), "byte {byte}");
        }
        let mut old = bytes.clone();
        old[8] = old[8].wrapping_add(1);
        let e = VinIndex::restore(&[&bytes, &old], |_| true).expect_err("another version");
        assert!(
            matches!(e, crate::snapshot::SnapshotError::Version { part: 1, .. }),
            "{e}"
        );
        assert!(VinIndex::restore(&[b"LWFLEET\0"], |_| true).is_err());
        assert!(
            VinIndex::restore(&[], |_| true)
                .expect("no parts")
                .is_empty()
        );
    }
}

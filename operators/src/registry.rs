//! The vehicle registry (SPEC §3): the validated contents of `vehicles.csv`, mapping each
//! device to its vehicle and each vehicle to its loan, VIN, permitted fences and time zone.
//!
//! The file has a header naming the columns `vehicle_id`, `loan_id`, `device_id`, `vin`,
//! `device_class`, `permitted_fences` and `timezone`, in any order (other columns are
//! ignored), and one row per device. Fields are trimmed.

use ahash::AHashMap as HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono_tz::Tz;
use schemas::{DeviceClass, Reading, Record};

use crate::fences::{FenceIndex, FenceRole};
use crate::id_index::IdIndex;

/// Time zone of a vehicle whose `timezone` field is empty.
pub const DEFAULT_TIMEZONE: Tz = Tz::Asia__Shanghai;

/// One registered device.
///
/// Ids are `Arc<str>` shared with the vehicle's entry, the records of its readings and the
/// vehicle's state, so that a reading costs no copy of them and a million vehicles keep one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device's id, as in the telemetry topic.
    pub device_id: Arc<str>,
    /// The vehicle it is fitted to.
    pub vehicle_id: Arc<str>,
    /// The vehicle's loan (so identifying a reading takes one lookup).
    pub loan_id: Arc<str>,
    /// Kind of tracker.
    pub class: DeviceClass,
}

/// One registered vehicle (all rows sharing its `vehicle_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VehicleEntry {
    /// The vehicle's id.
    pub vehicle_id: Arc<str>,
    /// The loan the vehicle is pledged for.
    pub loan_id: Arc<str>,
    /// Registered VIN, uppercase; `None` when unknown.
    pub vin: Option<Arc<str>>,
    /// Ids of the fences it may stay in, sorted and without duplicates; empty = anywhere.
    pub permitted_fences: Vec<String>,
    /// Time zone defining its local day and night.
    pub timezone: Tz,
}

/// Why a field of a row was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FieldProblem {
    /// A required field is empty.
    #[error("must not be empty")]
    Empty,
    /// `device_class` is not `wired`, `obd` or `wireless`.
    #[error("unknown device class \"{0}\" (expected wired, obd or wireless)")]
    UnknownDeviceClass(String),
    /// `timezone` is not an IANA time zone name.
    #[error("unknown time zone \"{0}\" (expected an IANA name such as Asia/Shanghai)")]
    UnknownTimezone(String),
    /// The device id is on an earlier row too.
    #[error("device \"{device_id}\" is already listed on line {other_line}")]
    DuplicateDevice {
        /// The repeated device id.
        device_id: String,
        /// Line of its first row.
        other_line: u64,
    },
    /// Two rows of one vehicle disagree on a per-vehicle field.
    #[error("vehicle \"{vehicle_id}\" has \"{here}\" here but \"{there}\" on line {other_line}")]
    Conflict {
        /// The vehicle.
        vehicle_id: String,
        /// Value on this row.
        here: String,
        /// Value on the other row.
        there: String,
        /// Line of the other row.
        other_line: u64,
    },
}

/// Error loading or validating a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CSV itself is malformed (e.g. a row with the wrong number of fields).
    #[error("{file}: {error}")]
    Csv {
        /// Name of the file.
        file: String,
        /// The CSV reader's error (with the line).
        error: csv::Error,
    },
    /// A required column is not in the header.
    #[error("{file}:1: missing column {column}")]
    MissingColumn {
        /// Name of the file.
        file: String,
        /// The missing column.
        column: &'static str,
    },
    /// A column appears twice in the header.
    #[error("{file}:1: column {column} appears more than once")]
    DuplicateColumn {
        /// Name of the file.
        file: String,
        /// The repeated column.
        column: &'static str,
    },
    /// A field is invalid.
    #[error("{file}:{line}: column {column}: {problem}")]
    Field {
        /// Name of the file.
        file: String,
        /// 1-based line of the row (the header is line 1).
        line: u64,
        /// The column.
        column: &'static str,
        /// What is wrong (boxed to keep the error small).
        problem: Box<FieldProblem>,
    },
    /// A permitted fence id that no fence has.
    #[error(
        "{file}:{line}: column permitted_fences: vehicle \"{vehicle_id}\" lists fence \"{fence_id}\", which is not in the fence file"
    )]
    UnknownFence {
        /// Name of the registry file.
        file: String,
        /// First line of the vehicle.
        line: u64,
        /// The vehicle.
        vehicle_id: String,
        /// The fence id.
        fence_id: String,
    },
    /// A permitted fence id naming a fence whose role is not `permitted`.
    #[error(
        "{file}:{line}: column permitted_fences: vehicle \"{vehicle_id}\" lists fence \"{fence_id}\", whose role is {role}, not permitted"
    )]
    NotPermitted {
        /// Name of the registry file.
        file: String,
        /// First line of the vehicle.
        line: u64,
        /// The vehicle.
        vehicle_id: String,
        /// The fence id.
        fence_id: String,
        /// The fence's role.
        role: &'static str,
    },
}

/// Column positions of the required fields.
struct Columns {
    vehicle_id: usize,
    loan_id: usize,
    device_id: usize,
    vin: usize,
    device_class: usize,
    permitted_fences: usize,
    timezone: usize,
}

impl Columns {
    fn from_header(header: &csv::StringRecord, file: &str) -> Result<Self, RegistryError> {
        let find = |column: &'static str| {
            let mut hits = header
                .iter()
                .enumerate()
                .filter(|(_, name)| *name == column);
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Ok(i),
                (None, _) => Err(RegistryError::MissingColumn {
                    file: file.to_owned(),
                    column,
                }),
                (Some(_), Some(_)) => Err(RegistryError::DuplicateColumn {
                    file: file.to_owned(),
                    column,
                }),
            }
        };
        Ok(Self {
            vehicle_id: find("vehicle_id")?,
            loan_id: find("loan_id")?,
            device_id: find("device_id")?,
            vin: find("vin")?,
            device_class: find("device_class")?,
            permitted_fences: find("permitted_fences")?,
            timezone: find("timezone")?,
        })
    }
}

/// Devices and vehicles of a registry file, looked up by id.
///
/// Immutable once built; share it between worker threads through an `Arc`.
#[derive(Debug)]
pub struct Registry {
    file: String,
    devices: Vec<DeviceEntry>,
    by_device: IdIndex,
    vehicles: Vec<VehicleEntry>,
    /// Per vehicle, the line of its first row (for errors).
    first_lines: Vec<u64>,
    by_vehicle: IdIndex,
    /// The first vehicle registered with each VIN; `next_with_vin` links the others.
    by_vin: IdIndex,
    /// Per vehicle, the next vehicle in file order with its VIN (`NO_VEHICLE` = none): a
    /// chain instead of a list per VIN, since almost every VIN has one vehicle.
    next_with_vin: Vec<u32>,
}

/// The registered VIN of the vehicle at `i` (empty when it has none), the key of `by_vin`.
fn vin_at(vehicles: &[VehicleEntry], i: u32) -> &str {
    vehicles[i as usize].vin.as_deref().unwrap_or_default()
}

/// End of a `next_with_vin` chain.
const NO_VEHICLE: u32 = u32::MAX;

/// A position in the registry's `Vec`s.
fn position(len: usize) -> u32 {
    u32::try_from(len).expect("fewer than 2^32 registry rows")
}

impl Registry {
    /// A registry without vehicles.
    pub fn empty() -> Self {
        Self {
            file: String::new(),
            devices: Vec::new(),
            by_device: IdIndex::default(),
            vehicles: Vec::new(),
            first_lines: Vec::new(),
            by_vehicle: IdIndex::default(),
            by_vin: IdIndex::default(),
            next_with_vin: Vec::new(),
        }
    }

    fn device_index(&self, device_id: &str) -> Option<u32> {
        let devices = &self.devices;
        self.by_device
            .get(device_id, |i| &devices[i as usize].device_id)
    }

    fn vehicle_index(&self, vehicle_id: &str) -> Option<u32> {
        let vehicles = &self.vehicles;
        self.by_vehicle
            .get(vehicle_id, |i| &vehicles[i as usize].vehicle_id)
    }

    /// Parses and validates CSV text; `source` names it in errors.
    pub fn from_csv_str(text: &str, source: &str) -> Result<Self, RegistryError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let csv_error = |error| RegistryError::Csv {
            file: source.to_owned(),
            error,
        };
        let columns = Columns::from_header(reader.headers().map_err(csv_error)?, source)?;

        let mut registry = Self {
            file: source.to_owned(),
            ..Self::empty()
        };
        // The line of each device, and of the row each vehicle's VIN came from (the first
        // with a non-empty VIN), for the errors naming them.
        let mut device_lines: Vec<u64> = Vec::new();
        let mut vin_lines: Vec<u64> = Vec::new();
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, csv::Position::line);
            let field_error = |column, problem| RegistryError::Field {
                file: source.to_owned(),
                line,
                column,
                problem: Box::new(problem),
            };
            let field = |index: usize| record.get(index).unwrap_or("");
            let required = |index: usize, column| {
                Some(field(index))
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| field_error(column, FieldProblem::Empty))
            };

            let vehicle_id = required(columns.vehicle_id, "vehicle_id")?;
            let loan_id = required(columns.loan_id, "loan_id")?;
            let device_id = required(columns.device_id, "device_id")?;
            let vin: Option<Arc<str>> = Some(field(columns.vin))
                .filter(|v| !v.is_empty())
                .map(|v| v.to_uppercase().into());
            let class_text = field(columns.device_class);
            let class = DeviceClass::parse(class_text).ok_or_else(|| {
                field_error(
                    "device_class",
                    FieldProblem::UnknownDeviceClass(class_text.to_owned()),
                )
            })?;
            let mut permitted_fences: Vec<String> = field(columns.permitted_fences)
                .split(';')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect();
            permitted_fences.sort_unstable();
            permitted_fences.dedup();
            let tz_text = field(columns.timezone);
            let timezone = if tz_text.is_empty() {
                DEFAULT_TIMEZONE
            } else {
                tz_text.parse::<Tz>().map_err(|_| {
                    field_error(
                        "timezone",
                        FieldProblem::UnknownTimezone(tz_text.to_owned()),
                    )
                })?
            };

            if let Some(first) = registry.device_index(device_id) {
                return Err(field_error(
                    "device_id",
                    FieldProblem::DuplicateDevice {
                        device_id: device_id.to_owned(),
                        other_line: device_lines[first as usize],
                    },
                ));
            }
            device_lines.push(line);
            let device_id: Arc<str> = device_id.into();

            let (vehicle_arc, loan_arc) = match registry.vehicle_index(vehicle_id) {
                None => {
                    let vehicle_arc: Arc<str> = vehicle_id.into();
                    let loan_arc: Arc<str> = loan_id.into();
                    let vehicles = &registry.vehicles;
                    registry
                        .by_vehicle
                        .insert(vehicle_id, position(vehicles.len()), |i| {
                            &vehicles[i as usize].vehicle_id
                        });
                    registry.vehicles.push(VehicleEntry {
                        vehicle_id: Arc::clone(&vehicle_arc),
                        loan_id: Arc::clone(&loan_arc),
                        vin,
                        permitted_fences,
                        timezone,
                    });
                    registry.first_lines.push(line);
                    vin_lines.push(line);
                    (vehicle_arc, loan_arc)
                }
                Some(i) => {
                    let vehicle = &mut registry.vehicles[i as usize];
                    let first_line = registry.first_lines[i as usize];
                    let vin_line = &mut vin_lines[i as usize];
                    let conflict = |column, here: String, there: String, other_line| {
                        field_error(
                            column,
                            FieldProblem::Conflict {
                                vehicle_id: vehicle_id.to_owned(),
                                here,
                                there,
                                other_line,
                            },
                        )
                    };
                    if loan_id != &*vehicle.loan_id {
                        return Err(conflict(
                            "loan_id",
                            loan_id.to_owned(),
                            vehicle.loan_id.to_string(),
                            first_line,
                        ));
                    }
                    match (&vin, &vehicle.vin) {
                        (Some(here), Some(there)) if here != there => {
                            return Err(conflict(
                                "vin",
                                here.to_string(),
                                there.to_string(),
                                *vin_line,
                            ));
                        }
                        (Some(_), None) => {
                            vehicle.vin = vin;
                            *vin_line = line;
                        }
                        _ => {}
                    }
                    if permitted_fences != vehicle.permitted_fences {
                        return Err(conflict(
                            "permitted_fences",
                            permitted_fences.join(";"),
                            vehicle.permitted_fences.join(";"),
                            first_line,
                        ));
                    }
                    if timezone != vehicle.timezone {
                        return Err(conflict(
                            "timezone",
                            timezone.name().to_owned(),
                            vehicle.timezone.name().to_owned(),
                            first_line,
                        ));
                    }
                    (
                        Arc::clone(&vehicle.vehicle_id),
                        Arc::clone(&vehicle.loan_id),
                    )
                }
            };
            let devices = &registry.devices;
            registry
                .by_device
                .insert(&device_id, position(devices.len()), |i| {
                    &devices[i as usize].device_id
                });
            registry.devices.push(DeviceEntry {
                device_id,
                vehicle_id: vehicle_arc,
                loan_id: loan_arc,
                class,
            });
        }
        registry.link_vins();
        Ok(registry)
    }

    /// Builds `by_vin` and `next_with_vin`, keeping each VIN's vehicles in file order.
    fn link_vins(&mut self) {
        self.next_with_vin = vec![NO_VEHICLE; self.vehicles.len()];
        // The last vehicle of each VIN's chain so far.
        let mut tails: HashMap<&str, u32> = HashMap::new();
        let vehicles = &self.vehicles;
        for (i, vehicle) in (0u32..).zip(vehicles) {
            let Some(vin) = vehicle.vin.as_deref() else {
                continue;
            };
            match tails.entry(vin) {
                Entry::Occupied(mut tail) => {
                    self.next_with_vin[*tail.get() as usize] = i;
                    tail.insert(i);
                }
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    self.by_vin.insert(vin, i, |j| vin_at(vehicles, j));
                }
            }
        }
    }

    /// Reads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_csv_str(&text, &path.display().to_string())
    }

    /// The device with this id, if registered.
    pub fn device(&self, device_id: &str) -> Option<&DeviceEntry> {
        self.device_index(device_id)
            .map(|i| &self.devices[i as usize])
    }

    /// Resolves a reading's identity (SPEC §3): unregistered devices are their own vehicle,
    /// with the `wired` thresholds and no loan. `ingest_seq` is the reading's position in
    /// the input.
    pub fn identify(&self, reading: Reading, ingest_seq: u64) -> Record {
        let (vehicle_id, loan_id, class) = match self.device(&reading.device_id) {
            Some(device) => (
                Arc::clone(&device.vehicle_id),
                Some(Arc::clone(&device.loan_id)),
                device.class,
            ),
            None => (reading.device_id.as_str().into(), None, DeviceClass::Wired),
        };
        Record {
            vehicle_id,
            class,
            registered: loan_id.is_some(),
            loan_id,
            ingest_seq,
            reading: Box::new(reading),
        }
    }

    /// The vehicle with this id, if registered.
    pub fn vehicle(&self, vehicle_id: &str) -> Option<&VehicleEntry> {
        self.vehicle_index(vehicle_id)
            .map(|i| &self.vehicles[i as usize])
    }

    /// The vehicles registered with this VIN, in file order.
    pub fn vehicles_with_vin(&self, vin: &str) -> impl Iterator<Item = &VehicleEntry> {
        let first = self.by_vin.get(vin, |i| vin_at(&self.vehicles, i));
        self.vin_chain(first)
    }

    /// The vehicle `first` and the vehicles after it with its VIN.
    fn vin_chain(&self, first: Option<u32>) -> impl Iterator<Item = &VehicleEntry> {
        std::iter::successors(first, |&i| {
            Some(self.next_with_vin[i as usize]).filter(|&next| next != NO_VEHICLE)
        })
        .map(|i| &self.vehicles[i as usize])
    }

    /// VINs registered to more than one loan, with their vehicles (for `lienwatch check`).
    pub fn shared_vins(&self) -> Vec<(&str, Vec<&VehicleEntry>)> {
        let mut shared: Vec<(&str, Vec<&VehicleEntry>)> = self
            .by_vin
            .positions()
            .map(|first| {
                (
                    vin_at(&self.vehicles, first),
                    self.vin_chain(Some(first)).collect(),
                )
            })
            .filter(|(_, vs): &(&str, Vec<&VehicleEntry>)| {
                vs.iter().any(|v| v.loan_id != vs[0].loan_id)
            })
            .collect();
        shared.sort_by_key(|(vin, _)| *vin);
        shared
    }

    /// Number of vehicles.
    pub fn vehicle_count(&self) -> usize {
        self.vehicles.len()
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// All vehicles, in the order of their first row.
    pub fn vehicles(&self) -> impl Iterator<Item = &VehicleEntry> {
        self.vehicles.iter()
    }

    /// Checks every permitted fence id exists in `fences` and has role permitted; the error names the vehicle, its first CSV line and the fence id.
    pub fn check_fences(&self, fences: &FenceIndex) -> Result<(), RegistryError> {
        for (vehicle, &first_line) in self.vehicles.iter().zip(&self.first_lines) {
            for fence_id in &vehicle.permitted_fences {
                let Some(idx) = fences.lookup(fence_id) else {
                    return Err(RegistryError::UnknownFence {
                        file: self.file.clone(),
                        line: first_line,
                        vehicle_id: vehicle.vehicle_id.to_string(),
                        fence_id: fence_id.clone(),
                    });
                };
                let role = fences.fence(idx).role;
                if role != FenceRole::Permitted {
                    return Err(RegistryError::NotPermitted {
                        file: self.file.clone(),
                        line: first_line,
                        vehicle_id: vehicle.vehicle_id.to_string(),
                        fence_id: fence_id.clone(),
                        role: role.as_str(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone";

    fn parse(rows: &[&str]) -> Result<Registry, RegistryError> {
        let mut text = format!("{HEADER}\n");
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        Registry::from_csv_str(&text, "configs/vehicles.csv")
    }

    fn error(rows: &[&str]) -> String {
        parse(rows).unwrap_err().to_string()
    }

    #[test]
    fn shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Registry>();
    }

    #[test]
    fn multi_device_file() {
        let reg = parse(&[
            "V1,L1,D1,,wired,home;work,",
            "V1,L1,D2, lsgjA52u0ks123456 ,obd,work;home,Asia/Shanghai",
            "V2,L2,D3,,wireless,,Europe/Berlin",
            "",
            "V1,L1,D4,LSGJA52U0KS123456,wireless, home ; work ;,",
        ])
        .unwrap();
        assert_eq!((reg.vehicle_count(), reg.device_count()), (2, 4));
        let v1 = reg.vehicle("V1").unwrap();
        assert_eq!(
            v1,
            &VehicleEntry {
                vehicle_id: "V1".into(),
                loan_id: "L1".into(),
                vin: Some("LSGJA52U0KS123456".into()),
                permitted_fences: vec!["home".into(), "work".into()],
                timezone: Tz::Asia__Shanghai,
            }
        );
        let v2 = reg.vehicle("V2").unwrap();
        assert_eq!(v2.vin, None);
        assert!(v2.permitted_fences.is_empty());
        assert_eq!(v2.timezone, Tz::Europe__Berlin);
        assert_eq!(
            reg.device("D2"),
            Some(&DeviceEntry {
                device_id: "D2".into(),
                vehicle_id: "V1".into(),
                loan_id: "L1".into(),
                class: DeviceClass::Obd,
            })
        );
        assert_eq!(reg.device("D3").unwrap().class, DeviceClass::Wireless);
        assert_eq!(reg.device("D9"), None);
        assert_eq!(reg.vehicle("V9"), None);
        for d in ["D1", "D2", "D4"] {
            assert_eq!(&*reg.device(d).unwrap().vehicle_id, "V1");
        }
        let order: Vec<_> = reg.vehicles().map(|v| &*v.vehicle_id).collect();
        assert_eq!(order, ["V1", "V2"]);
    }

    #[test]
    fn columns_in_any_order_with_extras_and_bom() {
        let text = "\u{feff}timezone,device_class,note,vin,permitted_fences,device_id,loan_id,vehicle_id\n\
                    ,obd,spare key,,,D1,L1,V1\n";
        let reg = Registry::from_csv_str(text, "v.csv").unwrap();
        let dev = reg.device("D1").unwrap();
        assert_eq!((&*dev.vehicle_id, dev.class), ("V1", DeviceClass::Obd));
        assert_eq!(&*reg.vehicle("V1").unwrap().loan_id, "L1");
    }

    #[test]
    fn empty_registry() {
        let reg = Registry::empty();
        assert_eq!((reg.vehicle_count(), reg.device_count()), (0, 0));
        assert_eq!(reg.vehicles().count(), 0);
        assert!(reg.check_fences(&FenceIndex::empty()).is_ok());
        assert_eq!(parse(&[]).unwrap().vehicle_count(), 0);
    }

    #[test]
    fn error_missing_and_duplicate_columns() {
        let msg = Registry::from_csv_str(
            "vehicle_id,loan_id,device_id,vin,device_class,timezone\n",
            "v.csv",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(msg, "v.csv:1: missing column permitted_fences");
        let msg = Registry::from_csv_str("", "v.csv").unwrap_err().to_string();
        assert_eq!(msg, "v.csv:1: missing column vehicle_id");
        let msg = Registry::from_csv_str(&format!("{HEADER},vin\n"), "v.csv")
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "v.csv:1: column vin appears more than once");
    }

    #[test]
    fn error_wrong_field_count() {
        let err = parse(&["V1,L1,D1,,wired,,", "V2,L2,D2,wired"]).unwrap_err();
        assert!(matches!(err, RegistryError::Csv { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("configs/vehicles.csv: "), "{msg}");
        assert!(msg.contains("line: 3"), "{msg}");
    }

    #[test]
    fn error_unknown_device_class() {
        let msg = error(&[
            "V1,L1,D1,,wired,,",
            "V1,L1,D2,,obd,,",
            "V2,L2,D3,,wired,,",
            "V3,L3,D4,,wired,,",
            "V4,L4,D5,,wired,,",
            "V5,L5,D6,,gps,,",
        ]);
        assert_eq!(
            msg,
            "configs/vehicles.csv:7: column device_class: unknown device class \"gps\" \
             (expected wired, obd or wireless)"
        );
    }

    #[test]
    fn error_unknown_timezone() {
        let msg = error(&["V1,L1,D1,,wired,,Asia/Shangai"]);
        assert!(
            msg.starts_with(
                "configs/vehicles.csv:2: column timezone: unknown time zone \"Asia/Shangai\""
            ),
            "{msg}"
        );
    }

    #[test]
    fn error_empty_required_fields() {
        for (row, column) in [
            (" ,L1,D1,,wired,,", "vehicle_id"),
            ("V1,,D1,,wired,,", "loan_id"),
            ("V1,L1,,,wired,,", "device_id"),
        ] {
            assert_eq!(
                error(&[row]),
                format!("configs/vehicles.csv:2: column {column}: must not be empty")
            );
        }
    }

    #[test]
    fn error_duplicate_device() {
        let msg = error(&["V1,L1,D1,,wired,,", "V2,L2,D2,,wired,,", "V3,L3,D1,,obd,,"]);
        assert_eq!(
            msg,
            "configs/vehicles.csv:4: column device_id: device \"D1\" is already listed on line 2"
        );
    }

    #[test]
    fn error_vehicle_rows_disagree() {
        let cases = [
            (
                ["V1,L1,D1,,wired,,", "V1,L2,D2,,wired,,"],
                "configs/vehicles.csv:3: column loan_id: vehicle \"V1\" has \"L2\" here but \"L1\" on line 2",
            ),
            (
                ["V1,L1,D1,,wired,a;b,", "V1,L1,D2,,wired,a,"],
                "configs/vehicles.csv:3: column permitted_fences: vehicle \"V1\" has \"a\" here but \"a;b\" on line 2",
            ),
            (
                ["V1,L1,D1,,wired,,", "V1,L1,D2,,wired,,Asia/Tokyo"],
                "configs/vehicles.csv:3: column timezone: vehicle \"V1\" has \"Asia/Tokyo\" here but \"Asia/Shanghai\" on line 2",
            ),
        ];
        for (rows, want) in cases {
            assert_eq!(error(&rows), want);
        }
    }

    #[test]
    fn every_id_of_a_large_file_is_found_as_a_plain_scan_finds_it() {
        // Enough rows for the indexes to grow several times; every third vehicle has a
        // second device, and VINs repeat every 7 vehicles.
        let rows: Vec<(String, String, String, String)> = (0..5_000)
            .flat_map(|v| {
                let devices = if v % 3 == 0 { 2 } else { 1 };
                (0..devices).map(move |d| {
                    (
                        format!("V{v}"),
                        format!("L{}", v % 11),
                        format!("D{v}-{d}"),
                        format!("VIN{}", v % 7),
                    )
                })
            })
            .collect();
        let lines: Vec<String> = rows
            .iter()
            .map(|(v, l, d, vin)| format!("{v},{l},{d},{vin},obd,,"))
            .collect();
        let reg = parse(&lines.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            (reg.vehicle_count(), reg.device_count()),
            (5_000, rows.len())
        );
        for (v, l, d, _) in &rows {
            let device = reg.device(d).unwrap();
            assert_eq!(
                (&*device.vehicle_id, &*device.loan_id),
                (v.as_str(), l.as_str())
            );
            assert_eq!(&*reg.vehicle(v).unwrap().vehicle_id, v);
        }
        for k in 0..7 {
            let vin = format!("VIN{k}");
            let expected: Vec<String> = (0..5_000)
                .filter(|v| v % 7 == k)
                .map(|v| format!("V{v}"))
                .collect();
            let found: Vec<String> = reg
                .vehicles_with_vin(&vin)
                .map(|v| v.vehicle_id.to_string())
                .collect();
            assert_eq!(found, expected);
        }
        assert_eq!(reg.shared_vins().len(), 7);
        assert!(reg.device("D5000-0").is_none() && reg.vehicle("V5000").is_none());
    }

    #[test]
    fn vins_registered_under_two_loans_are_found() {
        let reg = Registry::from_csv_str(
            &format!(
                "{HEADER}\nA,L1,D1,vx,obd,,\nB,L2,D2,VX,obd,,\nC,L1,D3,VX,obd,,\nE,L3,D4,VY,obd,,\n"
            ),
            "v.csv",
        )
        .unwrap();
        let shared = reg.shared_vins();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].0, "VX");
        let ids: Vec<&str> = shared[0].1.iter().map(|v| &*v.vehicle_id).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        assert_eq!(reg.vehicles_with_vin("VY").count(), 1);
        assert_eq!(reg.vehicles_with_vin("VZ").count(), 0);
    }

    #[test]
    fn error_vin_disagreement_names_the_line_the_vin_came_from() {
        let msg = error(&[
            "V1,L1,D1,,wired,,",
            "V1,L1,D2,vin-a,obd,,",
            "V1,L1,D3,,wireless,,",
            "V1,L1,D4,VIN-B,wired,,",
        ]);
        assert_eq!(
            msg,
            "configs/vehicles.csv:5: column vin: vehicle \"V1\" has \"VIN-B\" here but \"VIN-A\" on line 3"
        );
    }

    fn fences() -> FenceIndex {
        let square = |id: &str, role: &str| {
            format!(
                r#"{{"type":"Feature","properties":{{"id":"{id}","role":"{role}"}},
                "geometry":{{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}}}"#
            )
        };
        let text = format!(
            r#"{{"type":"FeatureCollection","features":[{},{}]}}"#,
            square("home", "permitted"),
            square("pawn", "risk")
        );
        FenceIndex::from_geojson_str(&text, "fences.geojson").unwrap()
    }

    #[test]
    fn check_fences() {
        let fences = fences();
        let ok = parse(&["V1,L1,D1,,wired,home,", "V2,L2,D2,,wired,,"]).unwrap();
        assert!(ok.check_fences(&fences).is_ok());

        let reg = parse(&["V1,L1,D1,,wired,home,", "V2,L2,D2,,wired,home;gone,"]).unwrap();
        assert_eq!(
            reg.check_fences(&fences).unwrap_err().to_string(),
            "configs/vehicles.csv:3: column permitted_fences: vehicle \"V2\" lists fence \"gone\", \
             which is not in the fence file"
        );
        let reg = parse(&["V1,L1,D1,,wired,,", "V3,L3,D2,,wired,pawn,"]).unwrap();
        assert_eq!(
            reg.check_fences(&fences).unwrap_err().to_string(),
            "configs/vehicles.csv:3: column permitted_fences: vehicle \"V3\" lists fence \"pawn\", \
             whose role is risk, not permitted"
        );
    }

    #[test]
    fn load_reads_a_file_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("lienwatch-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vehicles.csv");
        std::fs::write(
            &path,
            format!("{HEADER}\nV1,L1,D1,,wired,,\nV1,L1,D2,,bad,,\n"),
        )
        .unwrap();
        let msg = Registry::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}:3: column device_class", path.display())),
            "{msg}"
        );
        std::fs::write(&path, format!("{HEADER}\nV1,L1,D1,,wired,,\n")).unwrap();
        assert_eq!(Registry::load(&path).unwrap().device_count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Registry::load(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Io { .. }), "{err}");
        assert!(err.to_string().contains("vehicles.csv"), "{err}");
    }
}

//! The simulated fleet: cities, vehicles with their devices and usual places, the road
//! network they use (a small set of routes per vehicle), permitted and risk fences, and the
//! reference files `vehicles.csv` and `fences.geojson` (SPEC §3).
//!
//! Risk fences are placed away from every background route (with a margin), so background
//! traffic never enters one; incident scripts check their own paths with [`Fleet::path_clear`].

use std::collections::HashSet;
use std::io::{self, Write};

use chrono_tz::Tz;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use super::geo::{self, Grid, LatLon, Polyline, Shape, box_around};
use super::msg::VinSel;
use super::sub_seed;

/// A city the fleet lives around.
#[derive(Debug)]
pub(crate) struct City {
    /// Short code used in ids.
    pub code: &'static str,
    /// Chinese name, used in fence names.
    pub name: &'static str,
    /// City centre.
    pub center: LatLon,
    /// Default time zone of its vehicles.
    pub tz: Tz,
    /// Has a port (risk category `port`).
    pub port: bool,
    /// Near a border or a border-control point (risk category `border`).
    pub border: bool,
}

/// The cities, far enough apart that their fences never overlap.
pub(crate) const CITIES: [City; 6] = [
    City {
        code: "SH",
        name: "上海",
        center: LatLon::new(31.2304, 121.4737),
        tz: Tz::Asia__Shanghai,
        port: true,
        border: false,
    },
    City {
        code: "BJ",
        name: "北京",
        center: LatLon::new(39.9042, 116.4074),
        tz: Tz::Asia__Shanghai,
        port: false,
        border: false,
    },
    City {
        code: "SZ",
        name: "深圳",
        center: LatLon::new(22.6431, 114.0579),
        tz: Tz::Asia__Shanghai,
        port: true,
        border: true,
    },
    City {
        code: "CD",
        name: "成都",
        center: LatLon::new(30.5728, 104.0668),
        tz: Tz::Asia__Shanghai,
        port: false,
        border: false,
    },
    City {
        code: "WH",
        name: "武汉",
        center: LatLon::new(30.5928, 114.3055),
        tz: Tz::Asia__Shanghai,
        port: true,
        border: false,
    },
    City {
        code: "UR",
        name: "乌鲁木齐",
        center: LatLon::new(43.8256, 87.6168),
        tz: Tz::Asia__Urumqi,
        port: false,
        border: true,
    },
];

/// Radius around a city centre where vehicles live and do their errands, metres.
const LIVING_RADIUS_M: f64 = 22_000.0;
/// How far out risk fences are scattered, metres.
const RISK_RADIUS_M: f64 = 45_000.0;
/// Minimum clearance between a risk fence and any background route, metres.
const ROUTE_CLEARANCE_M: f64 = 400.0;
/// Minimum clearance between a risk fence and an incident path that must not enter it.
pub(crate) const PATH_CLEARANCE_M: f64 = 200.0;

/// Tracker class (SPEC §3 `device_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DevClass {
    /// Wired GNSS unit: position, ignition, device mileage, supply voltage.
    Wired,
    /// OBD dongle: also OBD speed, VIN, trouble-code data.
    Obd,
    /// Battery unit waking every few hours.
    Wireless,
}

impl DevClass {
    /// The registry spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DevClass::Wired => "wired",
            DevClass::Obd => "obd",
            DevClass::Wireless => "wireless",
        }
    }

    /// The `offline` threshold of rules.md for this class, milliseconds.
    pub(crate) fn offline_after_ms(self) -> i64 {
        match self {
            DevClass::Wired | DevClass::Obd => 1_800_000,
            DevClass::Wireless => 93_600_000,
        }
    }
}

/// One tracker.
#[derive(Debug)]
pub(crate) struct Device {
    /// Tracker id (IMEI for wired/OBD units, terminal number for wireless ones).
    pub id: String,
    /// Class.
    pub class: DevClass,
    /// Index of its vehicle.
    pub vehicle: u32,
    /// Listed in `vehicles.csv`.
    pub registered: bool,
    /// Sends `seq`.
    pub has_seq: bool,
    /// Sends a `firmware` field (an unknown field to lienwatch) on every message.
    pub firmware: Option<&'static str>,
}

/// One pledged vehicle.
#[derive(Debug)]
pub(crate) struct Vehicle {
    /// The vehicle id lienwatch will use (the device id when unregistered).
    pub id: String,
    /// Loan id; `None` when unregistered.
    pub loan_id: Option<String>,
    /// Registered VIN.
    pub vin: String,
    /// A VIN of no pledged vehicle, reported by OBD in `vin_mismatch` incidents.
    pub foreign_vin: String,
    /// The registered VIN of another pledged vehicle (another loan), reported by OBD in
    /// cloned-VIN `duplicate_collateral` incidents; `None` when unregistered.
    pub cloned_vin: Option<String>,
    /// Index into [`CITIES`].
    pub city: usize,
    /// Time zone (SPEC §3). Unregistered vehicles keep to Asia/Shanghai, the zone the
    /// pipeline gives them, so their local days and nights are the pipeline's.
    pub tz: Tz,
    /// Indices of the permitted fences it lists (empty = unrestricted).
    pub permitted: Vec<u32>,
    /// Usual places: 0 = home, then work when `has_work`, then errands.
    pub places: Vec<LatLon>,
    /// Whether place 1 is a workplace.
    pub has_work: bool,
    /// Via points of the routes between places, indexed by [`pair_index`].
    pub vias: Vec<LatLon>,
    /// Devices, the primary (wired or OBD) first.
    pub devices: Vec<u32>,
    /// Odometer at the start, km.
    pub odometer_km: f64,
    /// Road distance per GNSS distance (roads are not straight).
    pub road_factor: f64,
    /// `obd.dist_since_clear_km` at the start.
    pub dist_since_clear_km: f64,
    /// Engine hours at the start.
    pub engine_hours: f64,
    /// MIL lit with stored codes at the start.
    pub mil: bool,
    /// Typical altitude, metres.
    pub alt_m: f64,
    /// Usual cruising speed factor (driver style).
    pub pace: f64,
}

impl Vehicle {
    /// The primary (wired or OBD) device.
    pub(crate) fn primary(&self) -> u32 {
        self.devices[0]
    }

    /// The wireless unit, if any.
    pub(crate) fn wireless(&self) -> Option<u32> {
        self.devices.get(1).copied()
    }

    /// The VIN an OBD message with `vin` reports.
    pub(crate) fn reported_vin(&self, vin: VinSel) -> &str {
        match vin {
            VinSel::Registered => &self.vin,
            VinSel::Foreign => &self.foreign_vin,
            VinSel::Cloned => self.cloned_vin.as_deref().unwrap_or(&self.vin),
        }
    }

    /// The route from place `a` to place `b`.
    pub(crate) fn route(&self, a: usize, b: usize) -> Polyline {
        let via = self.vias[pair_index(a, b)];
        Polyline::new(vec![self.places[a], via, self.places[b]])
    }
}

/// Index of the unordered place pair `{a, b}` (a ≠ b) in [`Vehicle::vias`].
pub(crate) fn pair_index(a: usize, b: usize) -> usize {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    hi * (hi - 1) / 2 + lo
}

/// What a fence is for (SPEC §3 `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Vehicles listing it must stay in the union of their permitted fences.
    Permitted,
    /// Every vehicle is watched in it.
    Risk,
}

/// One fence.
#[derive(Debug)]
pub(crate) struct Fence {
    /// Unique id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Category (free text, SPEC §3).
    pub category: &'static str,
    /// Display name.
    pub name: String,
    /// Dwell threshold override, minutes.
    pub dwell_min: Option<u32>,
    /// Shape, with coordinates exactly as written to the file.
    pub shape: Shape,
}

impl Fence {
    /// The `risk_zone_dwell` threshold of rules.md for this fence, milliseconds.
    pub(crate) fn dwell_ms(&self) -> i64 {
        i64::from(self.dwell_min.unwrap_or(30)) * 60_000
    }
}

/// The whole fleet and its reference data.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// Vehicles.
    pub vehicles: Vec<Vehicle>,
    /// Devices.
    pub devices: Vec<Device>,
    /// Fences: permitted ones first, then risk ones.
    pub fences: Vec<Fence>,
    /// Risk fences by location (boxes padded by [`PATH_CLEARANCE_M`]).
    pub risk_grid: Grid,
    /// Indices of the risk fences of each city.
    pub risk_by_city: Vec<Vec<u32>>,
    /// Double pledges: pairs of vehicles registered under different loans with one VIN (the
    /// second carries the first one's VIN, in `vehicles.csv` and on its OBD port).
    pub double_pledged: Vec<(u32, u32)>,
}

/// Rounds degrees to the 6 decimals written to files.
pub(crate) fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Rounds a position to the 6 decimals written to files.
pub(crate) fn round_pos(p: LatLon) -> LatLon {
    LatLon::new(round6(p.lat), round6(p.lon))
}

const VIN_CHARS: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
const WMIS: [&str; 12] = [
    "LSV", "LFV", "LBV", "LGB", "LHG", "LVS", "LSG", "LGX", "LRW", "LVG", "L6T", "LFM",
];

fn vin_value(c: u8) -> u32 {
    match c {
        b'0'..=b'9' => u32::from(c - b'0'),
        b'A'..=b'H' => u32::from(c - b'A') + 1,
        b'J'..=b'N' => u32::from(c - b'J') + 1,
        b'P' => 7,
        b'R' => 9,
        b'S'..=b'Z' => u32::from(c - b'S') + 2,
        _ => 0,
    }
}

/// A random VIN with a valid ISO 3779 check digit and a Chinese manufacturer prefix.
fn random_vin(rng: &mut SmallRng) -> String {
    const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    let mut v: Vec<u8> = WMIS.choose(rng).unwrap_or(&"LSV").bytes().collect();
    for _ in 0..5 {
        v.push(*VIN_CHARS.choose(rng).unwrap_or(&b'A'));
    }
    v.push(b'0');
    v.push(*b"LMNPRS".choose(rng).unwrap_or(&b'R'));
    v.push(*VIN_CHARS.choose(rng).unwrap_or(&b'A'));
    for _ in 0..6 {
        v.push(b'0' + rng.random_range(0..10u8));
    }
    let sum: u32 = v.iter().zip(WEIGHTS).map(|(c, w)| vin_value(*c) * w).sum();
    v[8] = match sum % 11 {
        10 => b'X',
        d => b'0' + d as u8,
    };
    String::from_utf8(v).unwrap_or_default()
}

/// A 15-digit IMEI with a valid Luhn check digit.
fn random_imei(rng: &mut SmallRng) -> String {
    let mut d: Vec<u8> = vec![8, 6];
    for _ in 0..12 {
        d.push(rng.random_range(0..10u8));
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, x)| {
            let x = u32::from(*x);
            if i % 2 == 0 {
                let y = x * 2;
                y / 10 + y % 10
            } else {
                x
            }
        })
        .sum();
    d.push(((10 - sum % 10) % 10) as u8);
    d.iter().map(|x| char::from(b'0' + x)).collect()
}

/// A 12-digit JT/T 808 terminal number.
fn random_terminal(rng: &mut SmallRng) -> String {
    let mut s = String::from("0145");
    for _ in 0..8 {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    s
}

const FIRMWARES: [&str; 4] = [
    "GT06N-2.1.7",
    "JM-VL03-1.4.2",
    "SinoTrack-3.0",
    "OBD-X7-5.12",
];

/// A point uniformly distributed in the disc of `radius_m` around `center`.
fn in_disc(rng: &mut SmallRng, center: LatLon, min_m: f64, radius_m: f64) -> LatLon {
    let r = (min_m * min_m + rng.random::<f64>() * (radius_m * radius_m - min_m * min_m)).sqrt();
    geo::offset(center, rng.random_range(0.0..360.0), r)
}

impl Fleet {
    /// Generates a fleet of `vehicles` vehicles with about `risk_fences` risk fences.
    pub(crate) fn generate(seed: u64, vehicles: usize, risk_fences: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(sub_seed(seed, "fleet", 0));
        let mut fences = Vec::new();
        for city in &CITIES {
            let ring: Vec<LatLon> = (0..12)
                .map(|k| {
                    round_pos(geo::offset(
                        city.center,
                        f64::from(k) * 30.0 + rng.random_range(-8.0..8.0),
                        rng.random_range(55_000.0..70_000.0),
                    ))
                })
                .collect();
            fences.push(Fence {
                id: format!("PF-{}-CITY", city.code),
                role: Role::Permitted,
                category: "city",
                name: format!("{}市区", city.name),
                dwell_min: None,
                shape: Shape::Polygon { ring },
            });
            fences.push(Fence {
                id: format!("PF-{}-METRO", city.code),
                role: Role::Permitted,
                category: "metro",
                name: format!("{}都市圈", city.name),
                dwell_min: None,
                shape: Shape::Circle {
                    center: city.center,
                    radius_m: (rng.random_range(120_000.0..150_000.0f64)).round(),
                },
            });
        }
        let mut used_ids = HashSet::new();
        let mut vins = HashSet::new();
        let mut fresh = |rng: &mut SmallRng, f: fn(&mut SmallRng) -> String| loop {
            let s = f(rng);
            if used_ids.insert(s.clone()) {
                break s;
            }
        };
        let mut vs = Vec::with_capacity(vehicles);
        let mut devs = Vec::new();
        for i in 0..vehicles {
            let city = i % CITIES.len();
            let c = &CITIES[city];
            let unregistered = vehicles >= 20 && i % 40 == 17;
            let class = if rng.random_bool(0.5) {
                DevClass::Obd
            } else {
                DevClass::Wired
            };
            let primary_id = fresh(&mut rng, random_imei);
            let mut devices = vec![devs.len() as u32];
            devs.push(Device {
                id: primary_id.clone(),
                class,
                vehicle: i as u32,
                registered: !unregistered,
                has_seq: !rng.random_bool(0.06),
                firmware: if rng.random_bool(0.15) {
                    FIRMWARES.choose(&mut rng).copied()
                } else {
                    None
                },
            });
            if !unregistered && rng.random_bool(0.3) {
                devices.push(devs.len() as u32);
                devs.push(Device {
                    id: fresh(&mut rng, random_terminal),
                    class: DevClass::Wireless,
                    vehicle: i as u32,
                    registered: true,
                    has_seq: true,
                    firmware: None,
                });
            }
            let vin = loop {
                let v = random_vin(&mut rng);
                if vins.insert(v.clone()) {
                    break v;
                }
            };
            let foreign_vin = loop {
                let v = random_vin(&mut rng);
                if vins.insert(v.clone()) {
                    break v;
                }
            };
            let hong_kong = c.code == "SZ" && rng.random_bool(0.15);
            let tz = if unregistered {
                Tz::Asia__Shanghai
            } else if hong_kong {
                Tz::Asia__Hong_Kong
            } else {
                c.tz
            };
            let permitted = if unregistered {
                Vec::new()
            } else {
                let own = 2 * city as u32;
                match rng.random_range(0..100) {
                    0..45 => vec![own],
                    45..65 => vec![own + 1],
                    65..70 => {
                        let other =
                            (city + 1 + rng.random_range(0..CITIES.len() - 1)) % CITIES.len();
                        vec![own, 2 * other as u32]
                    }
                    _ => Vec::new(),
                }
            };
            let home = round_pos(in_disc(&mut rng, c.center, 0.0, LIVING_RADIUS_M));
            let mut places = vec![home];
            let has_work = rng.random_bool(0.75);
            let n_errands = rng.random_range(2..=3);
            while places.len() < n_errands + 1 + usize::from(has_work) {
                let far = if has_work && places.len() == 1 {
                    (3_000.0, 20_000.0)
                } else {
                    (1_500.0, 14_000.0)
                };
                let p = geo::offset(
                    home,
                    rng.random_range(0.0..360.0),
                    rng.random_range(far.0..far.1),
                );
                if geo::distance_m(p, c.center) < LIVING_RADIUS_M
                    && places.iter().all(|q| geo::distance_m(*q, p) > 1_000.0)
                {
                    places.push(round_pos(p));
                }
            }
            let n = places.len();
            let mut vias = vec![LatLon::new(0.0, 0.0); n * (n - 1) / 2];
            for b in 1..n {
                for a in 0..b {
                    let (pa, pb) = (places[a], places[b]);
                    let mid = geo::lerp(pa, pb, 0.5);
                    let len = geo::distance_m(pa, pb);
                    let side = if rng.random_bool(0.5) { 90.0 } else { -90.0 };
                    vias[pair_index(a, b)] = round_pos(geo::offset(
                        mid,
                        geo::bearing_deg(pa, pb) + side,
                        len * rng.random_range(0.0..0.15),
                    ));
                }
            }
            let odometer_km = (rng.random_range(8_000.0..160_000.0f64) * 10.0).round() / 10.0;
            vs.push(Vehicle {
                id: if unregistered {
                    primary_id
                } else {
                    format!("VH{}{:05}", c.code, i + 1)
                },
                loan_id: (!unregistered).then(|| format!("LN2026{:06}", 104_729 + i * 37)),
                vin,
                foreign_vin,
                cloned_vin: None,
                city,
                tz,
                permitted,
                places,
                has_work,
                vias,
                devices,
                odometer_km,
                road_factor: rng.random_range(1.02..1.07),
                dist_since_clear_km: rng.random_range(300.0..odometer_km.min(25_000.0)),
                engine_hours: odometer_km / rng.random_range(28.0..40.0),
                mil: rng.random_bool(0.08),
                alt_m: match c.code {
                    "UR" => 800.0,
                    "CD" => 500.0,
                    "BJ" => 45.0,
                    _ => 12.0,
                } + rng.random_range(-10.0..10.0),
                pace: rng.random_range(0.85..1.15),
            });
        }
        let (risk_by_city, risk_grid) = place_risk_fences(&mut rng, &vs, &mut fences, risk_fences);
        let mut rng = SmallRng::seed_from_u64(sub_seed(seed, "vins", 0));
        let double_pledged = share_vins(&mut vs, &devs, &mut rng);
        Fleet {
            vehicles: vs,
            devices: devs,
            fences,
            risk_grid,
            risk_by_city,
            double_pledged,
        }
    }

    /// Risk fences containing `p`.
    pub(crate) fn risk_at(&self, p: LatLon) -> impl Iterator<Item = u32> + '_ {
        self.risk_grid
            .at(p)
            .iter()
            .copied()
            .filter(move |f| self.fences[*f as usize].shape.contains(p))
    }

    /// Whether every point of `path` stays [`PATH_CLEARANCE_M`] away from every risk fence
    /// other than `allowed`.
    pub(crate) fn path_clear(&self, path: &Polyline, allowed: Option<u32>) -> bool {
        path.samples(50.0).all(|p| {
            self.risk_grid.at(p).iter().all(|f| {
                Some(*f) == allowed
                    || self.fences[*f as usize].shape.signed_distance_m(p) > PATH_CLEARANCE_M
            })
        })
    }

    /// Signed distance from `p` to the union of the vehicle's permitted fences: positive
    /// outside, negative inside; `None` for an unrestricted vehicle.
    pub(crate) fn permitted_distance_m(&self, vehicle: &Vehicle, p: LatLon) -> Option<f64> {
        vehicle
            .permitted
            .iter()
            .map(|f| self.fences[*f as usize].shape.signed_distance_m(p))
            .reduce(f64::min)
    }

    /// Whether every point of `path` is at least `margin_m` inside the vehicle's permitted
    /// region (always true for an unrestricted vehicle).
    pub(crate) fn path_permitted(&self, vehicle: &Vehicle, path: &Polyline, margin_m: f64) -> bool {
        vehicle.permitted.is_empty()
            || path.samples(500.0).all(|p| {
                self.permitted_distance_m(vehicle, p)
                    .is_some_and(|d| d < -margin_m)
            })
    }

    /// Writes `vehicles.csv` (SPEC §3): one row per registered device.
    pub(crate) fn write_vehicles_csv(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone"
        )?;
        for v in &self.vehicles {
            let fences: Vec<&str> = v
                .permitted
                .iter()
                .map(|f| self.fences[*f as usize].id.as_str())
                .collect();
            for d in &v.devices {
                let dev = &self.devices[*d as usize];
                if !dev.registered {
                    continue;
                }
                writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    v.id,
                    v.loan_id.as_deref().unwrap_or(""),
                    dev.id,
                    v.vin,
                    dev.class.as_str(),
                    fences.join(";"),
                    v.tz.name()
                )?;
            }
        }
        Ok(())
    }

    /// Writes `fences.geojson` (SPEC §3): a FeatureCollection, one feature per line.
    pub(crate) fn write_fences_geojson(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "{{\"type\":\"FeatureCollection\",\"features\":[")?;
        for (i, f) in self.fences.iter().enumerate() {
            let geometry = match &f.shape {
                Shape::Circle { center, .. } => json!({
                    "type": "Point",
                    "coordinates": [center.lon, center.lat],
                }),
                Shape::Polygon { ring } => {
                    let mut coords: Vec<Value> =
                        ring.iter().map(|p| json!([p.lon, p.lat])).collect();
                    coords.push(json!([ring[0].lon, ring[0].lat]));
                    json!({"type": "Polygon", "coordinates": [coords]})
                }
            };
            let mut props = serde_json::Map::new();
            props.insert("id".into(), json!(f.id));
            props.insert(
                "role".into(),
                json!(match f.role {
                    Role::Permitted => "permitted",
                    Role::Risk => "risk",
                }),
            );
            props.insert("category".into(), json!(f.category));
            props.insert("name".into(), json!(f.name));
            if let Shape::Circle { radius_m, .. } = f.shape {
                props.insert("radius_m".into(), json!(radius_m));
            }
            if let Some(d) = f.dwell_min {
                props.insert("dwell_min".into(), json!(d));
            }
            let feature = json!({
                "type": "Feature",
                "properties": Value::Object(props),
                "geometry": geometry,
            });
            let sep = if i + 1 < self.fences.len() { "," } else { "" };
            writeln!(out, "{feature}{sep}")?;
        }
        writeln!(out, "]}}")
    }
}

/// VINs shared between loans. One pair of registered vehicles with OBD trackers per 20
/// vehicles is pledged twice: the second is registered with the first one's VIN. Then every
/// registered vehicle gets the VIN of another one outside those pairs to report when its VIN
/// is cloned. Returns the pairs.
fn share_vins(vehicles: &mut [Vehicle], devices: &[Device], rng: &mut SmallRng) -> Vec<(u32, u32)> {
    let mut obd: Vec<u32> = (0..vehicles.len() as u32)
        .filter(|v| {
            let v = &vehicles[*v as usize];
            v.loan_id.is_some() && devices[v.primary() as usize].class == DevClass::Obd
        })
        .collect();
    obd.shuffle(rng);
    let pairs: Vec<(u32, u32)> = obd
        .chunks_exact(2)
        .take(vehicles.len() / 20)
        .map(|p| (p[0], p[1]))
        .collect();
    for (a, b) in &pairs {
        vehicles[*b as usize].vin = vehicles[*a as usize].vin.clone();
    }
    let donors: Vec<u32> = (0..vehicles.len() as u32)
        .filter(|v| {
            vehicles[*v as usize].loan_id.is_some() && pairs.iter().all(|(a, b)| a != v && b != v)
        })
        .collect();
    for vi in 0..vehicles.len() {
        let own = &vehicles[vi];
        if own.loan_id.is_none() {
            continue;
        }
        let others: Vec<u32> = donors
            .iter()
            .copied()
            .filter(|d| vehicles[*d as usize].vin != own.vin)
            .collect();
        vehicles[vi].cloned_vin = others
            .choose(rng)
            .map(|d| vehicles[*d as usize].vin.clone());
    }
    pairs
}

/// Background route segments of one city, indexed for proximity queries.
struct Segments {
    segs: Vec<(LatLon, LatLon)>,
    grid: Grid,
}

impl Segments {
    fn of_city(vehicles: &[Vehicle], city: usize) -> Self {
        let mut segs = Vec::new();
        let mut grid = Grid::new(0.02);
        for v in vehicles.iter().filter(|v| v.city == city) {
            let n = v.places.len();
            for b in 1..n {
                for a in 0..b {
                    let via = v.vias[pair_index(a, b)];
                    for (p, q) in [(v.places[a], via), (via, v.places[b])] {
                        let id = segs.len() as u32;
                        segs.push((p, q));
                        for s in Polyline::new(vec![p, q]).samples(1_000.0) {
                            grid.insert(id, s, s);
                        }
                    }
                }
            }
        }
        Self { segs, grid }
    }

    /// Whether no segment passes within `clearance_m` of `p`.
    fn clear(&self, p: LatLon, clearance_m: f64, scratch: &mut Vec<u32>) -> bool {
        let (lo, hi) = box_around(p, clearance_m + 1_500.0);
        self.grid.within(lo, hi, scratch);
        scratch.iter().all(|s| {
            let (a, b) = self.segs[*s as usize];
            geo::point_segment_m(p, a, b) > clearance_m
        })
    }
}

const RISK_CATEGORIES: [(&str, &str); 6] = [
    ("second_mortgage", "二押车行"),
    ("used_car_market", "二手车交易市场"),
    ("pawn_shop", "汽车典当行"),
    ("impound", "停车场(扣押)"),
    ("port", "港区堆场"),
    ("border", "口岸停车场"),
];

/// Scatters about `total` risk fences over the cities, away from background routes.
fn place_risk_fences(
    rng: &mut SmallRng,
    vehicles: &[Vehicle],
    fences: &mut Vec<Fence>,
    total: usize,
) -> (Vec<Vec<u32>>, Grid) {
    let mut grid = Grid::new(0.01);
    let mut by_city = vec![Vec::new(); CITIES.len()];
    let mut scratch = Vec::new();
    for (ci, city) in CITIES.iter().enumerate() {
        let segments = Segments::of_city(vehicles, ci);
        let want = total / CITIES.len() + usize::from(ci < total % CITIES.len());
        let mut placed: Vec<(LatLon, f64)> = Vec::new();
        let mut attempts = 0;
        while placed.len() < want && attempts < want * 200 {
            attempts += 1;
            let center = round_pos(in_disc(rng, city.center, 1_500.0, RISK_RADIUS_M));
            let radius = rng.random_range(150.0..500.0f64).round();
            let reach = radius;
            if !segments.clear(center, reach + ROUTE_CLEARANCE_M, &mut scratch)
                || placed
                    .iter()
                    .any(|(c, r)| geo::distance_m(*c, center) < reach + r + 300.0)
            {
                continue;
            }
            let (category, label) = loop {
                let pick = RISK_CATEGORIES[rng.random_range(0..RISK_CATEGORIES.len())];
                match pick.0 {
                    "port" if !city.port => continue,
                    "border" if !city.border => continue,
                    _ => break pick,
                }
            };
            let shape = if rng.random_bool(0.5) {
                Shape::Circle {
                    center,
                    radius_m: radius,
                }
            } else {
                let n = rng.random_range(5..=9);
                let phase = rng.random_range(0.0..360.0);
                Shape::Polygon {
                    ring: (0..n)
                        .map(|k| {
                            round_pos(geo::offset(
                                center,
                                phase + f64::from(k) * 360.0 / f64::from(n),
                                radius * rng.random_range(0.7..1.0),
                            ))
                        })
                        .collect(),
                }
            };
            let idx = fences.len() as u32;
            let (lo, hi) = shape.bbox();
            let (lo, _) = box_around(lo, PATH_CLEARANCE_M + 50.0);
            let (_, hi) = box_around(hi, PATH_CLEARANCE_M + 50.0);
            grid.insert(idx, lo, hi);
            let n = placed.len() + 1;
            fences.push(Fence {
                id: format!("RF-{}-{:04}", city.code, n),
                role: Role::Risk,
                category,
                name: format!("{}{}{}号", city.name, label, n),
                dwell_min: [None, None, None, Some(15), Some(20), Some(45), Some(60)]
                    .choose(rng)
                    .copied()
                    .flatten(),
                shape,
            });
            by_city[ci].push(idx);
            placed.push((center, reach));
        }
    }
    (by_city, grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vins_and_imeis_have_valid_check_digits() {
        let mut rng = SmallRng::seed_from_u64(3);
        // The ISO 3779 example VIN.
        let known = b"1M8GDM9AXKP042788";
        const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
        let sum: u32 = known
            .iter()
            .zip(WEIGHTS)
            .map(|(c, w)| vin_value(*c) * w)
            .sum();
        assert_eq!(sum % 11, 10);
        for _ in 0..50 {
            let vin = random_vin(&mut rng);
            assert_eq!(vin.len(), 17);
            assert!(vin.bytes().all(|c| VIN_CHARS.contains(&c)) || vin.as_bytes()[8] == b'X');
            let imei = random_imei(&mut rng);
            assert_eq!(imei.len(), 15);
            let sum: u32 = imei
                .bytes()
                .rev()
                .enumerate()
                .map(|(i, c)| {
                    let x = u32::from(c - b'0');
                    if i % 2 == 1 {
                        (x * 2) / 10 + (x * 2) % 10
                    } else {
                        x
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{imei}");
        }
    }

    #[test]
    fn background_routes_stay_clear_and_permitted() {
        let fleet = Fleet::generate(11, 60, 120);
        assert!(fleet.fences.iter().filter(|f| f.role == Role::Risk).count() >= 100);
        for v in &fleet.vehicles {
            let n = v.places.len();
            for b in 1..n {
                for a in 0..b {
                    let route = v.route(a, b);
                    assert!(fleet.path_clear(&route, None), "{} {a}->{b}", v.id);
                    assert!(fleet.path_permitted(v, &route, 20_000.0), "{}", v.id);
                }
            }
        }
    }

    #[test]
    fn reference_files_are_well_formed() {
        let fleet = Fleet::generate(5, 45, 60);
        let mut csv = Vec::new();
        fleet.write_vehicles_csv(&mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(
            rows[0],
            "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone"
        );
        let registered = fleet.devices.iter().filter(|d| d.registered).count();
        assert_eq!(rows.len(), registered + 1);
        assert!(rows.iter().skip(1).all(|r| r.split(',').count() == 7));
        let mut geo = Vec::new();
        fleet.write_fences_geojson(&mut geo).unwrap();
        let v: Value = serde_json::from_slice(&geo).unwrap();
        let features = v["features"].as_array().unwrap();
        assert_eq!(features.len(), fleet.fences.len());
        let ids: HashSet<&str> = features
            .iter()
            .map(|f| f["properties"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), features.len());
    }

    #[test]
    fn vins_are_shared_only_by_double_pledges_and_clones() {
        let fleet = Fleet::generate(6, 80, 30);
        assert_eq!(fleet.double_pledged.len(), 4);
        let owners = |vin: &str| -> Vec<usize> {
            (0..fleet.vehicles.len())
                .filter(|i| fleet.vehicles[*i].vin == vin)
                .collect()
        };
        for (i, v) in fleet.vehicles.iter().enumerate() {
            assert!(owners(&v.foreign_vin).is_empty());
            let pair = fleet
                .double_pledged
                .iter()
                .find(|(a, b)| *a as usize == i || *b as usize == i);
            match pair {
                Some((a, b)) => {
                    let mut pair = vec![*a as usize, *b as usize];
                    pair.sort_unstable();
                    assert_eq!(owners(&v.vin), pair);
                }
                None => assert_eq!(owners(&v.vin), vec![i]),
            }
            match &v.cloned_vin {
                Some(vin) => {
                    let o = owners(vin);
                    assert_eq!(o.len(), 1);
                    assert!(o[0] != i && fleet.vehicles[o[0]].loan_id.is_some());
                }
                None => assert!(v.loan_id.is_none()),
            }
        }
    }
}

//! Geofences (SPEC §3): the validated contents of `fences.geojson` and a spatial index over
//! them.
//!
//! A fence is a Polygon, a MultiPolygon (holes allowed: a point in a hole is outside) or a
//! circle (a Point feature with a `radius_m` property). Polygon edges are straight lines in
//! longitude/latitude, as in RFC 7946; rings may have either orientation. Polygons that cross
//! the antimeridian (±180° longitude) are **not supported** and are rejected at load; circles
//! may cross it.
//!
//! Risk fences are kept in an R-tree over their bounding boxes so that
//! [`FenceIndex::risk_fences_at`] stays fast with 100 000 fences; permitted fences are only
//! reached by id.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
use serde_json::Value;

use crate::geo::{self, LocalProjection, point_segment_distance_sq};

/// Position of a fence in its [`FenceIndex`] (the feature's position in the file).
pub type FenceIdx = u32;

/// What a fence means for the vehicles it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceRole {
    /// A region a vehicle listing it is allowed to be in (`geofence_exit`).
    Permitted,
    /// A region every vehicle is watched in (`risk_zone_enter`, `risk_zone_dwell`).
    Risk,
}

impl FenceRole {
    /// The spelling of the `role` property.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permitted => "permitted",
            Self::Risk => "risk",
        }
    }
}

/// One fence: its properties and (privately) its shape.
#[derive(Clone, Debug)]
pub struct Fence {
    /// Unique id (`id` property; a numeric id is kept in its JSON spelling).
    pub id: String,
    /// `role` property.
    pub role: FenceRole,
    /// `category` property, e.g. `pawn_shop`; empty when absent.
    pub category: String,
    /// `name` property; the id when absent.
    pub name: String,
    /// `dwell_min` property: override of the `risk_zone_dwell` threshold, minutes.
    pub dwell_min: Option<f64>,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    Circle { lat: f64, lon: f64, radius_m: f64 },
    Polygons(Vec<Polygon>),
}

/// A polygon with optional holes. Coordinates are `[lon, lat]`, every ring closed.
#[derive(Clone, Debug)]
struct Polygon {
    /// Bounding box of the outer ring, `[min, max]` of `[lon, lat]`.
    bbox: [[f64; 2]; 2],
    /// Ring 0 is the outer boundary, the others are holes.
    rings: Vec<Vec<[f64; 2]>>,
}

/// Why a feature of the fence file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FeatureProblem {
    /// The array element is not an object with `"type": "Feature"`.
    #[error("not a GeoJSON Feature object")]
    NotAFeature,
    /// No `id` property.
    #[error("missing property \"id\"")]
    MissingId,
    /// `id` is neither a non-empty string nor a number.
    #[error("property \"id\" must be a non-empty string or a number")]
    BadId,
    /// Another feature already has this id.
    #[error("duplicate id, already used by features[{first_index}]")]
    DuplicateId {
        /// Index of the feature that used the id first.
        first_index: usize,
    },
    /// No `role` property.
    #[error("missing property \"role\" (expected \"permitted\" or \"risk\")")]
    MissingRole,
    /// `role` has another value.
    #[error("property \"role\" is {0}, expected \"permitted\" or \"risk\"")]
    BadRole(String),
    /// A member has the wrong JSON type or an invalid value.
    #[error("\"{name}\" must be {expected}")]
    BadMember {
        /// Member name, e.g. `dwell_min`.
        name: &'static str,
        /// What was expected instead.
        expected: &'static str,
    },
    /// `geometry` is absent or null.
    #[error("missing geometry")]
    MissingGeometry,
    /// The geometry type is not Polygon, MultiPolygon or Point.
    #[error(
        "unsupported geometry type \"{0}\" (expected Polygon, MultiPolygon, or Point with radius_m)"
    )]
    UnsupportedGeometry(String),
    /// The coordinates do not have the shape the geometry type requires.
    #[error("geometry.{at}: expected {expected}")]
    MalformedCoordinates {
        /// Path inside the geometry, e.g. `coordinates[0][3]`.
        at: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// A linear ring with fewer than 4 positions.
    #[error("geometry.{at}: ring has {positions} positions, a closed ring needs at least 4")]
    RingTooShort {
        /// Path of the ring inside the geometry.
        at: String,
        /// Number of positions found.
        positions: usize,
    },
    /// A linear ring whose last position differs from its first.
    #[error("geometry.{at}: ring is not closed (its last position must repeat the first)")]
    RingNotClosed {
        /// Path of the ring inside the geometry.
        at: String,
    },
    /// A position outside [-180, 180] × [-90, 90].
    #[error(
        "geometry.{at}: position [{lon}, {lat}] is out of range (GeoJSON positions are [longitude, latitude])"
    )]
    CoordinateOutOfRange {
        /// Path of the position inside the geometry.
        at: String,
        /// Longitude found.
        lon: f64,
        /// Latitude found.
        lat: f64,
    },
    /// A ring edge spans more than 180° of longitude.
    #[error("geometry.{at}: ring crosses the antimeridian, which is not supported")]
    CrossesAntimeridian {
        /// Path of the ring inside the geometry.
        at: String,
    },
    /// A Point feature without a positive `radius_m`.
    #[error("a Point fence needs a positive number property \"radius_m\" (circle radius, metres)")]
    BadRadius,
}

/// Error loading or validating a fence file.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{file}: invalid JSON: {error}")]
    Json {
        /// Name of the file.
        file: String,
        /// The parser's error (with line and column).
        error: serde_json::Error,
    },
    /// The top-level value is not a FeatureCollection with a `features` array.
    #[error("{file}: not a GeoJSON FeatureCollection with a \"features\" array")]
    NotFeatureCollection {
        /// Name of the file.
        file: String,
    },
    /// More features than a [`FenceIdx`] can number.
    #[error("{file}: {count} features, more than the supported maximum")]
    TooMany {
        /// Name of the file.
        file: String,
        /// Number of features found.
        count: usize,
    },
    /// One feature is invalid.
    #[error("{file}: features[{index}]{}: {problem}", id_note(.id.as_deref()))]
    Feature {
        /// Name of the file.
        file: String,
        /// 0-based index in the `features` array.
        index: usize,
        /// The feature's id, when it could be read.
        id: Option<String>,
        /// What is wrong.
        problem: FeatureProblem,
    },
}

fn id_note(id: Option<&str>) -> String {
    id.map(|id| format!(" (id \"{id}\")")).unwrap_or_default()
}

type RiskEntry = GeomWithData<Rectangle<[f64; 2]>, FenceIdx>;

/// All fences of a fence file, looked up by id or, for risk fences, by position.
///
/// Immutable once built; share it between worker threads through an `Arc`.
#[derive(Debug)]
pub struct FenceIndex {
    fences: Vec<Fence>,
    by_id: HashMap<String, FenceIdx>,
    /// Bounding boxes (`[lon, lat]` degrees) of the risk fences.
    risk_tree: RTree<RiskEntry>,
    risk_count: usize,
}

impl FenceIndex {
    /// An index without fences.
    pub fn empty() -> Self {
        Self {
            fences: Vec::new(),
            by_id: HashMap::new(),
            risk_tree: RTree::new(),
            risk_count: 0,
        }
    }

    /// Parses and validates a GeoJSON FeatureCollection; `source` names it in errors.
    pub fn from_geojson_str(text: &str, source: &str) -> Result<Self, FenceError> {
        let doc: Value = serde_json::from_str(text).map_err(|error| FenceError::Json {
            file: source.to_owned(),
            error,
        })?;
        let features = doc
            .as_object()
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("FeatureCollection"))
            .and_then(|o| o.get("features"))
            .and_then(Value::as_array)
            .ok_or_else(|| FenceError::NotFeatureCollection {
                file: source.to_owned(),
            })?;
        if FenceIdx::try_from(features.len()).is_err() {
            return Err(FenceError::TooMany {
                file: source.to_owned(),
                count: features.len(),
            });
        }

        let mut fences = Vec::with_capacity(features.len());
        let mut by_id = HashMap::with_capacity(features.len());
        for (index, feature) in features.iter().enumerate() {
            let fail = |id: Option<&str>, problem| FenceError::Feature {
                file: source.to_owned(),
                index,
                id: id.map(str::to_owned),
                problem,
            };
            let (id, props, geometry) = feature_parts(feature).map_err(|p| fail(None, p))?;
            let fence = parse_fence(&id, props, geometry).map_err(|p| fail(Some(&id), p))?;
            match by_id.entry(fence.id.clone()) {
                Entry::Occupied(first) => {
                    let first_index = *first.get() as usize;
                    return Err(fail(
                        Some(&fence.id),
                        FeatureProblem::DuplicateId { first_index },
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert(fences.len() as FenceIdx);
                }
            }
            fences.push(fence);
        }

        Ok(Self::indexed(fences, by_id))
    }

    /// Builds the risk tree over the fences `by_id` names (the live ones).
    fn indexed(fences: Vec<Fence>, by_id: HashMap<String, FenceIdx>) -> Self {
        let mut risk_entries = Vec::new();
        let mut risk_count = 0;
        for &idx in by_id.values() {
            let fence = &fences[idx as usize];
            if fence.role == FenceRole::Risk {
                risk_count += 1;
                for [lower, upper] in fence.envelopes() {
                    let rect = Rectangle::from_corners(lower, upper);
                    risk_entries.push(GeomWithData::new(rect, idx));
                }
            }
        }
        Self {
            fences,
            by_id,
            risk_tree: RTree::bulk_load(risk_entries),
            risk_count,
        }
    }

    /// `new` (a reloaded fence file) with the indices of `self`: a fence id that stays keeps
    /// its index, a new one gets a new index, and a removed one keeps its index as a retired
    /// fence that no lookup finds any more. Vehicle state refers to fences by index, so it
    /// stays valid across a reload.
    pub fn reloaded(&self, new: FenceIndex) -> FenceIndex {
        let mut fences = self.fences.clone();
        let mut by_id = HashMap::with_capacity(new.by_id.len());
        let mut incoming: Vec<(FenceIdx, Fence)> = new
            .by_id
            .values()
            .map(|&i| (i, new.fences[i as usize].clone()))
            .collect();
        // Keep the new file's order among new fences, so indices are deterministic.
        incoming.sort_by_key(|(i, _)| *i);
        for (_, fence) in incoming {
            let idx = match self.by_id.get(&fence.id) {
                Some(&idx) => {
                    fences[idx as usize] = fence;
                    idx
                }
                None => {
                    fences.push(fence);
                    (fences.len() - 1) as FenceIdx
                }
            };
            by_id.insert(fences[idx as usize].id.clone(), idx);
        }
        Self::indexed(fences, by_id)
    }

    /// Reads and validates a fence file.
    pub fn load(path: &Path) -> Result<Self, FenceError> {
        let text = std::fs::read_to_string(path).map_err(|source| FenceError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_geojson_str(&text, &path.display().to_string())
    }

    /// Number of fences (retired ones of earlier reloads included).
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether there are no fences.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// The fence at `idx`.
    ///
    /// # Panics
    /// If `idx` is not below [`len`](Self::len).
    pub fn fence(&self, idx: FenceIdx) -> &Fence {
        &self.fences[idx as usize]
    }

    /// The index of the fence with this id.
    pub fn lookup(&self, id: &str) -> Option<FenceIdx> {
        self.by_id.get(id).copied()
    }

    /// Risk fences containing the point, ascending FenceIdx, appended to `out` (cleared first).
    pub fn risk_fences_at(&self, lat: f64, lon: f64, out: &mut Vec<FenceIdx>) {
        out.clear();
        let probe = AABB::from_point([lon, lat]);
        for entry in self.risk_tree.locate_in_envelope_intersecting(&probe) {
            if self.fences[entry.data as usize].contains(lat, lon) {
                out.push(entry.data);
            }
        }
        out.sort_unstable();
        // A circle across the antimeridian has two boxes and may be found twice.
        out.dedup();
    }

    /// Signed distance in metres from the point to the fence boundary: negative inside (depth), positive outside.
    ///
    /// Exact (haversine) for circles; for polygons the distance to the nearest edge in a
    /// projection centred on the point, accurate to well under 1 % for edges within about
    /// 50 km (see [`LocalProjection`]).
    ///
    /// # Panics
    /// If `idx` is not below [`len`](Self::len).
    pub fn signed_distance_m(&self, idx: FenceIdx, lat: f64, lon: f64) -> f64 {
        self.fence(idx).signed_distance_m(lat, lon)
    }

    /// For a union of fences (a vehicle's permitted set): min of signed_distance_m over `ids`; f64::INFINITY if ids is empty.
    ///
    /// Negative exactly when the point is inside at least one of the fences.
    ///
    /// # Panics
    /// If an id is not below [`len`](Self::len).
    pub fn union_signed_distance_m(&self, ids: &[FenceIdx], lat: f64, lon: f64) -> f64 {
        ids.iter()
            .map(|&idx| self.signed_distance_m(idx, lat, lon))
            .fold(f64::INFINITY, f64::min)
    }

    /// Whether the point is outside every fence of `ids`: exactly
    /// [`union_signed_distance_m`](Self::union_signed_distance_m) `> 0`, but a polygon that
    /// contains the point answers without measuring its boundary, the costly part (every
    /// vertex projected), and the first fence that contains it ends the search.
    ///
    /// # Panics
    /// If an id is not below [`len`](Self::len).
    pub fn union_outside(&self, ids: &[FenceIdx], lat: f64, lon: f64) -> bool {
        ids.iter().all(|&idx| self.fence(idx).outside(lat, lon))
    }

    /// Number of fences with role risk.
    pub fn risk_count(&self) -> usize {
        self.risk_count
    }

    /// Number of fences with role permitted.
    pub fn permitted_count(&self) -> usize {
        self.by_id.len() - self.risk_count
    }
}

impl Fence {
    /// Exact containment test (no bounding-box shortcut beyond each polygon's own).
    fn contains(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => geo::haversine_m(*clat, *clon, lat, lon) <= *radius_m,
            Shape::Polygons(polygons) => polygons.iter().any(|p| p.contains(lon, lat)),
        }
    }

    fn signed_distance_m(&self, lat: f64, lon: f64) -> f64 {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => geo::haversine_m(*clat, *clon, lat, lon) - radius_m,
            Shape::Polygons(polygons) => {
                let boundary = boundary_distance_m(polygons, lat, lon);
                if polygons.iter().any(|p| p.contains(lon, lat)) {
                    -boundary
                } else {
                    boundary
                }
            }
        }
    }

    /// `signed_distance_m > 0`.
    fn outside(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Circle { .. } => self.signed_distance_m(lat, lon) > 0.0,
            Shape::Polygons(polygons) => {
                !polygons.iter().any(|p| p.contains(lon, lat))
                    && boundary_distance_m(polygons, lat, lon) > 0.0
            }
        }
    }

    /// Bounding boxes (`[lower, upper]` corners of `[lon, lat]`) covering the fence: one, or
    /// two for a circle across the antimeridian.
    fn envelopes(&self) -> Vec<[[f64; 2]; 2]> {
        match &self.shape {
            Shape::Polygons(polygons) => {
                let mut lower = [f64::INFINITY; 2];
                let mut upper = [f64::NEG_INFINITY; 2];
                for [min, max] in polygons.iter().map(|p| p.bbox) {
                    lower = [lower[0].min(min[0]), lower[1].min(min[1])];
                    upper = [upper[0].max(max[0]), upper[1].max(max[1])];
                }
                vec![[lower, upper]]
            }
            Shape::Circle { lat, lon, radius_m } => circle_envelopes(*lat, *lon, *radius_m),
        }
    }
}

impl Polygon {
    fn contains(&self, lon: f64, lat: f64) -> bool {
        let [min, max] = self.bbox;
        if lon < min[0] || lon > max[0] || lat < min[1] || lat > max[1] {
            return false;
        }
        let Some((outer, holes)) = self.rings.split_first() else {
            return false;
        };
        ring_contains(outer, lon, lat) && !holes.iter().any(|h| ring_contains(h, lon, lat))
    }
}

/// Even–odd ray casting; independent of ring orientation. `ring` is closed.
fn ring_contains(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut inside = false;
    for edge in ring.windows(2) {
        let ([ax, ay], [bx, by]) = (edge[0], edge[1]);
        if (ay > y) != (by > y) && x < ax + (y - ay) * (bx - ax) / (by - ay) {
            inside = !inside;
        }
    }
    inside
}

/// Distance in metres from a point to the nearest edge of any ring of `polygons`.
fn boundary_distance_m(polygons: &[Polygon], lat: f64, lon: f64) -> f64 {
    let proj = LocalProjection::new(lat, lon);
    polygons
        .iter()
        .flat_map(|p| &p.rings)
        .map(|ring| ring_distance_m(&proj, ring))
        .fold(f64::INFINITY, f64::min)
}

/// Distance in metres from the projection's origin to the nearest edge of a closed ring.
fn ring_distance_m(proj: &LocalProjection, ring: &[[f64; 2]]) -> f64 {
    let mut best = f64::INFINITY;
    let mut prev: Option<[f64; 2]> = None;
    for &[lon, lat] in ring {
        let here = proj.project(lat, lon);
        if let Some(prev) = prev {
            best = best.min(point_segment_distance_sq([0.0, 0.0], prev, here));
        }
        prev = Some(here);
    }
    best.sqrt()
}

/// Exact bounding boxes of a spherical cap, slightly widened against rounding, split in two
/// when it crosses the antimeridian.
fn circle_envelopes(lat: f64, lon: f64, radius_m: f64) -> Vec<[[f64; 2]; 2]> {
    const MARGIN: f64 = 1e-9;
    let delta = radius_m / geo::EARTH_RADIUS_M;
    let dlat = delta.to_degrees() * (1.0 + MARGIN) + MARGIN;
    let (south, north) = (lat - dlat, lat + dlat);
    if south <= -90.0 || north >= 90.0 {
        // The cap contains a pole: every longitude.
        return vec![[[-180.0, south.max(-90.0)], [180.0, north.min(90.0)]]];
    }
    let sin_ratio = delta.sin() / lat.to_radians().cos();
    if delta >= std::f64::consts::FRAC_PI_2 || sin_ratio >= 1.0 {
        return vec![[[-180.0, south], [180.0, north]]];
    }
    let dlon = sin_ratio.asin().to_degrees() * (1.0 + MARGIN) + MARGIN;
    let (west, east) = (lon - dlon, lon + dlon);
    if west < -180.0 {
        vec![
            [[-180.0, south], [east, north]],
            [[west + 360.0, south], [180.0, north]],
        ]
    } else if east > 180.0 {
        vec![
            [[west, south], [180.0, north]],
            [[-180.0, south], [east - 360.0, north]],
        ]
    } else {
        vec![[[west, south], [east, north]]]
    }
}

/// Splits a feature into its id, properties (an object, or null when absent) and geometry.
fn feature_parts(feature: &Value) -> Result<(String, &Value, &Value), FeatureProblem> {
    let obj = feature
        .as_object()
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("Feature"))
        .ok_or(FeatureProblem::NotAFeature)?;
    let props = obj.get("properties").unwrap_or(&Value::Null);
    if !(props.is_object() || props.is_null()) {
        return Err(FeatureProblem::BadMember {
            name: "properties",
            expected: "an object",
        });
    }
    let id = match props.get("id") {
        None | Some(Value::Null) => return Err(FeatureProblem::MissingId),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(FeatureProblem::BadId),
    };
    Ok((id, props, obj.get("geometry").unwrap_or(&Value::Null)))
}

/// Builds a fence from a feature whose id is known.
fn parse_fence(id: &str, props: &Value, geometry: &Value) -> Result<Fence, FeatureProblem> {
    let role = match props.get("role") {
        None | Some(Value::Null) => return Err(FeatureProblem::MissingRole),
        Some(Value::String(s)) if s == "permitted" => FenceRole::Permitted,
        Some(Value::String(s)) if s == "risk" => FenceRole::Risk,
        Some(other) => return Err(FeatureProblem::BadRole(other.to_string())),
    };
    let category = optional_string(props, "category")?.unwrap_or_default();
    let name = optional_string(props, "name")?.unwrap_or_else(|| id.to_owned());
    let dwell_min = match props.get("dwell_min") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|m| *m > 0.0)
                .ok_or(FeatureProblem::BadMember {
                    name: "dwell_min",
                    expected: "a positive number of minutes",
                })?,
        ),
    };
    let shape = parse_shape(geometry, props)?;
    Ok(Fence {
        id: id.to_owned(),
        role,
        category,
        name,
        dwell_min,
        shape,
    })
}

fn optional_string(props: &Value, name: &'static str) -> Result<Option<String>, FeatureProblem> {
    match props.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FeatureProblem::BadMember {
            name,
            expected: "a string",
        }),
    }
}

fn parse_shape(geometry: &Value, props: &Value) -> Result<Shape, FeatureProblem> {
    let geometry = geometry
        .as_object()
        .ok_or(FeatureProblem::MissingGeometry)?;
    let kind = geometry
        .get("type")
        .and_then(Value::as_str)
        .ok_or(FeatureProblem::BadMember {
            name: "geometry.type",
            expected: "a string",
        })?;
    let coords = geometry.get("coordinates").unwrap_or(&Value::Null);
    match kind {
        "Polygon" => Ok(Shape::Polygons(vec![parse_polygon(coords, "coordinates")?])),
        "MultiPolygon" => {
            let parts = non_empty_array(coords, "coordinates", "a non-empty array of polygons")?;
            let polygons = parts
                .iter()
                .enumerate()
                .map(|(i, p)| parse_polygon(p, &format!("coordinates[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok(Shape::Polygons(polygons))
        }
        "Point" => {
            let [lon, lat] = parse_position(coords, "coordinates")?;
            let radius_m = props
                .get("radius_m")
                .and_then(Value::as_f64)
                .filter(|r| *r > 0.0)
                .ok_or(FeatureProblem::BadRadius)?;
            Ok(Shape::Circle { lat, lon, radius_m })
        }
        other => Err(FeatureProblem::UnsupportedGeometry(other.to_owned())),
    }
}

fn non_empty_array<'a>(
    value: &'a Value,
    at: &str,
    expected: &'static str,
) -> Result<&'a Vec<Value>, FeatureProblem> {
    value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| FeatureProblem::MalformedCoordinates {
            at: at.to_owned(),
            expected,
        })
}

fn parse_polygon(value: &Value, at: &str) -> Result<Polygon, FeatureProblem> {
    let rings = non_empty_array(value, at, "a non-empty array of linear rings")?
        .iter()
        .enumerate()
        .map(|(i, r)| parse_ring(r, &format!("{at}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bbox = [[f64::INFINITY; 2], [f64::NEG_INFINITY; 2]];
    for &[lon, lat] in &rings[0] {
        bbox[0] = [bbox[0][0].min(lon), bbox[0][1].min(lat)];
        bbox[1] = [bbox[1][0].max(lon), bbox[1][1].max(lat)];
    }
    Ok(Polygon { bbox, rings })
}

fn parse_ring(value: &Value, at: &str) -> Result<Vec<[f64; 2]>, FeatureProblem> {
    let positions = value
        .as_array()
        .ok_or_else(|| FeatureProblem::MalformedCoordinates {
            at: at.to_owned(),
            expected: "an array of positions",
        })?;
    let ring = positions
        .iter()
        .enumerate()
        .map(|(i, p)| parse_position(p, &format!("{at}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if ring.len() < 4 {
        return Err(FeatureProblem::RingTooShort {
            at: at.to_owned(),
            positions: ring.len(),
        });
    }
    if ring.first() != ring.last() {
        return Err(FeatureProblem::RingNotClosed { at: at.to_owned() });
    }
    if ring.windows(2).any(|e| (e[1][0] - e[0][0]).abs() > 180.0) {
        return Err(FeatureProblem::CrossesAntimeridian { at: at.to_owned() });
    }
    Ok(ring)
}

/// A `[lon, lat]` position; further numbers (altitude) are allowed and ignored.
fn parse_position(value: &Value, at: &str) -> Result<[f64; 2], FeatureProblem> {
    let malformed = || FeatureProblem::MalformedCoordinates {
        at: at.to_owned(),
        expected: "a position [longitude, latitude]",
    };
    let items = value
        .as_array()
        .filter(|a| a.len() >= 2 && a.iter().all(Value::is_number))
        .ok_or_else(malformed)?;
    let number = |v: &Value| v.as_f64().ok_or_else(malformed);
    let (lon, lat) = (number(&items[0])?, number(&items[1])?);
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return Err(FeatureProblem::CoordinateOutOfRange {
            at: at.to_owned(),
            lon,
            lat,
        });
    }
    Ok([lon, lat])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const EARTH_M_PER_DEG: f64 = geo::EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

    fn collection(features: Vec<Value>) -> String {
        json!({ "type": "FeatureCollection", "features": features }).to_string()
    }

    fn square_ring(lat: f64, lon: f64, half: f64) -> Value {
        json!([
            [lon - half, lat - half],
            [lon + half, lat - half],
            [lon + half, lat + half],
            [lon - half, lat + half],
            [lon - half, lat - half]
        ])
    }

    fn square(id: &str, role: &str, lat: f64, lon: f64, half: f64) -> Value {
        json!({
            "type": "Feature",
            "properties": { "id": id, "role": role },
            "geometry": { "type": "Polygon", "coordinates": [square_ring(lat, lon, half)] }
        })
    }

    fn circle(id: &str, role: &str, lat: f64, lon: f64, radius_m: f64) -> Value {
        json!({
            "type": "Feature",
            "properties": { "id": id, "role": role, "radius_m": radius_m },
            "geometry": { "type": "Point", "coordinates": [lon, lat] }
        })
    }

    fn index(features: Vec<Value>) -> FenceIndex {
        FenceIndex::from_geojson_str(&collection(features), "fences.geojson").unwrap()
    }

    fn risk_at(index: &FenceIndex, lat: f64, lon: f64) -> Vec<FenceIdx> {
        let mut out = vec![999];
        index.risk_fences_at(lat, lon, &mut out);
        out
    }

    fn error(features: Vec<Value>) -> String {
        FenceIndex::from_geojson_str(&collection(features), "fences.geojson")
            .unwrap_err()
            .to_string()
    }

    fn with_props(mut feature: Value, props: Value) -> Value {
        feature["properties"] = props;
        feature
    }

    fn with_geometry(mut feature: Value, geometry: Value) -> Value {
        feature["geometry"] = geometry;
        feature
    }

    #[test]
    fn a_reload_keeps_the_indices_of_fences_that_stay() {
        let old = index(vec![
            circle("a", "risk", 31.0, 121.0, 500.0),
            circle("b", "risk", 32.0, 121.0, 500.0),
            square("home", "permitted", 31.0, 121.0, 0.5),
        ]);
        let (a, b, home) = (
            old.lookup("a").unwrap(),
            old.lookup("b").unwrap(),
            old.lookup("home").unwrap(),
        );
        let new = old.reloaded(index(vec![
            circle("c", "risk", 33.0, 121.0, 500.0),
            square("home", "permitted", 31.0, 121.0, 1.0),
            circle("a", "risk", 31.0, 121.0, 500.0),
        ]));
        assert_eq!(new.lookup("a"), Some(a));
        assert_eq!(new.lookup("home"), Some(home));
        assert_eq!(new.lookup("b"), None, "removed fences are not found");
        assert_eq!(new.fence(b).id, "b", "but their index still names them");
        assert!(risk_at(&new, 32.0, 121.0).is_empty());
        assert_eq!(risk_at(&new, 33.0, 121.0), vec![3]);
        assert_eq!(risk_at(&new, 31.0, 121.0), vec![a]);
        assert!(
            new.signed_distance_m(home, 31.0, 121.9) < 0.0,
            "the home fence grew"
        );
        assert_eq!((new.risk_count(), new.permitted_count()), (2, 1));
    }

    #[test]
    fn shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FenceIndex>();
    }

    #[test]
    fn empty_index() {
        let idx = FenceIndex::empty();
        assert!(idx.is_empty());
        assert_eq!(
            (idx.len(), idx.risk_count(), idx.permitted_count()),
            (0, 0, 0)
        );
        assert!(risk_at(&idx, 31.0, 121.0).is_empty());
        assert_eq!(idx.union_signed_distance_m(&[], 31.0, 121.0), f64::INFINITY);
        let idx = FenceIndex::from_geojson_str(&collection(vec![]), "f").unwrap();
        assert!(idx.is_empty());
    }

    #[test]
    fn properties_and_lookup() {
        let idx = index(vec![
            json!({
                "type": "Feature",
                "properties": {
                    "id": "pawn-1", "role": "risk", "category": "pawn_shop",
                    "name": "Lucky Pawn", "dwell_min": 20
                },
                "geometry": { "type": "Polygon", "coordinates": [square_ring(31.0, 121.0, 0.01)] }
            }),
            json!({
                "type": "Feature",
                "properties": { "id": 42, "role": "permitted" },
                "geometry": { "type": "Polygon", "coordinates": [square_ring(31.0, 121.0, 1.0)] }
            }),
        ]);
        assert_eq!(
            (idx.len(), idx.risk_count(), idx.permitted_count()),
            (2, 1, 1)
        );
        let pawn = idx.fence(idx.lookup("pawn-1").unwrap());
        assert_eq!(pawn.role, FenceRole::Risk);
        assert_eq!(pawn.category, "pawn_shop");
        assert_eq!(pawn.name, "Lucky Pawn");
        assert_eq!(pawn.dwell_min, Some(20.0));
        assert_eq!(idx.lookup("42"), Some(1));
        let area = idx.fence(1);
        assert_eq!((area.id.as_str(), area.name.as_str()), ("42", "42"));
        assert_eq!((area.category.as_str(), area.dwell_min), ("", None));
        assert_eq!(area.role.as_str(), "permitted");
        assert_eq!(idx.lookup("nope"), None);
    }

    #[test]
    fn polygon_in_and_out_either_orientation() {
        let cw = json!([
            [121.0, 31.0],
            [121.0, 31.1],
            [121.1, 31.1],
            [121.1, 31.0],
            [121.0, 31.0]
        ]);
        let ccw = json!([
            [121.2, 31.0],
            [121.3, 31.0],
            [121.3, 31.1],
            [121.2, 31.1],
            [121.2, 31.0]
        ]);
        let idx = index(vec![
            with_geometry(
                square("cw", "risk", 0.0, 0.0, 1.0),
                json!({ "type": "Polygon", "coordinates": [cw] }),
            ),
            with_geometry(
                square("ccw", "risk", 0.0, 0.0, 1.0),
                json!({ "type": "Polygon", "coordinates": [ccw] }),
            ),
        ]);
        assert_eq!(risk_at(&idx, 31.05, 121.05), vec![0]);
        assert_eq!(risk_at(&idx, 31.05, 121.25), vec![1]);
        assert!(risk_at(&idx, 31.05, 121.15).is_empty());
        assert!(risk_at(&idx, 31.2, 121.05).is_empty());
    }

    #[test]
    fn concave_polygon() {
        // A "U": the notch between the arms is outside.
        let u = json!([
            [0.0, 0.0],
            [3.0, 0.0],
            [3.0, 3.0],
            [2.0, 3.0],
            [2.0, 1.0],
            [1.0, 1.0],
            [1.0, 3.0],
            [0.0, 3.0],
            [0.0, 0.0]
        ]);
        let idx = index(vec![with_geometry(
            square("u", "risk", 0.0, 0.0, 1.0),
            json!({ "type": "Polygon", "coordinates": [u] }),
        )]);
        assert_eq!(risk_at(&idx, 2.5, 0.5), vec![0]);
        assert_eq!(risk_at(&idx, 0.5, 1.5), vec![0]);
        assert!(risk_at(&idx, 2.0, 1.5).is_empty());
    }

    #[test]
    fn hole_is_outside() {
        let idx = index(vec![with_geometry(
            square("donut", "risk", 0.0, 0.0, 1.0),
            json!({
                "type": "Polygon",
                "coordinates": [square_ring(31.0, 121.0, 0.1), square_ring(31.0, 121.0, 0.02)]
            }),
        )]);
        assert_eq!(risk_at(&idx, 31.05, 121.0), vec![0]);
        assert!(risk_at(&idx, 31.0, 121.0).is_empty());
        // In the hole: positive, the distance to the hole's nearest (east/west) edge.
        let d = idx.signed_distance_m(0, 31.0, 121.0);
        let to_hole_edge = 0.02 * EARTH_M_PER_DEG * 31f64.to_radians().cos();
        assert!((d - to_hole_edge).abs() < 0.01 * to_hole_edge, "{d}");
        // In the ring between hole and outer edge: negative.
        assert!(idx.signed_distance_m(0, 31.06, 121.0) < 0.0);
    }

    #[test]
    fn multipolygon() {
        let idx = index(vec![with_geometry(
            square("two", "risk", 0.0, 0.0, 1.0),
            json!({
                "type": "MultiPolygon",
                "coordinates": [
                    [square_ring(31.0, 121.0, 0.01)],
                    [square_ring(31.0, 122.0, 0.01), square_ring(31.0, 122.0, 0.005)]
                ]
            }),
        )]);
        assert_eq!(risk_at(&idx, 31.0, 121.0), vec![0]);
        assert_eq!(risk_at(&idx, 31.008, 122.0), vec![0]);
        assert!(risk_at(&idx, 31.0, 122.0).is_empty());
        assert!(risk_at(&idx, 31.0, 121.5).is_empty());
        // Between the parts: distance to the nearer part.
        let d = idx.signed_distance_m(0, 31.0, 121.02);
        let want = 0.01 * EARTH_M_PER_DEG * 31f64.to_radians().cos();
        assert!((d - want).abs() < 0.01 * want, "{d} vs {want}");
        assert!(idx.signed_distance_m(0, 31.0, 122.009) < 0.0);
    }

    #[test]
    fn circle_in_out_and_distance() {
        let idx = index(vec![circle("c", "risk", 31.0, 121.0, 500.0)]);
        let north = |m: f64| 31.0 + m / EARTH_M_PER_DEG;
        assert_eq!(risk_at(&idx, north(499.0), 121.0), vec![0]);
        assert!(risk_at(&idx, north(501.0), 121.0).is_empty());
        let east = 121.0 + 499.0 / (EARTH_M_PER_DEG * 31f64.to_radians().cos());
        assert_eq!(risk_at(&idx, 31.0, east), vec![0]);
        assert!((idx.signed_distance_m(0, 31.0, 121.0) + 500.0).abs() < 1e-6);
        assert!((idx.signed_distance_m(0, north(2000.0), 121.0) - 1500.0).abs() < 0.01);
    }

    #[test]
    fn circle_across_the_antimeridian_and_around_a_pole() {
        let idx = index(vec![
            circle("date-line", "risk", 0.0, 179.999, 1000.0),
            circle("pole", "risk", 89.99, 0.0, 5000.0),
        ]);
        assert_eq!(risk_at(&idx, 0.0, -179.997), vec![0]);
        assert_eq!(risk_at(&idx, 0.0, 179.995), vec![0]);
        assert!(risk_at(&idx, 0.0, -179.98).is_empty());
        assert_eq!(risk_at(&idx, 89.99, 180.0), vec![1]);
        assert_eq!(risk_at(&idx, 89.999, -90.0), vec![1]);
    }

    #[test]
    fn antimeridian_polygon_is_rejected() {
        let ring = json!([
            [179.0, 0.0],
            [-179.0, 0.0],
            [-179.0, 1.0],
            [179.0, 1.0],
            [179.0, 0.0]
        ]);
        let msg = error(vec![with_geometry(
            square("fiji", "risk", 0.0, 0.0, 1.0),
            json!({ "type": "Polygon", "coordinates": [ring] }),
        )]);
        assert!(msg.contains("features[0] (id \"fiji\")"), "{msg}");
        assert!(msg.contains("antimeridian"), "{msg}");
    }

    #[test]
    fn overlapping_risk_fences_ascending_and_permitted_ignored() {
        let idx = index(vec![
            square("big", "risk", 31.0, 121.0, 0.5),
            square("allowed", "permitted", 31.0, 121.0, 0.5),
            circle("small", "risk", 31.0, 121.0, 1000.0),
        ]);
        assert_eq!(risk_at(&idx, 31.0, 121.0), vec![0, 2]);
        assert_eq!(risk_at(&idx, 31.2, 121.0), vec![0]);
    }

    #[test]
    fn signed_distance_of_square() {
        let idx = index(vec![square("sq", "permitted", 31.0, 121.0, 0.05)]);
        let m_per_deg_lon = EARTH_M_PER_DEG * 31f64.to_radians().cos();
        let edge = 121.05;
        let outside = idx.signed_distance_m(0, 31.0, edge + 1500.0 / m_per_deg_lon);
        assert!((outside - 1500.0).abs() < 0.02 * 1500.0, "{outside}");
        assert!((outside - 1500.0).abs() < 2.0, "{outside}");
        // Centre: the nearest edges are east/west, 0.05° of longitude away.
        let centre = idx.signed_distance_m(0, 31.0, 121.0);
        let depth = 0.05 * m_per_deg_lon;
        assert!(centre < 0.0);
        assert!(
            (centre + depth).abs() < 0.005 * depth,
            "{centre} vs {depth}"
        );
        // Beyond a corner: distance to the corner.
        let corner = idx.signed_distance_m(0, 31.06, 121.06);
        let want = geo::haversine_m(31.06, 121.06, 31.05, 121.05);
        assert!((corner - want).abs() < 0.005 * want, "{corner} vs {want}");
    }

    #[test]
    fn union_signed_distance() {
        let idx = index(vec![
            square("home", "permitted", 31.0, 121.0, 0.05),
            square("work", "permitted", 31.0, 121.2, 0.05),
            circle("depot", "permitted", 31.5, 121.0, 1000.0),
        ]);
        let both = [0, 1];
        // Between the two squares, nearer to "home".
        let between = idx.union_signed_distance_m(&both, 31.0, 121.06);
        assert!((between - idx.signed_distance_m(0, 31.0, 121.06)).abs() < 1e-9);
        assert!(between > 0.0);
        // Inside "work": negative.
        assert!(idx.union_signed_distance_m(&both, 31.0, 121.2) < 0.0);
        assert!(idx.union_signed_distance_m(&[0, 1, 2], 31.5, 121.0) < -999.0);
        assert_eq!(idx.union_signed_distance_m(&[], 31.0, 121.0), f64::INFINITY);
        assert!(idx.union_outside(&both, 31.0, 121.06));
        assert!(!idx.union_outside(&both, 31.0, 121.2));
        assert!(!idx.union_outside(&[0, 1, 2], 31.5, 121.0));
        assert!(idx.union_outside(&[], 31.0, 121.0));
    }

    #[test]
    fn load_reads_a_file_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("lienwatch-fences-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fences.geojson");
        std::fs::write(
            &path,
            collection(vec![circle("c", "risk", 31.0, 121.0, 100.0)]),
        )
        .unwrap();
        assert_eq!(FenceIndex::load(&path).unwrap().len(), 1);
        std::fs::write(&path, "{").unwrap();
        let msg = FenceIndex::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}: invalid JSON", path.display())),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = FenceIndex::load(&path).unwrap_err();
        assert!(matches!(err, FenceError::Io { .. }), "{err}");
        assert!(err.to_string().contains("fences.geojson"), "{err}");
    }

    #[test]
    fn not_a_feature_collection() {
        for text in [
            r#"{"type": "Feature"}"#,
            "[]",
            r#"{"type": "FeatureCollection"}"#,
        ] {
            let msg = FenceIndex::from_geojson_str(text, "f.geojson")
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("f.geojson: not a GeoJSON FeatureCollection"),
                "{msg}"
            );
        }
    }

    #[test]
    fn error_missing_or_bad_id() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        let msg = error(vec![
            ok.clone(),
            with_props(ok.clone(), json!({ "role": "risk" })),
        ]);
        assert_eq!(msg, "fences.geojson: features[1]: missing property \"id\"");
        let msg = error(vec![with_props(
            ok.clone(),
            json!({ "id": "", "role": "risk" }),
        )]);
        assert!(
            msg.starts_with("fences.geojson: features[0]: property \"id\""),
            "{msg}"
        );
        let msg = error(vec![with_props(
            ok.clone(),
            json!({ "id": [1], "role": "risk" }),
        )]);
        assert!(
            msg.contains("features[0]: property \"id\" must be"),
            "{msg}"
        );
        let mut no_props = ok;
        no_props.as_object_mut().unwrap().remove("properties");
        assert!(error(vec![no_props]).contains("features[0]: missing property \"id\""));
    }

    #[test]
    fn error_duplicate_id() {
        let msg = error(vec![
            square("a", "risk", 31.0, 121.0, 0.01),
            circle("b", "risk", 31.0, 121.0, 10.0),
            circle("a", "permitted", 31.0, 121.0, 10.0),
        ]);
        assert_eq!(
            msg,
            "fences.geojson: features[2] (id \"a\"): duplicate id, already used by features[0]"
        );
    }

    #[test]
    fn error_role() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        let msg = error(vec![with_props(
            ok.clone(),
            json!({ "id": "a", "role": "allowed" }),
        )]);
        assert_eq!(
            msg,
            "fences.geojson: features[0] (id \"a\"): property \"role\" is \"allowed\", \
             expected \"permitted\" or \"risk\""
        );
        let msg = error(vec![with_props(ok, json!({ "id": 7 }))]);
        assert!(
            msg.contains("features[0] (id \"7\"): missing property \"role\""),
            "{msg}"
        );
    }

    #[test]
    fn error_bad_optional_properties() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        for (props, member) in [
            (
                json!({ "id": "a", "role": "risk", "dwell_min": 0 }),
                "dwell_min",
            ),
            (
                json!({ "id": "a", "role": "risk", "dwell_min": "30" }),
                "dwell_min",
            ),
            (
                json!({ "id": "a", "role": "risk", "category": 3 }),
                "category",
            ),
            (json!({ "id": "a", "role": "risk", "name": false }), "name"),
        ] {
            let msg = error(vec![with_props(ok.clone(), props)]);
            assert!(msg.contains("features[0] (id \"a\"):"), "{msg}");
            assert!(msg.contains(&format!("\"{member}\" must be")), "{msg}");
        }
        let mut bad = ok;
        bad["properties"] = json!("x");
        let msg = error(vec![bad]);
        assert!(
            msg.contains("features[0]: \"properties\" must be an object"),
            "{msg}"
        );
    }

    #[test]
    fn error_not_a_feature() {
        let msg = error(vec![json!({ "type": "Polygon", "coordinates": [] })]);
        assert_eq!(
            msg,
            "fences.geojson: features[0]: not a GeoJSON Feature object"
        );
    }

    #[test]
    fn error_geometry_type() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        let line = json!({ "type": "LineString", "coordinates": [[121.0, 31.0], [121.1, 31.0]] });
        let msg = error(vec![with_geometry(ok.clone(), line)]);
        assert!(
            msg.starts_with(
                "fences.geojson: features[0] (id \"a\"): unsupported geometry type \"LineString\""
            ),
            "{msg}"
        );
        let msg = error(vec![with_geometry(ok, Value::Null)]);
        assert!(
            msg.contains("features[0] (id \"a\"): missing geometry"),
            "{msg}"
        );
    }

    #[test]
    fn error_short_and_open_rings() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        let short = json!([[[121.0, 31.0], [121.1, 31.0], [121.0, 31.0]]]);
        let msg = error(vec![with_geometry(
            ok.clone(),
            json!({ "type": "Polygon", "coordinates": short }),
        )]);
        assert_eq!(
            msg,
            "fences.geojson: features[0] (id \"a\"): geometry.coordinates[0]: ring has 3 \
             positions, a closed ring needs at least 4"
        );
        let open = json!([[[121.0, 31.0], [121.1, 31.0], [121.1, 31.1], [121.0, 31.1]]]);
        let msg = error(vec![with_geometry(
            ok.clone(),
            json!({ "type": "MultiPolygon", "coordinates": [[square_ring(31.0, 121.0, 0.1)], open] }),
        )]);
        assert!(
            msg.contains("features[0] (id \"a\"): geometry.coordinates[1][0]: ring is not closed"),
            "{msg}"
        );
        let msg = error(vec![with_geometry(
            ok,
            json!({ "type": "Polygon", "coordinates": [] }),
        )]);
        assert!(
            msg.contains("(id \"a\"): geometry.coordinates: expected a non-empty array"),
            "{msg}"
        );
    }

    #[test]
    fn error_coordinates() {
        let ok = square("a", "risk", 31.0, 121.0, 0.01);
        // Latitude and longitude swapped.
        let swapped = json!([[[31.0, 121.0], [31.1, 121.0], [31.1, 121.1], [31.0, 121.0]]]);
        let msg = error(vec![with_geometry(
            ok.clone(),
            json!({ "type": "Polygon", "coordinates": swapped }),
        )]);
        assert!(
            msg.contains("features[0] (id \"a\"): geometry.coordinates[0][0]: position [31, 121] is out of range"),
            "{msg}"
        );
        let msg = error(vec![with_geometry(
            ok,
            json!({ "type": "Polygon", "coordinates": [[[121.0, "31"], [1, 2], [3, 4], [121.0, "31"]]] }),
        )]);
        assert!(
            msg.contains("(id \"a\"): geometry.coordinates[0][0]: expected a position"),
            "{msg}"
        );
    }

    #[test]
    fn error_circle_radius() {
        for props in [
            json!({ "id": "c", "role": "risk" }),
            json!({ "id": "c", "role": "risk", "radius_m": 0 }),
            json!({ "id": "c", "role": "risk", "radius_m": -5 }),
            json!({ "id": "c", "role": "risk", "radius_m": "100" }),
        ] {
            let msg = error(vec![with_props(
                circle("c", "risk", 31.0, 121.0, 1.0),
                props,
            )]);
            assert!(msg.starts_with("fences.geojson: features[0] (id \"c\"): a Point fence needs a positive number property \"radius_m\""), "{msg}");
        }
    }

    #[test]
    fn error_invalid_json_names_the_file() {
        let msg = FenceIndex::from_geojson_str("{ nope", "x.geojson")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("x.geojson: invalid JSON: "), "{msg}");
    }

    fn brute_force(idx: &FenceIndex, lat: f64, lon: f64) -> Vec<FenceIdx> {
        (0..idx.len() as FenceIdx)
            .filter(|&i| {
                let fence = idx.fence(i);
                fence.role == FenceRole::Risk && fence.contains(lat, lon)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn rtree_lookup_equals_brute_force(
            shapes in prop::collection::vec(
                (any::<bool>(), 0u8..4, 30.0f64..32.0, 120.0f64..122.0, 0.0005f64..0.3),
                100..400,
            ),
            points in prop::collection::vec((29.8f64..32.2, 119.8f64..122.2), 60),
        ) {
            let features = shapes
                .iter()
                .enumerate()
                .map(|(i, &(is_circle, role, lat, lon, size))| {
                    let role = if role == 0 { "permitted" } else { "risk" };
                    let id = format!("f{i}");
                    if is_circle {
                        circle(&id, role, lat, lon, size * 100_000.0)
                    } else {
                        square(&id, role, lat, lon, size)
                    }
                })
                .collect();
            let idx = index(features);
            let mut out = Vec::new();
            let mut hits = 0;
            for &(lat, lon) in &points {
                idx.risk_fences_at(lat, lon, &mut out);
                prop_assert_eq!(&out, &brute_force(&idx, lat, lon));
                hits += out.len();
            }
            // Shapes are dense enough that the comparison is not vacuous.
            prop_assert!(hits > 0);
        }

        #[test]
        fn union_outside_is_a_positive_signed_distance(
            shapes in prop::collection::vec(
                (any::<bool>(), 30.0f64..32.0, 120.0f64..122.0, 0.0005f64..0.3),
                1..6,
            ),
            points in prop::collection::vec((29.8f64..32.2, 119.8f64..122.2), 60),
        ) {
            let features = shapes
                .iter()
                .enumerate()
                .map(|(i, &(is_circle, lat, lon, size))| {
                    let id = format!("f{i}");
                    if is_circle {
                        circle(&id, "permitted", lat, lon, size * 100_000.0)
                    } else {
                        square(&id, "permitted", lat, lon, size)
                    }
                })
                .collect();
            let idx = index(features);
            let ids: Vec<FenceIdx> = (0..idx.len() as FenceIdx).collect();
            // Corners and edge midpoints of the squares too: points on a boundary.
            let edges = shapes.iter().flat_map(|&(_, lat, lon, size)| {
                [(lat - size, lon - size), (lat, lon + size), (lat + size, lon)]
            });
            for (lat, lon) in points.iter().copied().chain(edges) {
                for n in 0..=ids.len() {
                    prop_assert_eq!(
                        idx.union_outside(&ids[..n], lat, lon),
                        idx.union_signed_distance_m(&ids[..n], lat, lon) > 0.0
                    );
                }
            }
        }
    }
}

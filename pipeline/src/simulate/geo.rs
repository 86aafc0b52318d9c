//! Geometry for the simulator: great-circle distances on a spherical Earth, polylines that
//! trips follow, fence shapes (circles and lon/lat polygons, as SPEC §3 reads them) and a
//! coarse grid index.

use std::collections::HashMap;

/// Mean Earth radius (IUGG), metres.
pub(crate) const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS-84 position in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LatLon {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

impl LatLon {
    /// A position from latitude and longitude in degrees.
    pub(crate) const fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }
}

/// Great-circle (haversine) distance in metres.
pub(crate) fn distance_m(a: LatLon, b: LatLon) -> f64 {
    let phi1 = a.lat.to_radians();
    let phi2 = b.lat.to_radians();
    let half_dphi = (phi2 - phi1) * 0.5;
    let half_dlambda = (b.lon - a.lon).to_radians() * 0.5;
    let h = half_dphi.sin().powi(2) + phi1.cos() * phi2.cos() * half_dlambda.sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial bearing from `a` to `b`, degrees in [0, 360).
pub(crate) fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let phi1 = a.lat.to_radians();
    let phi2 = b.lat.to_radians();
    let dl = (b.lon - a.lon).to_radians();
    let y = dl.sin() * phi2.cos();
    let x = phi1.cos() * phi2.sin() - phi1.sin() * phi2.cos() * dl.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

/// The point `dist_m` metres from `a` along the initial bearing `bearing` (degrees).
pub(crate) fn offset(a: LatLon, bearing: f64, dist_m: f64) -> LatLon {
    let delta = dist_m / EARTH_RADIUS_M;
    let theta = bearing.to_radians();
    let phi1 = a.lat.to_radians();
    let lambda1 = a.lon.to_radians();
    let phi2 = (phi1.sin() * delta.cos() + phi1.cos() * delta.sin() * theta.cos()).asin();
    let lambda2 = lambda1
        + (theta.sin() * delta.sin() * phi1.cos()).atan2(delta.cos() - phi1.sin() * phi2.sin());
    LatLon::new(phi2.to_degrees(), lambda2.to_degrees())
}

/// Linear interpolation in latitude/longitude (fine over the few kilometres of a step).
pub(crate) fn lerp(a: LatLon, b: LatLon, f: f64) -> LatLon {
    LatLon::new(a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f)
}

/// Planar `[east, north]` metres of `p` around `origin` (equirectangular, mean latitude).
fn project(origin: LatLon, p: LatLon) -> [f64; 2] {
    let mean = ((origin.lat + p.lat) * 0.5).to_radians();
    [
        EARTH_RADIUS_M * (p.lon - origin.lon).to_radians() * mean.cos(),
        EARTH_RADIUS_M * (p.lat - origin.lat).to_radians(),
    ]
}

/// Distance in metres from `p` to the segment `a`–`b` (planar around `p`).
pub(crate) fn point_segment_m(p: LatLon, a: LatLon, b: LatLon) -> f64 {
    let pa = project(p, a);
    let pb = project(p, b);
    let ab = [pb[0] - pa[0], pb[1] - pa[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        (-(pa[0] * ab[0] + pa[1] * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = pa[0] + ab[0] * t;
    let y = pa[1] + ab[1] * t;
    (x * x + y * y).sqrt()
}

/// A path made of straight steps, with cumulative great-circle lengths.
#[derive(Clone, Debug)]
pub(crate) struct Polyline {
    pts: Vec<LatLon>,
    cum: Vec<f64>,
}

impl Polyline {
    /// A polyline through `pts` (at least one point).
    pub(crate) fn new(pts: Vec<LatLon>) -> Self {
        let mut cum = Vec::with_capacity(pts.len());
        let mut total = 0.0;
        for (i, p) in pts.iter().enumerate() {
            if i > 0 {
                total += distance_m(pts[i - 1], *p);
            }
            cum.push(total);
        }
        Self { pts, cum }
    }

    /// Total length, metres.
    pub(crate) fn length_m(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    /// The vertices.
    pub(crate) fn points(&self) -> &[LatLon] {
        &self.pts
    }

    /// Position and heading (degrees) `s` metres along the path (clamped to its ends).
    pub(crate) fn at(&self, s: f64) -> (LatLon, f64) {
        let n = self.pts.len();
        if n == 1 {
            return (self.pts[0], 0.0);
        }
        let s = s.clamp(0.0, self.length_m());
        let i = match self.cum.partition_point(|c| *c <= s) {
            0 => 1,
            i if i >= n => n - 1,
            i => i,
        };
        let (a, b) = (self.pts[i - 1], self.pts[i]);
        let seg = self.cum[i] - self.cum[i - 1];
        let f = if seg > 0.0 {
            (s - self.cum[i - 1]) / seg
        } else {
            1.0
        };
        (lerp(a, b, f), bearing_deg(a, b))
    }

    /// Points every `step_m` metres along the path, ends included.
    pub(crate) fn samples(&self, step_m: f64) -> impl Iterator<Item = LatLon> + '_ {
        let len = self.length_m();
        let n = (len / step_m).ceil().max(1.0) as usize;
        (0..=n).map(move |k| self.at(len * k as f64 / n as f64).0)
    }
}

/// The shape of a fence.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// A circle (GeoJSON Point with `radius_m`).
    Circle {
        /// Centre.
        center: LatLon,
        /// Radius, metres.
        radius_m: f64,
    },
    /// A simple polygon; the ring is open (the first vertex is not repeated).
    Polygon {
        /// Vertices in order.
        ring: Vec<LatLon>,
    },
}

impl Shape {
    /// Whether `p` is inside (circle: haversine ≤ radius; polygon: even–odd ray casting with
    /// straight edges in longitude/latitude).
    pub(crate) fn contains(&self, p: LatLon) -> bool {
        match self {
            Shape::Circle { center, radius_m } => distance_m(*center, p) <= *radius_m,
            Shape::Polygon { ring } => {
                let mut inside = false;
                let n = ring.len();
                for i in 0..n {
                    let a = ring[i];
                    let b = ring[(i + 1) % n];
                    if (a.lat > p.lat) != (b.lat > p.lat) {
                        let x = a.lon + (p.lat - a.lat) / (b.lat - a.lat) * (b.lon - a.lon);
                        if p.lon < x {
                            inside = !inside;
                        }
                    }
                }
                inside
            }
        }
    }

    /// Distance from `p` to the boundary, metres: positive outside, negative inside.
    pub(crate) fn signed_distance_m(&self, p: LatLon) -> f64 {
        match self {
            Shape::Circle { center, radius_m } => distance_m(*center, p) - radius_m,
            Shape::Polygon { ring } => {
                let n = ring.len();
                let d = (0..n)
                    .map(|i| point_segment_m(p, ring[i], ring[(i + 1) % n]))
                    .fold(f64::INFINITY, f64::min);
                if self.contains(p) { -d } else { d }
            }
        }
    }

    /// Bounding box `(min, max)` corners.
    pub(crate) fn bbox(&self) -> (LatLon, LatLon) {
        match self {
            Shape::Circle { center, radius_m } => {
                let dlat = (radius_m / EARTH_RADIUS_M).to_degrees() * 1.01;
                let dlon = dlat / center.lat.to_radians().cos();
                (
                    LatLon::new(center.lat - dlat, center.lon - dlon),
                    LatLon::new(center.lat + dlat, center.lon + dlon),
                )
            }
            Shape::Polygon { ring } => {
                let mut lo = LatLon::new(f64::INFINITY, f64::INFINITY);
                let mut hi = LatLon::new(f64::NEG_INFINITY, f64::NEG_INFINITY);
                for p in ring {
                    lo.lat = lo.lat.min(p.lat);
                    lo.lon = lo.lon.min(p.lon);
                    hi.lat = hi.lat.max(p.lat);
                    hi.lon = hi.lon.max(p.lon);
                }
                (lo, hi)
            }
        }
    }
}

/// A uniform lon/lat grid mapping cells to item indices, for proximity queries.
#[derive(Debug)]
pub(crate) struct Grid {
    cell_deg: f64,
    cells: HashMap<(i32, i32), Vec<u32>>,
}

impl Grid {
    /// An empty grid with square cells of `cell_deg` degrees.
    pub(crate) fn new(cell_deg: f64) -> Self {
        Self {
            cell_deg,
            cells: HashMap::new(),
        }
    }

    fn key(&self, p: LatLon) -> (i32, i32) {
        (
            (p.lat / self.cell_deg).floor() as i32,
            (p.lon / self.cell_deg).floor() as i32,
        )
    }

    /// Registers `item` in every cell its bounding box `(lo, hi)` touches.
    pub(crate) fn insert(&mut self, item: u32, lo: LatLon, hi: LatLon) {
        let (a0, b0) = self.key(lo);
        let (a1, b1) = self.key(hi);
        for a in a0..=a1 {
            for b in b0..=b1 {
                self.cells.entry((a, b)).or_default().push(item);
            }
        }
    }

    /// Items whose box touches the cell of `p`.
    pub(crate) fn at(&self, p: LatLon) -> &[u32] {
        self.cells.get(&self.key(p)).map_or(&[], Vec::as_slice)
    }

    /// Items whose box touches the box `(lo, hi)`, each once, in ascending order.
    pub(crate) fn within(&self, lo: LatLon, hi: LatLon, out: &mut Vec<u32>) {
        out.clear();
        let (a0, b0) = self.key(lo);
        let (a1, b1) = self.key(hi);
        for a in a0..=a1 {
            for b in b0..=b1 {
                if let Some(v) = self.cells.get(&(a, b)) {
                    out.extend_from_slice(v);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// The box of all points within `margin_m` of `p`.
pub(crate) fn box_around(p: LatLon, margin_m: f64) -> (LatLon, LatLon) {
    let dlat = (margin_m / EARTH_RADIUS_M).to_degrees();
    let dlon = dlat / p.lat.to_radians().cos();
    (
        LatLon::new(p.lat - dlat, p.lon - dlon),
        LatLon::new(p.lat + dlat, p.lon + dlon),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: LatLon = LatLon::new(31.2304, 121.4737);

    #[test]
    fn offset_and_distance_agree() {
        for bearing in [0.0, 45.0, 133.0, 270.0] {
            let p = offset(SH, bearing, 12_345.0);
            assert!((distance_m(SH, p) - 12_345.0).abs() < 0.5);
            assert!((bearing_deg(SH, p) - bearing).abs() < 0.5);
        }
    }

    #[test]
    fn polyline_walks_its_length() {
        let b = offset(SH, 90.0, 1000.0);
        let c = offset(b, 0.0, 1000.0);
        let line = Polyline::new(vec![SH, b, c]);
        assert!((line.length_m() - 2000.0).abs() < 1.0);
        let (mid, heading) = line.at(1500.0);
        assert!((distance_m(mid, b) - 500.0).abs() < 1.0);
        assert!(!(1.0..=359.0).contains(&heading));
        assert_eq!(line.at(5000.0).0, c);
        assert!((21..=22).contains(&line.samples(100.0).count()));
    }

    #[test]
    fn shapes_contain_and_measure() {
        let circle = Shape::Circle {
            center: SH,
            radius_m: 300.0,
        };
        assert!(circle.contains(offset(SH, 10.0, 299.0)));
        assert!(!circle.contains(offset(SH, 10.0, 301.0)));
        let ring: Vec<LatLon> = (0..8)
            .map(|k| offset(SH, f64::from(k) * 45.0, 1000.0))
            .collect();
        let poly = Shape::Polygon { ring };
        assert!(poly.contains(SH));
        assert!(poly.signed_distance_m(SH) < -900.0);
        let out = offset(SH, 0.0, 1500.0);
        assert!(!poly.contains(out));
        assert!((poly.signed_distance_m(out) - 500.0).abs() < 5.0);
        let (lo, hi) = poly.bbox();
        assert!(lo.lat < SH.lat && hi.lon > SH.lon);
    }

    #[test]
    fn grid_finds_nearby_items() {
        let mut grid = Grid::new(0.01);
        let (lo, hi) = box_around(SH, 200.0);
        grid.insert(7, lo, hi);
        assert_eq!(grid.at(SH), &[7]);
        let mut out = Vec::new();
        let (lo, hi) = box_around(offset(SH, 0.0, 5000.0), 100.0);
        grid.within(lo, hi, &mut out);
        assert!(out.is_empty());
        let (lo, hi) = box_around(SH, 3000.0);
        grid.within(lo, hi, &mut out);
        assert_eq!(out, vec![7]);
    }
}

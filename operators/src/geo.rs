//! Great-circle helpers on WGS-84 degrees, treated as a sphere of mean radius
//! [`EARTH_RADIUS_M`], and a local projection to metres for short point–segment distances.

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle (haversine) distance in metres between two points given in degrees.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let phi1 = lat1.to_radians();
    let phi2 = lat2.to_radians();
    let half_dphi = (phi2 - phi1) * 0.5;
    let half_dlambda = (lon2 - lon1).to_radians() * 0.5;
    let a = half_dphi.sin().powi(2) + phi1.cos() * phi2.cos() * half_dlambda.sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Speed in km/h needed to cover `dist_m` metres in `dt_ms` milliseconds.
///
/// A non-positive `dt_ms` gives `f64::INFINITY` when the distance is positive and `0.0`
/// otherwise (two fixes at the same instant and place imply no motion).
pub fn implied_speed_kmh(dist_m: f64, dt_ms: i64) -> f64 {
    if dt_ms <= 0 {
        return if dist_m > 0.0 { f64::INFINITY } else { 0.0 };
    }
    // m/ms → km/h: (m / 1000) / (ms / 3_600_000) = m * 3600 / ms.
    dist_m * 3600.0 / dt_ms as f64
}

/// A local equirectangular projection centred on an origin point, giving planar
/// coordinates in metres (`[east, north]`, origin at `[0, 0]`).
///
/// The east–west scale uses the cosine of the *mean* latitude of the origin and the
/// projected point (expanded to first order, so no trigonometry per point), which makes the
/// distance from the origin to any projected point agree with [`haversine_m`] to better
/// than 0.02 % within 50 km (tested up to 70° of latitude); it degrades slowly with
/// distance and near the poles.
/// Longitude differences are wrapped into ±180°. Use it for distances *from the origin*
/// (e.g. from a vehicle to a fence edge); it is not meant for far-apart pairs of points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalProjection {
    lat0: f64,
    lon0: f64,
    cos0: f64,
    half_sin0: f64,
}

impl LocalProjection {
    /// A projection centred on (`lat0`, `lon0`), degrees.
    pub fn new(lat0: f64, lon0: f64) -> Self {
        let phi0 = lat0.to_radians();
        Self {
            lat0,
            lon0,
            cos0: phi0.cos(),
            half_sin0: 0.5 * phi0.sin(),
        }
    }

    /// Projects (`lat`, `lon`), degrees, to `[east, north]` metres from the origin.
    pub fn project(&self, lat: f64, lon: f64) -> [f64; 2] {
        let dphi = (lat - self.lat0).to_radians();
        let mut dlon = lon - self.lon0;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        // cos((phi0 + phi) / 2) ≈ cos(phi0) - sin(phi0) * dphi / 2; never negative, so a
        // far-away point can not fold back towards the origin.
        let scale = (self.cos0 - self.half_sin0 * dphi).max(0.0);
        [
            EARTH_RADIUS_M * dlon.to_radians() * scale,
            EARTH_RADIUS_M * dphi,
        ]
    }
}

/// Squared planar distance from point `p` to the segment `a`–`b` (all in the same metric
/// plane, e.g. the output of [`LocalProjection::project`]). Squared so that a nearest-edge
/// search takes one square root at the end rather than one per edge.
pub fn point_segment_distance_sq(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let ap = [p[0] - a[0], p[1] - a[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1]];
    d[0] * d[0] + d[1] * d[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(got: f64, want: f64) -> f64 {
        ((got - want) / want).abs()
    }

    #[test]
    fn shanghai_to_beijing() {
        let d = haversine_m(31.2304, 121.4737, 39.9042, 116.4074);
        assert!((d - 1_067_000.0).abs() < 5_000.0, "{d}");
    }

    #[test]
    fn one_degree_of_latitude() {
        let d = haversine_m(30.0, 120.0, 31.0, 120.0);
        assert!((d - 111_195.0).abs() < 1.0, "{d}");
    }

    #[test]
    fn one_degree_of_longitude_shrinks_with_latitude() {
        let equator = haversine_m(0.0, 10.0, 0.0, 11.0);
        let sixty = haversine_m(60.0, 10.0, 60.0, 11.0);
        assert!((equator - 111_195.0).abs() < 1.0, "{equator}");
        assert!(rel_err(sixty, equator * 0.5) < 1e-4, "{sixty}");
    }

    #[test]
    fn haversine_is_symmetric_zero_and_wraps() {
        assert_eq!(haversine_m(31.0, 121.0, 31.0, 121.0), 0.0);
        let ab = haversine_m(10.0, 20.0, -5.0, 40.0);
        let ba = haversine_m(-5.0, 40.0, 10.0, 20.0);
        assert!((ab - ba).abs() < 1e-6);
        let across = haversine_m(0.0, 179.5, 0.0, -179.5);
        assert!((across - 111_195.0).abs() < 1.0, "{across}");
        let antipodal = haversine_m(0.0, 0.0, 0.0, 180.0);
        assert!(rel_err(antipodal, std::f64::consts::PI * EARTH_RADIUS_M) < 1e-12);
    }

    #[test]
    fn implied_speed() {
        assert!((implied_speed_kmh(1000.0, 60_000) - 60.0).abs() < 1e-9);
        assert!((implied_speed_kmh(250_000.0, 3_600_000) - 250.0).abs() < 1e-9);
        assert_eq!(implied_speed_kmh(10.0, 0), f64::INFINITY);
        assert_eq!(implied_speed_kmh(10.0, -5), f64::INFINITY);
        assert_eq!(implied_speed_kmh(0.0, 0), 0.0);
        assert_eq!(implied_speed_kmh(0.0, 1000), 0.0);
    }

    #[test]
    fn projection_matches_haversine_within_50_km() {
        for &lat0 in &[0.0, 22.5, 31.2, 45.0, 60.0, 70.0, -38.0] {
            let lon0 = 121.0;
            let proj = LocalProjection::new(lat0, lon0);
            for step in 0..16 {
                let bearing = f64::from(step) * std::f64::consts::PI / 8.0;
                for &dist in &[500.0, 5_000.0, 50_000.0] {
                    let lat = lat0 + (dist * bearing.cos() / EARTH_RADIUS_M).to_degrees();
                    let lon = lon0
                        + (dist * bearing.sin() / (EARTH_RADIUS_M * lat0.to_radians().cos()))
                            .to_degrees();
                    let [x, y] = proj.project(lat, lon);
                    let want = haversine_m(lat0, lon0, lat, lon);
                    let err = rel_err(x.hypot(y), want);
                    assert!(
                        err < 2e-4,
                        "lat0 {lat0} bearing {bearing} dist {dist}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn projection_wraps_the_antimeridian() {
        let proj = LocalProjection::new(0.0, 179.9);
        let [x, y] = proj.project(0.0, -179.9);
        assert!(
            rel_err(x, haversine_m(0.0, 179.9, 0.0, -179.9)) < 1e-6,
            "{x}"
        );
        assert!(y.abs() < 1e-9);
    }

    #[test]
    fn segment_distance() {
        assert_eq!(
            point_segment_distance_sq([0.0, 0.0], [-1.0, 3.0], [1.0, 3.0]),
            9.0
        );
        // Beyond an end: distance to the end point.
        assert_eq!(
            point_segment_distance_sq([0.0, 0.0], [3.0, 4.0], [10.0, 4.0]),
            25.0
        );
        // Degenerate segment.
        assert_eq!(
            point_segment_distance_sq([0.0, 0.0], [0.0, 2.0], [0.0, 2.0]),
            4.0
        );
    }

    #[test]
    fn projected_segment_distance_matches_sampled_great_circle() {
        // A 20 km north–south edge 1.5 km east of the point, at Shanghai's latitude.
        let (lat, lon) = (31.2_f64, 121.4_f64);
        let edge_lon = lon + (1_500.0 / (EARTH_RADIUS_M * lat.to_radians().cos())).to_degrees();
        let (lat_a, lat_b) = (lat - 0.09, lat + 0.09);
        let proj = LocalProjection::new(lat, lon);
        let got = point_segment_distance_sq(
            [0.0, 0.0],
            proj.project(lat_a, edge_lon),
            proj.project(lat_b, edge_lon),
        )
        .sqrt();
        let want = (0..=1000)
            .map(|i| {
                let t = f64::from(i) / 1000.0;
                haversine_m(lat, lon, lat_a + t * (lat_b - lat_a), edge_lon)
            })
            .fold(f64::INFINITY, f64::min);
        assert!(rel_err(got, want) < 1e-3, "{got} vs {want}");
        assert!(rel_err(got, 1_500.0) < 1e-3, "{got}");
    }
}

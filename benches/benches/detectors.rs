//! Micro-benchmarks of the rules (issue 6, part 1): the position chain, each of the 19 alert
//! kinds' state machines, and the daily features. Pure logic, no I/O.
//!
//! Every stream starts from [`VehicleFeed::realistic_day`] (one wired tracker; parked
//! heartbeats every 5–10 min, a 30-min commute out at 07:45 and back at 17:30 with a fix every
//! 30 s, odometer, OBD and power in every reading: 306 readings a day), so the numbers are
//! per reading of a realistic vehicle.
//!
//! - `position/*`: per reading, the fix validity check (`Reading::valid_position`) and
//!   `PositionChain::push` (drift outliers, jitter, gaps, GNSS distance), over the plain day
//!   and over the day with three drift outliers, a 10-min tunnel without fix and four fixes
//!   with a poor `hdop`.
//! - `kinds/<kind>/quiet` and `kinds/<kind>/incident`: each kind's state machine on its own,
//!   called through its public entry points the way `VehicleState` calls it (readings, the
//!   accepted fixes of the chain, the timers due before each reading), over the plain stream
//!   (`quiet`: no alert) and over the same stream with one injected incident of that kind
//!   (`incident`: the kind opens and, where it has one, closes). The inputs the vehicle
//!   computes for all kinds together (the chain's steps, the risk fences containing a fix)
//!   are computed beforehand, untimed. Throughput is per input: readings for the reading
//!   kinds, accepted fixes for the position kinds, calls for the baseline kinds (only called
//!   on counted steps or once a night), claims for `duplicate_collateral`. Setup checks the
//!   number of alerts each stream raises.
//! - `alert/low_battery_flapping`: a stream where every reading opens or closes an incident,
//!   i.e. the cost of one alert (evidence JSON, alert id, strings).
//! - `features/*`: the daily features — `DayAcc::note_reading` per reading, the `Baseline`
//!   per reading (the vehicle's calls: night location, chain step, day accumulation, harsh
//!   events) after 30 days of history, closing a day (features row, rings, revisions) and
//!   building the row alone.
//! - `vehicle/*`: the whole `VehicleState` per reading on a quiet day after 30 days, with
//!   every kind switched on and with every kind switched off in the rules config; the
//!   difference is what all kinds together cost on a quiet day.
//!
//! Uses mimalloc, the `lienwatch` binary's global allocator. Kept short (20 samples, 1.2 s
//! each): the whole file runs in about 2 minutes.
//!
//! Run: `cargo bench -p benches --bench detectors`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};

use benches::feed::{DAY_MS, DAY0_MS, Fed, MIN_MS, VehicleFeed};
use operators::baseline::{Baseline, RowIdentity};
use operators::config::RulesConfig;
use operators::ctx::Ctx;
use operators::days::NightLocations;
use operators::days::{ActiveDays, DayAcc, DayBounds, DayRing, DaySummary, StepShare};
use operators::fences::{FenceIdx, FenceIndex};
use operators::kinds::Dev;
use operators::kinds::{
    device_tamper::DeviceTamper, dtc_cleared::DtcCleared, geofence_exit::GeofenceExit,
    gnss_jamming::GnssJamming, location_jump::LocationJump, low_battery::LowBattery,
    mileage_anomaly::MileageAnomaly, night_movement::NightMovement,
    odometer_mismatch::OdometerMismatch, odometer_rollback::OdometerRollback, offline::Offline,
    power_cut::PowerCut, residence_change::ResidenceChange, risk_zone_dwell::RiskZoneDwell,
    risk_zone_enter::RiskZoneEnter, stationary_long::StationaryLong, tow_suspected::TowSuspected,
    vin_mismatch::VinMismatch,
};
use operators::position::{Fix, PositionChain, Step};
use operators::registry::{DEFAULT_TIMEZONE, Registry};
use operators::vehicle::{Env, Outputs, Profile, VehicleState};
use operators::vin_index::{ClaimSource, VinClaim, VinIndex};
use schemas::{Alarm, Alert, DailyFeatures, DeviceClass, Reading};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOUR_MS: i64 = 60 * MIN_MS;
/// The ids of vehicle 7 of [`VehicleFeed`].
const VEHICLE: &str = "VH00000007";
const LOAN: &str = "LN2026000007";
const DEV: Dev<'static> = Dev {
    id: "867731000000007",
    class: DeviceClass::Wired,
    reports_ignition: true,
};
const ROW: RowIdentity<'static> = RowIdentity {
    vehicle_id: VEHICLE,
    loan_id: Some(LOAN),
};
/// Vehicles of the `duplicate_collateral` index (one worker's share of a fleet).
const CLAIMING_VEHICLES: u64 = 2_000;

/// Epoch ms of `h:m` local on day `day` of the feed.
fn local(day: i64, h: i64, m: i64) -> i64 {
    DAY0_MS + day * DAY_MS + h * HOUR_MS + m * MIN_MS
}

/// The registered VIN of vehicle 7 and its readings of days `0..days`.
fn track(days: i64) -> (String, Vec<Reading>) {
    let mut feed = VehicleFeed::new(7, DeviceClass::Wired);
    assert_eq!(feed.device_id, DEV.id);
    let vin = feed.vin.clone();
    let (mut seq, mut out) = (0, Vec::new());
    for day in 0..days {
        feed.realistic_day(day, &mut seq, &mut out);
    }
    (vin, out.into_iter().map(|r| *r.reading).collect())
}

/// Applies `f` to the readings in `[from, to)`.
fn during(readings: &mut [Reading], from: i64, to: i64, mut f: impl FnMut(&mut Reading)) {
    readings
        .iter_mut()
        .filter(|r| (from..to).contains(&r.ts_ms))
        .for_each(&mut f);
}

fn gnss(r: &mut Reading) -> &mut schemas::Gnss {
    r.gnss.as_mut().expect("feed readings have GNSS")
}

fn shift_lat(r: &mut Reading, dlat: f64) {
    let g = gnss(r);
    g.lat = g.lat.map(|l| l + dlat);
}

/// Where the vehicle is parked at night.
fn home(readings: &[Reading]) -> (f64, f64) {
    let g = readings[0].gnss.as_ref().expect("gnss");
    (g.lat.expect("lat"), g.lon.expect("lon"))
}

fn fix_of(r: &Reading, lat: f64, lon: f64) -> Fix {
    Fix {
        ts_ms: r.ts_ms,
        lat,
        lon,
        device: 0,
        ignition: r.ignition,
        speed_kmh: r
            .speed_kmh
            .or_else(|| r.gnss.as_ref().and_then(|g| g.speed_kmh))
            .into(),
    }
}

/// The chain around one reading, as the vehicle sees it.
#[derive(Clone)]
struct Chained {
    /// The last accepted fix before the reading.
    before: Option<Fix>,
    /// The step the reading's fix completed.
    step: Option<Step>,
    /// The chain after it.
    after: PositionChain,
}

fn chain(readings: &[Reading], rules: &RulesConfig) -> Vec<Chained> {
    let mut c = PositionChain::default();
    readings
        .iter()
        .map(|r| {
            let before = c.last_accepted().copied();
            let step = r
                .valid_position(rules.max_hdop)
                .and_then(|(lat, lon)| c.push(fix_of(r, lat, lon), rules));
            Chained {
                before,
                step,
                after: c.clone(),
            }
        })
        .collect()
}

fn steps(readings: &[Reading], rules: &RulesConfig) -> Vec<Step> {
    chain(readings, rules)
        .into_iter()
        .filter_map(|c| c.step)
        .collect()
}

fn with_steps(readings: &[Reading], rules: &RulesConfig) -> Vec<(Reading, Option<Step>)> {
    readings
        .iter()
        .cloned()
        .zip(chain(readings, rules).into_iter().map(|c| c.step))
        .collect()
}

/// Whether a step spans an offline gap of the device (the vehicle's `gap`).
fn gap(s: &Step, rules: &RulesConfig) -> bool {
    s.prev.is_some() && s.dt_ms > rules.offline_after_ms(DEV.class)
}

/// Rules, fences and registry facts a kind runs with.
struct Scene {
    rules: RulesConfig,
    fences: FenceIndex,
    permitted: Vec<FenceIdx>,
    vin: Option<String>,
    registry: Registry,
}

impl Scene {
    fn plain() -> Self {
        Self {
            rules: RulesConfig::default(),
            fences: FenceIndex::empty(),
            permitted: Vec::new(),
            vin: None,
            registry: Registry::empty(),
        }
    }

    /// A permitted circle of `city_m` around home and a 300-m risk circle (a second-mortgage
    /// dealer) at `dealer`.
    fn fenced(home: (f64, f64), city_m: f64, dealer: (f64, f64)) -> Self {
        let text = format!(
            r#"{{"type":"FeatureCollection","features":[
            {{"type":"Feature","properties":{{"id":"city","role":"permitted","radius_m":{city_m}}},
              "geometry":{{"type":"Point","coordinates":[{},{}]}}}},
            {{"type":"Feature","properties":{{"id":"dealer","role":"risk","category":"second_mortgage_dealer","name":"Dealer","radius_m":300}},
              "geometry":{{"type":"Point","coordinates":[{},{}]}}}}]}}"#,
            home.1, home.0, dealer.1, dealer.0
        );
        let fences = FenceIndex::from_geojson_str(&text, "bench").expect("valid fences");
        let permitted = vec![fences.lookup("city").expect("city fence")];
        Self {
            permitted,
            fences,
            ..Self::plain()
        }
    }

    fn ctx<'a>(&'a self, alerts: &'a mut Vec<Alert>) -> Ctx<'a> {
        Ctx {
            rules: &self.rules,
            fences: &self.fences,
            permitted: &self.permitted,
            registered_vin: self.vin.as_deref(),
            vehicle_id: VEHICLE,
            loan_id: Some(LOAN),
            position: None,
            backfill: false,
            detected_at_ms: 0,
            alerts,
        }
    }

    fn env(&self) -> Env<'_> {
        Env {
            rules: &self.rules,
            fences: &self.fences,
            registry: &self.registry,
            detected_at_ms: 0,
        }
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200));
    g
}

/// One input stream of a kind, and the alerts it must raise.
struct Variant<'a, T> {
    name: &'static str,
    scene: &'a Scene,
    inputs: &'a [T],
    alerts: usize,
}

/// The quiet stream and the stream with an incident raising `alerts`.
fn pair<'a, T>(
    quiet_scene: &'a Scene,
    quiet: &'a [T],
    scene: &'a Scene,
    incident: &'a [T],
    alerts: usize,
) -> [Variant<'a, T>; 2] {
    [
        Variant {
            name: "quiet",
            scene: quiet_scene,
            inputs: quiet,
            alerts: 0,
        },
        Variant {
            name: "incident",
            scene,
            inputs: incident,
            alerts,
        },
    ]
}

/// Benches `step` over each variant's inputs, from a fresh state of `setup` each iteration.
fn kind_bench<S, T>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    kind: &str,
    setup: impl Fn() -> S,
    variants: &[Variant<'_, T>],
    step: impl Fn(&mut S, &T, &mut Ctx<'_>),
) {
    for v in variants {
        let run = |state: &mut S| {
            let mut alerts = Vec::new();
            let mut ctx = v.scene.ctx(&mut alerts);
            for x in v.inputs {
                step(state, black_box(x), &mut ctx);
            }
            alerts
        };
        let raised = run(&mut setup()).len();
        assert_eq!(raised, v.alerts, "{kind}/{}: alerts raised", v.name);
        g.throughput(Throughput::Elements(v.inputs.len() as u64));
        g.bench_function(format!("{kind}/{}", v.name), |b| {
            b.iter_batched_ref(&setup, run, BatchSize::SmallInput)
        });
    }
}

fn position(c: &mut Criterion) {
    let rules = RulesConfig::default();
    let (_, day) = track(1);
    let mut noisy = day.clone();
    // Three single drift fixes 100 km away while parked (faster than 250 km/h both ways).
    for t in [local(0, 2, 0), local(0, 13, 0), local(0, 22, 0)] {
        let i = noisy.partition_point(|r| r.ts_ms < t);
        shift_lat(&mut noisy[i], 0.9);
    }
    // A 10-min tunnel on the way home, four fixes with a poor hdop in the morning.
    during(&mut noisy, local(0, 17, 40), local(0, 17, 50), |r| {
        gnss(r).fix = false
    });
    during(&mut noisy, local(0, 7, 50), local(0, 7, 52), |r| {
        gnss(r).hdop = Some(7.0)
    });
    let mut g = group(c, "position");
    // The first benchmark of the process varies by up to 80 % after a short warm-up.
    g.warm_up_time(Duration::from_secs(1));
    for (name, readings, outliers) in [("plain_day", &day, 0), ("noisy_day", &noisy, 3)] {
        let run = |chain: &mut PositionChain| {
            for r in readings {
                let r = black_box(r);
                if let Some((lat, lon)) = r.valid_position(rules.max_hdop) {
                    black_box(chain.push(fix_of(r, lat, lon), &rules));
                }
            }
        };
        let mut check = PositionChain::default();
        run(&mut check);
        assert_eq!(check.outliers, outliers, "{name}: drift outliers");
        g.throughput(Throughput::Elements(readings.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(PositionChain::default, run, BatchSize::SmallInput)
        });
    }
    g.finish();
}

/// The kinds that see readings only.
fn reading_kinds(g: &mut BenchmarkGroup<'_, WallTime>, day: &[Reading], vin: &str) {
    let plain = Scene::plain();
    let incident = |f: &dyn Fn(&mut Vec<Reading>)| {
        let mut readings = day.to_vec();
        f(&mut readings);
        readings
    };

    let cut = incident(&|rs| {
        during(rs, local(0, 12, 0), local(0, 12, 30), |r| {
            r.power.as_mut().expect("power").ext_v = Some(0.2)
        })
    });
    kind_bench(
        g,
        "power_cut",
        PowerCut::default,
        &pair(&plain, day, &plain, &cut, 2),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );

    let tamper = incident(&|rs| {
        during(rs, local(0, 12, 0), local(0, 12, 15), |r| {
            r.alarm_set.insert(Alarm::Removal);
            r.alarms.push("removal".into());
        })
    });
    kind_bench(
        g,
        "device_tamper",
        DeviceTamper::default,
        &pair(&plain, day, &plain, &tamper, 1),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );

    // Silent from 12:00 to 12:45: opens after 30 min, closes on the next reading.
    let silent: Vec<Reading> = day
        .iter()
        .filter(|r| !(local(0, 12, 0)..local(0, 12, 45)).contains(&r.ts_ms))
        .cloned()
        .collect();
    kind_bench(
        g,
        "offline",
        || (Offline::default(), None, None),
        &pair(&plain, day, &plain, &silent, 2),
        |(k, last_ts, last_fix), r, ctx| {
            // The vehicle fires the timers due before each reading, then processes it.
            if let Some(due) = k.due(*last_ts, DEV, ctx.rules).filter(|d| *d < r.ts_ms) {
                k.on_timer(due, *last_ts, DEV, ctx);
            }
            let fix = r.valid_position(ctx.rules.max_hdop);
            k.on_reading(r.ts_ms, (*last_ts, *last_fix), fix, DEV, ctx);
            *last_ts = Some(r.ts_ms);
            if fix.is_some() {
                *last_fix = fix;
            }
        },
    );

    // 15 min without a fix while driving home.
    let jammed = incident(&|rs| {
        during(rs, local(0, 17, 35), local(0, 17, 50), |r| {
            gnss(r).fix = false
        })
    });
    kind_bench(
        g,
        "gnss_jamming",
        GnssJamming::default,
        &pair(&plain, day, &plain, &jammed, 2),
        |k, r, ctx| {
            let valid = r.valid_position(ctx.rules.max_hdop).is_some();
            k.on_reading(r, valid, DEV, ctx)
        },
    );

    let drained = incident(&|rs| {
        let battery =
            |r: &mut Reading, pct| r.power.as_mut().expect("power").battery_pct = Some(pct);
        during(rs, local(0, 12, 0), local(0, 18, 0), |r| battery(r, 14.0));
        during(rs, local(0, 18, 0), local(1, 0, 0), |r| battery(r, 22.0));
    });
    kind_bench(
        g,
        "low_battery",
        LowBattery::default,
        &pair(&plain, day, &plain, &drained, 2),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );

    let rolled = incident(&|rs| {
        during(rs, local(0, 20, 0), local(1, 0, 0), |r| {
            r.odometer_km = r.odometer_km.map(|k| k - 5_000.0)
        })
    });
    kind_bench(
        g,
        "odometer_rollback",
        OdometerRollback::default,
        &pair(&plain, day, &plain, &rolled, 1),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );

    let cleared = incident(&|rs| {
        let mut base = None;
        during(rs, local(0, 12, 0), local(1, 0, 0), |r| {
            let obd = r.obd.as_mut().expect("obd");
            let km = obd.dist_since_clear_km.expect("since clear");
            let b = *base.get_or_insert(km);
            obd.dist_since_clear_km = Some(((km - b) * 10.0).round() / 10.0);
        })
    });
    kind_bench(
        g,
        "dtc_cleared",
        DtcCleared::default,
        &pair(&plain, day, &plain, &cleared, 1),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );

    let registered = Scene {
        vin: Some(vin.to_owned()),
        ..Scene::plain()
    };
    let moved = incident(&|rs| {
        during(rs, local(0, 12, 0), local(0, 13, 0), |r| {
            r.obd.as_mut().expect("obd").vin = Some("LSVAU2180ZZZZZZZZ".into())
        })
    });
    kind_bench(
        g,
        "vin_mismatch",
        VinMismatch::default,
        &pair(&registered, day, &registered, &moved, 2),
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );
}

/// The kinds that see the chain's accepted fixes (and, for some, readings and timers).
fn position_kinds(g: &mut BenchmarkGroup<'_, WallTime>, day: &[Reading], days5: &[Reading]) {
    let plain = Scene::plain();
    let rules = &plain.rules;
    let home = home(day);
    // Towed 1.1 km at 22:00 (ignition off), or relocated 55 km (a cloned tracker).
    let moved = |dlat: f64| {
        let mut rs = day.to_vec();
        during(&mut rs, local(0, 22, 0), local(1, 0, 0), |r| {
            shift_lat(r, dlat)
        });
        rs
    };

    let (quiet, towed) = (with_steps(day, rules), with_steps(&moved(0.01), rules));
    kind_bench(
        g,
        "tow_suspected",
        TowSuspected::default,
        &pair(&plain, &quiet, &plain, &towed, 1),
        |k, (r, step), ctx| {
            k.on_reading(r, 0, DEV, ctx);
            if let Some(s) = step {
                k.on_step(s, gap(s, ctx.rules), DEV, ctx);
            }
        },
    );

    let (quiet, jumped) = (steps(day, rules), steps(&moved(0.5), rules));
    kind_bench(
        g,
        "location_jump",
        LocationJump::default,
        &pair(&plain, &quiet, &plain, &jumped, 1),
        |k, s, ctx| k.on_step(s, gap(s, ctx.rules), DEV, ctx),
    );

    // The commute ends 18 km north of home, at work. Quiet: the permitted city is 30 km
    // wide and the dealer is 5 km east of work; incident: the city is 10 km wide (the
    // commute leaves it) and the dealer is at work (entered every morning).
    let work = (home.0 + 0.162, home.1);
    let quiet_scene = Scene::fenced(home, 30_000.0, (work.0, work.1 + 0.05));
    let incident_scene = Scene::fenced(home, 10_000.0, work);
    let day_steps = steps(day, rules);
    kind_bench(
        g,
        "geofence_exit",
        GeofenceExit::default,
        &pair(&quiet_scene, &day_steps, &incident_scene, &day_steps, 2),
        |k, s, ctx| k.on_step(s, |_| DEV, ctx),
    );

    let inside = |scene: &Scene| -> Vec<(Step, Vec<FenceIdx>)> {
        day_steps
            .iter()
            .map(|s| {
                let mut inside = Vec::new();
                scene
                    .fences
                    .risk_fences_at(s.fix.lat, s.fix.lon, &mut inside);
                (*s, inside)
            })
            .collect()
    };
    let (quiet, visited) = (inside(&quiet_scene), inside(&incident_scene));
    kind_bench(
        g,
        "risk_zone_enter",
        RiskZoneEnter::default,
        &pair(&quiet_scene, &quiet, &incident_scene, &visited, 1),
        |k, (s, inside), ctx| {
            let mut left = Vec::new();
            k.on_step(s, inside, |_| DEV, ctx, &mut left);
            black_box(left);
        },
    );

    // Dwell needs the visits `risk_zone_enter` tracks: both run, enter's alerts off.
    let dwell_scene = |mut s: Scene| {
        s.rules.risk_zone_enter.enabled = false;
        s
    };
    let (quiet_dwell, incident_dwell) = (dwell_scene(quiet_scene), dwell_scene(incident_scene));
    kind_bench(
        g,
        "risk_zone_dwell",
        || (RiskZoneEnter::default(), RiskZoneDwell::default()),
        &pair(&quiet_dwell, &quiet, &incident_dwell, &visited, 2),
        |(enter, dwell), (s, inside), ctx| {
            let due = dwell.due(&enter.visits, ctx.rules, ctx.fences);
            if let Some(due) = due.filter(|d| *d < s.fix.ts_ms) {
                dwell.on_timer(due, &enter.visits, None, |_| DEV, ctx);
            }
            let mut left = Vec::new();
            enter.on_step(s, inside, |_| DEV, ctx, &mut left);
            dwell.on_step();
            for l in &left {
                dwell.on_left(l, |_| DEV, ctx);
            }
        },
    );

    // Five days; incident: parked at home for the first four (heartbeats only), driven on
    // the fifth: opens after 72 h, closes when the car leaves.
    let mut parked: Vec<Reading> = days5
        .iter()
        .filter(|r| r.ts_ms >= local(4, 0, 0) || r.ignition != Some(true))
        .cloned()
        .collect();
    during(&mut parked, local(0, 0, 0), local(4, 0, 0), |r| {
        let g = gnss(r);
        g.lat = g.lat.map(|l| home.0 + (l - home.0) % 0.0001);
        g.lon = Some(home.1);
        g.speed_kmh = Some(0.0);
        r.speed_kmh = Some(0.0);
    });
    let (quiet, parked) = (with_steps(days5, rules), with_steps(&parked, rules));
    kind_bench(
        g,
        "stationary_long",
        StationaryLong::default,
        &pair(&plain, &quiet, &plain, &parked, 2),
        |k, (r, step), ctx| {
            if let Some(due) = k.due(ctx.rules).filter(|d| *d < r.ts_ms) {
                k.on_timer(due, true, None, |_| DEV, ctx);
            }
            k.on_reading(r.ts_ms, r.valid_position(ctx.rules.max_hdop), |_| DEV, ctx);
            if let Some(s) = step {
                k.on_step(s, DEV, ctx);
            }
        },
    );
}

/// `odometer_mismatch` over eight days (its window is 100 km of GNSS distance, three days of
/// commuting); incident: a mileage blocker (the odometer counts 40 %) from day 3 on, which
/// fires, re-arms a day later and fires again.
fn odometer_mismatch(g: &mut BenchmarkGroup<'_, WallTime>, days8: &[Reading]) {
    let plain = Scene::plain();
    let marks = |readings: &[Reading]| -> Vec<(i64, f64, f64, u32)> {
        readings
            .iter()
            .zip(chain(readings, &plain.rules))
            .filter_map(|(r, c)| {
                Some((r.ts_ms, r.odometer_km?, c.after.distance_m, c.after.breaks))
            })
            .collect()
    };
    let mut blocked = days8.to_vec();
    let (mut before, mut shown) = (None::<f64>, 0.0);
    for r in &mut blocked {
        let km = r.odometer_km.expect("odometer");
        let factor = if r.ts_ms >= local(3, 0, 0) { 0.4 } else { 1.0 };
        shown = before.map_or(km, |b| shown + (km - b) * factor);
        before = Some(km);
        r.odometer_km = Some((shown * 10.0).round() / 10.0);
    }
    let (quiet, blocked) = (marks(days8), marks(&blocked));
    kind_bench(
        g,
        "odometer_mismatch",
        OdometerMismatch::default,
        &pair(&plain, &quiet, &plain, &blocked, 2),
        |k, &(ts, km, gnss_m, breaks), ctx| k.on_odometer(ts, km, gnss_m, breaks, DEV, ctx),
    );
}

/// `duplicate_collateral`: a worker's VIN index takes the claims of [`CLAIMING_VEHICLES`]
/// vehicles starting up (each claims its registered VIN, then the VIN its OBD reports); in
/// the incident, one vehicle in a hundred reports the VIN of another loan's vehicle.
fn duplicate_collateral(g: &mut BenchmarkGroup<'_, WallTime>) {
    let plain = Scene::plain();
    let feeds: Vec<VehicleFeed> = (0..CLAIMING_VEHICLES)
        .map(|i| VehicleFeed::new(i, DeviceClass::Wired))
        .collect();
    let mut csv = VehicleFeed::REGISTRY_HEADER.to_owned();
    feeds.iter().for_each(|f| csv.push_str(&f.registry_row()));
    let registry = Registry::from_csv_str(&csv, "bench").expect("valid registry");
    let claims = |foreign_every: usize| -> Vec<VinClaim> {
        let claim = |f: &VehicleFeed, vin: &str, source| VinClaim {
            vin: vin.to_owned(),
            vehicle_id: f.vehicle_id.to_string(),
            loan_id: f.loan_id.to_string(),
            device_id: f.device_id.clone(),
            ts_ms: DAY0_MS,
            position: Some((31.23, 121.47)),
            source,
        };
        feeds
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                let reported = match i % foreign_every == foreign_every - 1 {
                    true => &feeds[(i + 1) % feeds.len()].vin,
                    false => &f.vin,
                };
                [
                    claim(f, &f.vin, ClaimSource::Registered),
                    claim(f, reported, ClaimSource::Reported),
                ]
            })
            .collect()
    };
    let (quiet, foreign) = (claims(usize::MAX), claims(100));
    kind_bench(
        g,
        "duplicate_collateral",
        VinIndex::default,
        &pair(
            &plain,
            &quiet,
            &plain,
            &foreign,
            CLAIMING_VEHICLES as usize / 100,
        ),
        |index, c, ctx| {
            if let Some(alert) = index.claim(c, &registry, 0) {
                ctx.alerts.push(alert);
            }
        },
    );
}

/// The three baseline kinds, on the inputs `Baseline` hands them.
fn baseline_kinds(g: &mut BenchmarkGroup<'_, WallTime>) {
    let plain = Scene::plain();
    let home = (31.2304, 121.4737);
    // 45 nights at home (a few metres apart); incident: four nights 8 km away from night 20.
    let nights = |away: std::ops::Range<i64>| -> Vec<(i64, (f64, f64), u32)> {
        (0..45)
            .map(|n| {
                let jitter = (n % 5) as f64 * 0.000_02;
                let lat = home.0 + jitter + if away.contains(&n) { 0.072 } else { 0.0 };
                (local(n, 3, 0), (lat, home.1 + jitter), n as u32)
            })
            .collect()
    };
    let (quiet, moved) = (nights(0..0), nights(20..24));
    kind_bench(
        g,
        "residence_change",
        || (ResidenceChange::default(), NightLocations::default()),
        &pair(&plain, &quiet, &plain, &moved, 1),
        |(k, locations), &(sample_ms, at, n), ctx| {
            k.on_night(sample_ms, at, n, locations, DEV, ctx)
        },
    );

    // 28 active commuting days of 30–42 km; today: a 36-km day of 120 counted steps, or a
    // 480-km day of 800 (fires once past 336 km).
    let mut active = ActiveDays::default();
    for i in 0..28 {
        active.push(30.0 + (i * 7 % 13) as f32, 1.0, 28);
    }
    let today = |steps: i64, km: f64| -> Vec<(i32, f64, i64)> {
        (1..=steps)
            .map(|s| (20_605, s as f64 * km, local(30, 6, 0) + s * 30_000))
            .collect()
    };
    let (quiet, long) = (today(120, 0.3), today(800, 0.6));
    kind_bench(
        g,
        "mileage_anomaly",
        MileageAnomaly::default,
        &pair(&plain, &quiet, &plain, &long, 1),
        |k, &(day, km, ts), ctx| k.on_distance(day, km, &active, ts, DEV, ctx),
    );

    // An 18-km drive at 01:00 (60 counted steps) after 28 days of a night driver (quiet: 40 %
    // of the distance at night) or of a day driver (incident: fires once past 5 km). The
    // window sums over the ring are computed per call, as `Baseline` does for this kind.
    let ring = |night_km: f32| {
        let mut ring = DayRing::default();
        for d in 0..28 {
            let summary = DaySummary {
                gnss_km: 36.0,
                night_km,
                odometer_km: 37.0,
            };
            ring.push(20_577 + d, summary);
        }
        ring
    };
    let (night_driver, day_driver) = (ring(14.4), ring(0.0));
    let drive = |ring| -> Vec<(i32, f64, i64, &DayRing)> {
        (1..=60)
            .map(|s| (20_605, s as f64 * 0.3, local(30, 1, 0) + s * 30_000, ring))
            .collect()
    };
    let (quiet, hidden) = (drive(&night_driver), drive(&day_driver));
    kind_bench(
        g,
        "night_movement",
        NightMovement::default,
        &pair(&plain, &quiet, &plain, &hidden, 1),
        |k, &(day, km, ts, ring), ctx| {
            let window = i32::try_from(ctx.rules.night_movement.window_days).unwrap_or(28);
            let past = ring.window(day - 1, window);
            k.on_night_distance(day, km, past, 30, ts, DEV, ctx)
        },
    );
}

/// The cost of one alert: a battery flapping around the threshold opens or closes an
/// incident on every reading.
fn alert_cost(c: &mut Criterion, day: &[Reading]) {
    let plain = Scene::plain();
    let flapping: Vec<Reading> = day
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            r.power.as_mut().expect("power").battery_pct =
                Some(if i % 2 == 0 { 10.0 } else { 25.0 });
            r
        })
        .collect();
    let mut g = group(c, "alert");
    kind_bench(
        &mut g,
        "low_battery",
        LowBattery::default,
        &[Variant {
            name: "flapping",
            scene: &plain,
            inputs: &flapping,
            alerts: flapping.len(),
        }],
        |k, r, ctx| k.on_reading(r, DEV, ctx),
    );
    g.finish();
}

fn kinds(c: &mut Criterion) {
    let (vin, days8) = track(8);
    let day: Vec<Reading> = days8
        .iter()
        .filter(|r| r.ts_ms < local(1, 0, 0))
        .cloned()
        .collect();
    let days5: Vec<Reading> = days8
        .iter()
        .filter(|r| r.ts_ms < local(5, 0, 0))
        .cloned()
        .collect();
    let mut g = group(c, "kinds");
    reading_kinds(&mut g, &day, &vin);
    position_kinds(&mut g, &day, &days5);
    odometer_mismatch(&mut g, &days8);
    duplicate_collateral(&mut g);
    baseline_kinds(&mut g);
    g.finish();
    alert_cost(c, &day);
}

/// A reading with the chain around it, and the device's previous speed.
type BaselineInput = (Reading, Chained);

/// The vehicle's calls into `Baseline` for one in-order reading.
fn feed_baseline(
    (b, last_speed): &mut (Baseline, Option<(i64, f32)>),
    (r, c): &BaselineInput,
    ctx: &mut Ctx<'_>,
    rows: &mut Vec<DailyFeatures>,
) {
    let tz = DEFAULT_TIMEZONE;
    b.before_reading(r, tz, c.before.as_ref(), DEV, ctx);
    if let Some(s) = &c.step {
        b.on_step(s, DEV, ctx);
    }
    b.after_reading(r, tz, &c.after, &ROW, ctx.rules, rows);
    if let Some(v) = r.speed_kmh.filter(|s| s.is_finite()) {
        if let Some(prev) = *last_speed {
            b.note_speed_change(prev, (r.ts_ms, v), ctx.rules);
        }
        *last_speed = Some((r.ts_ms, v));
    }
}

fn features(c: &mut Criterion) {
    let plain = Scene::plain();
    let rules = &plain.rules;
    let (_, readings) = track(31);
    let chained: Vec<BaselineInput> = readings
        .iter()
        .cloned()
        .zip(chain(&readings, rules))
        .collect();
    // Warm: 30 days and the first reading of day 30 (which closes day 29), untimed.
    let first = chained.partition_point(|(r, _)| r.ts_ms < local(30, 0, 0)) + 1;
    let (history, today) = chained.split_at(first);
    let mut warm = (Baseline::default(), None);
    let (mut alerts, mut rows) = (Vec::new(), Vec::new());
    {
        let mut ctx = plain.ctx(&mut alerts);
        for input in history {
            feed_baseline(&mut warm, input, &mut ctx, &mut rows);
        }
    }
    assert!(alerts.is_empty(), "the quiet history raised alerts");
    assert_eq!(rows.len(), 30, "one row per closed day");
    let mut fed = warm.clone();
    {
        let mut ctx = plain.ctx(&mut alerts);
        for input in today {
            feed_baseline(&mut fed, input, &mut ctx, &mut rows);
        }
    }
    assert_eq!(rows.len(), 30, "day 30 is still open");

    let mut g = group(c, "features");
    let day: Vec<&Reading> = today.iter().map(|(r, _)| r).collect();
    let bounds = DayBounds::of(DEFAULT_TIMEZONE, local(30, 0, 0), 5);
    g.throughput(Throughput::Elements(day.len() as u64));
    g.bench_function("day_acc_note_reading", |b| {
        b.iter_batched_ref(
            || DayAcc::new(bounds),
            |acc| day.iter().for_each(|r| acc.note_reading(black_box(r))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline_per_reading_after_30_days", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |state| {
                let (mut alerts, mut rows) = (Vec::new(), Vec::new());
                let mut ctx = plain.ctx(&mut alerts);
                for input in today {
                    feed_baseline(state, black_box(input), &mut ctx, &mut rows);
                }
                (alerts, rows)
            },
            BatchSize::SmallInput,
        )
    });

    // Closing day 30: the held step, ring and active-days push, the row, revisions.
    let (last_chain, end) = (&today[today.len() - 1].1.after, local(31, 0, 0));
    let close = |(b, _): &mut (Baseline, Option<(i64, f32)>)| {
        let mut rows = Vec::new();
        b.on_clock(end, last_chain, &ROW, rules, &mut rows);
        rows
    };
    assert_eq!(close(&mut fed.clone()).len(), 1, "the close emits one row");
    g.throughput(Throughput::Elements(1));
    g.bench_function("day_close", |b| {
        b.iter_batched_ref(|| fed.clone(), close, BatchSize::SmallInput)
    });

    // The row alone, from a day accumulated like the open one and a full ring.
    let mut acc = DayAcc::new(bounds);
    let mut in_trip = false;
    for (r, c) in today {
        acc.note_reading(r);
        if let Some(s) = c.step.filter(|s| bounds.contains(s.fix.ts_ms)) {
            let share = StepShare {
                ts_ms: s.fix.ts_ms,
                counted: s.counted,
                counted_m: s.counted_m,
                dt_ms: s.dt_ms,
                mil: false,
            };
            acc.note_step(&share, in_trip);
            in_trip = s.counted;
        }
    }
    let mut ring = DayRing::default();
    for d in 0..30 {
        ring.push(bounds.day - 29 + d, acc.summary());
    }
    g.bench_function("row", |b| {
        b.iter(|| black_box(&acc).row(VEHICLE, Some(LOAN), black_box(&ring), 30))
    });
    g.finish();
}

/// Every kind switched off.
fn all_off(mut r: RulesConfig) -> RulesConfig {
    r.power_cut.enabled = false;
    r.device_tamper.enabled = false;
    r.tow_suspected.enabled = false;
    r.offline.enabled = false;
    r.gnss_jamming.enabled = false;
    r.location_jump.enabled = false;
    r.geofence_exit.enabled = false;
    r.risk_zone_enter.enabled = false;
    r.risk_zone_dwell.enabled = false;
    r.stationary_long.enabled = false;
    r.low_battery.enabled = false;
    r.odometer_rollback.enabled = false;
    r.dtc_cleared.enabled = false;
    r.vin_mismatch.enabled = false;
    r.odometer_mismatch.enabled = false;
    r.duplicate_collateral.enabled = false;
    r.residence_change.enabled = false;
    r.mileage_anomaly.enabled = false;
    r.night_movement.enabled = false;
    r
}

fn vehicle(c: &mut Criterion) {
    let mut feed = VehicleFeed::new(7, DeviceClass::Wired);
    let mut seq = 0;
    let mut history = Vec::new();
    for day in 0..30 {
        feed.realistic_day(day, &mut seq, &mut history);
    }
    let mut next = Vec::new();
    feed.realistic_day(30, &mut seq, &mut next);
    let home = {
        let g = history[0].reading.gnss.as_ref().expect("gnss");
        (g.lat.expect("lat"), g.lon.expect("lon"))
    };
    // A permitted city of 30 km and a dealer the commute never reaches: armed, quiet.
    let on = Scene::fenced(home, 30_000.0, (home.0 + 0.162, home.1 + 0.05));
    let off = Scene {
        rules: all_off(RulesConfig::default()),
        ..Scene::fenced(home, 30_000.0, (home.0 + 0.162, home.1 + 0.05))
    };
    let mut g = group(c, "vehicle");
    g.throughput(Throughput::Elements(next.len() as u64));
    for (name, scene) in [("all_kinds_on", &on), ("all_kinds_off", &off)] {
        let env = scene.env();
        let profile = Profile {
            permitted: scene.permitted.as_slice().into(),
            ..feed.profile()
        };
        let mut fed = Fed::new(VehicleState::new(Arc::clone(&feed.vehicle_id), profile));
        let mut out = Outputs::default();
        fed.feed(history.clone(), &env, &mut out);
        assert!(out.alerts.is_empty(), "{name}: the history raised alerts");
        g.bench_function(name, |b| {
            b.iter_batched(
                || (fed.clone(), next.clone()),
                |(mut fed, next)| {
                    let mut out = Outputs::default();
                    fed.feed(black_box(next), &env, &mut out);
                    (fed, out)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(detectors, position, kinds, features, vehicle);
criterion_main!(detectors);

//! The peer job of `../shared/notes/perf.md` §2 on lienwatch's engine: lienwatch's own decoder
//! (`schemas::decode_payload`) and timely dataflow, vehicles exchanged by device as in the
//! service. `benches/peers.sh` runs it beside DuckDB (`benches/peer_duckdb.py`) on the same
//! JSON Lines file and checks that both give the same rows.
//!
//! ```sh
//! cargo run --release -p benches --example peer_job -- INPUT.jsonl OUT.csv -w 2
//! ```
//!
//! Per `device_id`: the number of readings with a GNSS fix, the haversine distance (km,
//! R = 6371) between consecutive fixes ordered by `ts`, and the maximum `gnss.speed_kmh` of
//! those fixes. Written to OUT.csv as `device_id,n,dist_km,max_speed`, sorted by device.
//!
//! The rule, the same in both engines:
//! - a line counts if the decoder accepts it as one reading (SPEC §2: valid JSON object,
//!   non-blank `device_id`, `ts` as epoch ms or RFC 3339 in 1970..9999, lat/lon in range)
//!   and its `gnss` has `lat` and `lon` and `fix` not false (absent = true); no `hdop` test;
//! - blank lines, lines the decoder rejects and **batch arrays** (lines starting with `[`,
//!   the back-filled uploads) are skipped; the counts are printed;
//! - **no de-duplication**: a duplicated line counts twice (and adds 0 km, since the two
//!   points are the same); no `future_ts` test (the job has no pipeline clock);
//! - points are ordered by `(ts, lat, lon)`: a point arriving late is inserted at its place
//!   (the distance patched: + prev→p + p→next − prev→next), so the result is that of the
//!   sorted sequence whatever the arrival order, and ties on `ts` are broken the same way as
//!   DuckDB's `ORDER BY ts, lat, lon`.
//!
//! How it runs: the file is cut into chunks of `PEER_CHUNK_MIB` (4) MiB at line boundaries;
//! worker `i` of `n` reads chunks `k ≡ i (mod n)` (each byte is read once), decodes their
//! lines and sends the fixes, at timely time `k`, exchanged by `xxh3(device_id)` (as
//! lienwatch exchanges vehicles). The per-device operator applies the times in order, so
//! each device sees its points in file order and only genuinely late points are inserted
//! out of place. State per device: the counters and its sorted points (24 B each).
//! A reader runs at most `LAG` chunks ahead of the operator's progress.

#![allow(clippy::print_stderr)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use xxhash_rust::xxh3::xxh3_64;

use schemas::{DecodeLimits, decode_payload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fix sent to the device's worker: device id, ts (ms), lat, lon, gnss speed (NaN = none).
type Fix = (String, i64, f64, f64, f32);

/// How many chunks a reader may run ahead of the per-device operator.
const LAG: u64 = 4;

fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) * 0.5).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() * 0.5).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().asin()
}

/// One device's result so far and its points in `(ts, lat, lon)` order.
#[derive(Default)]
struct Device {
    n: u64,
    dist_km: f64,
    max_speed: Option<f32>,
    points: Vec<(i64, f64, f64)>,
}

fn key_cmp(a: &(i64, f64, f64), b: &(i64, f64, f64)) -> std::cmp::Ordering {
    a.0.cmp(&b.0)
        .then(a.1.total_cmp(&b.1))
        .then(a.2.total_cmp(&b.2))
}

impl Device {
    fn add(&mut self, ts: i64, lat: f64, lon: f64, speed: f32) {
        self.n += 1;
        if !speed.is_nan() {
            self.max_speed = Some(self.max_speed.map_or(speed, |m| m.max(speed)));
        }
        let p = (ts, lat, lon);
        let hav = |a: &(i64, f64, f64), b: &(i64, f64, f64)| haversine_km(a.1, a.2, b.1, b.2);
        match self.points.last() {
            None => self.points.push(p),
            Some(last) if key_cmp(last, &p).is_le() => {
                self.dist_km += hav(last, &p);
                self.points.push(p);
            }
            Some(_) => {
                // Late: insert after every point not after it; `next` exists (p < last).
                let at = self.points.partition_point(|q| key_cmp(q, &p).is_le());
                let next = self.points[at];
                self.dist_km += hav(&p, &next);
                if at > 0 {
                    let prev = self.points[at - 1];
                    self.dist_km += hav(&prev, &p) - hav(&prev, &next);
                }
                self.points.insert(at, p);
            }
        }
    }
}

/// Per-worker input counts.
#[derive(Default, Clone, Copy)]
struct Counts {
    lines: u64,
    blank: u64,
    batches: u64,
    rejected: u64,
    no_fix: u64,
    fixes: u64,
}

/// Reads chunk `k` (the lines that start in `[k·size, (k+1)·size)`) into `buf`, returns the
/// offset in `buf` of its first line.
fn read_chunk(file: &File, len: u64, size: u64, k: u64, buf: &mut Vec<u8>) -> usize {
    let start = (k * size).saturating_sub(1);
    let end = ((k + 1) * size).min(len);
    buf.clear();
    buf.resize((end - start) as usize, 0);
    file.read_exact_at(buf, start).expect("read input");
    // Complete the last line: read on to the first newline at or after `end - 1`.
    let mut at = end;
    while buf.last() != Some(&b'\n') && at < len {
        let more = (64 * 1024).min(len - at) as usize;
        let from = buf.len();
        buf.resize(from + more, 0);
        file.read_exact_at(&mut buf[from..], at)
            .expect("read input");
        at += more as u64;
        if let Some(nl) = memchr(&buf[from..]) {
            buf.truncate(from + nl + 1);
        }
    }
    if k == 0 {
        0
    } else {
        // Byte `start` ends the previous chunk's line, or is inside a line that started there.
        memchr(buf).map_or(buf.len(), |nl| nl + 1)
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'\n')
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: peer_job INPUT.jsonl OUT.csv [-w N]");
        std::process::exit(2);
    }
    let (input_path, out_path) = (args[0].clone(), args[1].clone());
    let workers: usize = match &args[2..] {
        [] => 1,
        [flag, n] if flag == "-w" => n.parse().expect("-w N"),
        _ => panic!("usage: peer_job INPUT.jsonl OUT.csv [-w N]"),
    };
    let chunk_mib: u64 = std::env::var("PEER_CHUNK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let t0 = Instant::now();

    let per_worker = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let file = File::open(&input_path).expect("open input");
        let len = file.metadata().expect("stat input").len();
        let size = chunk_mib << 20;
        let chunks = len.div_ceil(size);
        let devices: Rc<RefCell<HashMap<String, Device>>> = Rc::default();

        let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Fix>>> = InputHandle::new();
        let probe = ProbeHandle::new();
        let state = Rc::clone(&devices);
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Exchange::new(|f: &Fix| xxh3_64(f.0.as_bytes())),
                    "PerDevice",
                    move |_cap, _info| {
                        let mut pending: BTreeMap<u64, Vec<Fix>> = BTreeMap::new();
                        move |(input, frontier), _output| {
                            input.for_each(|cap, data| {
                                if let Some(t) = cap.least() {
                                    pending.entry(*t).or_default().append(data);
                                }
                            });
                            let mut devices = state.borrow_mut();
                            while let Some(entry) = pending.first_entry() {
                                if frontier.less_equal(entry.key()) {
                                    break;
                                }
                                for (id, ts, lat, lon, speed) in entry.remove() {
                                    match devices.get_mut(id.as_str()) {
                                        Some(d) => d.add(ts, lat, lon, speed),
                                        None => {
                                            devices.entry(id).or_default().add(ts, lat, lon, speed)
                                        }
                                    }
                                }
                            }
                        }
                    },
                )
                .probe_with(&probe);
        });

        let limits = DecodeLimits::default();
        let mut counts = Counts::default();
        let mut buf = Vec::new();
        let mut decoded = Vec::new();
        let mut k = index;
        while k < chunks {
            input.advance_to(k);
            while probe.less_than(&k.saturating_sub(LAG * peers)) {
                worker.step();
            }
            let first = read_chunk(&file, len, size, k, &mut buf);
            let mut session_batch: Vec<Fix> = Vec::with_capacity(16 * 1024);
            // The chunk's lines without the final newline (an empty piece is a blank line).
            let body = &buf[first..];
            let body = body.strip_suffix(b"\n").unwrap_or(body);
            let lines = (first < buf.len()).then(|| body.split(|c| *c == b'\n'));
            for line in lines.into_iter().flatten() {
                counts.lines += 1;
                let trimmed = line.trim_ascii();
                match trimmed.first() {
                    None => {
                        counts.blank += 1;
                        continue;
                    }
                    Some(b'[') => {
                        counts.batches += 1;
                        continue;
                    }
                    _ => {}
                }
                decoded.clear();
                decode_payload(line, None, 0, &limits, &mut decoded);
                for r in decoded.drain(..) {
                    let Ok(r) = r else {
                        counts.rejected += 1;
                        continue;
                    };
                    match r.gnss {
                        Some(g) if g.fix && g.lat.is_some() && g.lon.is_some() => {
                            counts.fixes += 1;
                            session_batch.push((
                                r.device_id,
                                r.ts_ms,
                                g.lat.unwrap_or_default(),
                                g.lon.unwrap_or_default(),
                                g.speed_kmh.unwrap_or(f32::NAN),
                            ));
                        }
                        _ => counts.no_fix += 1,
                    }
                }
                if session_batch.len() >= 4096 {
                    input.send_batch(&mut session_batch);
                    worker.step();
                }
            }
            input.send_batch(&mut session_batch);
            worker.step();
            k += peers;
        }
        input.close();
        while worker.step() {}

        let devices = devices.borrow();
        let mut rows: Vec<(&String, &Device)> = devices.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut text = String::new();
        for (id, d) in rows {
            let speed = d.max_speed.map(|s| s.to_string()).unwrap_or_default();
            text.push_str(&format!("{id},{},{},{speed}\n", d.n, d.dist_km));
        }
        (counts, text, devices.len())
    })
    .expect("timely")
    .join();

    let mut total = Counts::default();
    let mut rows = Vec::new();
    let mut n_devices = 0;
    for result in per_worker {
        let (c, text, n) = result.expect("worker");
        total.lines += c.lines;
        total.blank += c.blank;
        total.batches += c.batches;
        total.rejected += c.rejected;
        total.no_fix += c.no_fix;
        total.fixes += c.fixes;
        n_devices += n;
        rows.extend(text.lines().map(str::to_owned));
    }
    rows.sort();
    let mut out = std::io::BufWriter::new(File::create(&out_path).expect("create output"));
    writeln!(out, "device_id,n,dist_km,max_speed").expect("write");
    for r in &rows {
        writeln!(out, "{r}").expect("write");
    }
    out.flush().expect("write");
    eprintln!(
        "peer_job: {} lines ({} blank, {} batch arrays skipped, {} rejected, {} readings without a fix), {} fixes, {} devices, {:.3} s",
        total.lines,
        total.blank,
        total.batches,
        total.rejected,
        total.no_fix,
        total.fixes,
        n_devices,
        t0.elapsed().as_secs_f64()
    );
}

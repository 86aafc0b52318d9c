//! JSON Lines edges: the replay input ([`LineSource`], SPEC §7) and the file sinks of alerts
//! (SPEC §4) and daily features (SPEC §5), both a [`JsonlWriter`].

use std::fs::File;
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Bytes read from an input per `read` call. Lines longer than this are assembled across
/// reads.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// Buffer of a [`JsonlWriter`].
const WRITER_BUFFER_BYTES: usize = 64 << 10;

/// Errors of the JSON Lines input and output.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// An input file could not be opened.
    #[error("cannot open input {path}: {source}")]
    Open {
        /// The input path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An input could not be read.
    #[error("cannot read input {path}: {source}")]
    Read {
        /// The input path (`-` for stdin).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An output file could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The output path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An output could not be written or flushed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output path (`-` for stdout).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Whether `path` names stdin/stdout.
fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// JSON whitespace only (or nothing): such lines are skipped (SPEC §4a).
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// `line` without one trailing `\r` (CRLF input).
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The replay input of one worker: JSON Lines files read in order, of which this worker keeps
/// its share of lines.
///
/// Lines are numbered globally from 0 across all inputs (the second input continues after the
/// first); every line counts, blank ones included. Line `n` belongs to worker
/// `(n / block_lines) % peers` (block-cyclic). Each worker opens and scans every file itself,
/// skipping foreign lines with `memchr` over a 256 KiB read buffer without copying them, and
/// returns only its own non-blank lines, without the `\n` or `\r\n` terminator. A final line
/// without `\n` counts; bytes are passed through untouched (invalid UTF-8 is for the decoder
/// to reject).
///
/// Stdin (`-`) can be read by one reader only, and its length is unknown to the others, so
/// worker 0 owns every line of stdin **and of every input after it**, numbered as usual, and
/// the other workers stop at the first `-`. Put `-` last (or alone) to keep the files before
/// it shared.
pub struct LineSource {
    paths: Vec<PathBuf>,
    /// Index of the next input to open.
    next_path: usize,
    /// The open input and its path.
    input: Option<(Box<dyn Read + Send>, PathBuf)>,
    worker: u64,
    peers: u64,
    block_lines: u64,
    /// Whether an input `-` was reached: from then on worker 0 owns every line.
    after_stdin: bool,
    buf: Box<[u8]>,
    /// Unscanned bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// Global number of the line being scanned.
    line: u64,
    /// Bytes of the current line were consumed (it must be counted at end of input).
    mid_line: bool,
    /// The start of the current owned line, when it spans reads.
    partial: Vec<u8>,
    /// All inputs are exhausted (or this worker stopped at stdin).
    done: bool,
}

impl LineSource {
    /// A source over `paths` (`-` = stdin) for worker `worker` of `peers`, owning blocks of
    /// `block_lines` consecutive lines. Inputs are opened lazily, in order.
    ///
    /// # Panics
    ///
    /// If `peers` or `block_lines` is 0, or `worker >= peers`.
    pub fn new(paths: Vec<PathBuf>, worker: usize, peers: usize, block_lines: u64) -> Self {
        assert!(
            peers > 0 && worker < peers,
            "worker {worker} of {peers} peers"
        );
        assert!(block_lines > 0, "block_lines must be positive");
        Self {
            paths,
            next_path: 0,
            input: None,
            worker: worker as u64,
            peers: peers as u64,
            block_lines,
            after_stdin: false,
            buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            end: 0,
            line: 0,
            mid_line: false,
            partial: Vec::new(),
            done: false,
        }
    }

    /// Whether this worker owns line `n`.
    fn owns(&self, n: u64) -> bool {
        if self.after_stdin {
            return self.worker == 0;
        }
        (n / self.block_lines) % self.peers == self.worker
    }

    /// Lines from the current one up to (excluding) the next one this worker owns; `u64::MAX`
    /// when it owns none of them any more. Only called for a foreign current line.
    fn foreign_run(&self) -> u64 {
        if self.after_stdin {
            return u64::MAX;
        }
        let block = self.line / self.block_lines;
        let blocks_ahead = (self.worker + self.peers - block % self.peers) % self.peers;
        (block + blocks_ahead) * self.block_lines - self.line
    }

    /// Appends to `out` up to `max_lines` of this worker's non-blank lines with their global
    /// line numbers; `out` is not cleared.
    ///
    /// Returns `Ok(false)` once every input is exhausted (lines appended by that call are
    /// still valid), `Ok(true)` while more may follow.
    pub fn next_batch(
        &mut self,
        max_lines: usize,
        out: &mut LineBatch,
    ) -> Result<bool, JsonlError> {
        let mut kept = 0;
        while kept < max_lines {
            if self.pos == self.end && !self.fill()? {
                return Ok(false);
            }
            let hay = &self.buf[self.pos..self.end];
            if self.owns(self.line) {
                match memchr::memchr(b'\n', hay) {
                    Some(i) => {
                        let line = if self.partial.is_empty() {
                            strip_cr(&hay[..i])
                        } else {
                            self.partial.extend_from_slice(&hay[..i]);
                            strip_cr(&self.partial)
                        };
                        if !is_blank(line) {
                            out.push(self.line, line);
                            kept += 1;
                        }
                        self.partial.clear();
                        self.pos += i + 1;
                        self.line += 1;
                        self.mid_line = false;
                    }
                    None => {
                        self.partial.extend_from_slice(hay);
                        self.pos = self.end;
                        self.mid_line = true;
                    }
                }
            } else {
                let run = self.foreign_run();
                let mut skipped = 0;
                let mut last_newline = None;
                for i in memchr::memchr_iter(b'\n', hay) {
                    skipped += 1;
                    last_newline = Some(i);
                    if skipped == run {
                        break;
                    }
                }
                self.line += skipped;
                if skipped == run {
                    self.pos += last_newline.map_or(0, |i| i + 1);
                    self.mid_line = false;
                } else {
                    // Bytes after the last newline start a foreign line that goes on.
                    self.mid_line = last_newline.is_none_or(|i| i + 1 < hay.len());
                    self.pos = self.end;
                }
            }
        }
        Ok(true)
    }

    /// Refills the buffer from the current input, moving on to the next input at end of
    /// file. Returns `false` when there is nothing left to read.
    fn fill(&mut self) -> Result<bool, JsonlError> {
        loop {
            if self.done {
                return Ok(false);
            }
            let Some((input, path)) = self.input.as_mut() else {
                self.open_next()?;
                continue;
            };
            let n = match input.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(JsonlError::Read {
                        path: path.clone(),
                        source,
                    });
                }
            };
            if n > 0 {
                self.pos = 0;
                self.end = n;
                return Ok(true);
            }
            self.input = None;
            if self.mid_line {
                // The input ended inside a line: terminate it with a virtual newline so the
                // scan counts it (and returns it if it is ours).
                self.buf[0] = b'\n';
                self.pos = 0;
                self.end = 1;
                return Ok(true);
            }
        }
    }

    /// Opens the next input, or marks the source done.
    fn open_next(&mut self) -> Result<(), JsonlError> {
        let Some(path) = self.paths.get(self.next_path).cloned() else {
            self.done = true;
            return Ok(());
        };
        self.next_path += 1;
        if is_std(&path) {
            self.after_stdin = true;
            if self.worker != 0 {
                self.done = true;
                return Ok(());
            }
            self.input = Some((Box::new(io::stdin()), path));
            return Ok(());
        }
        let file = File::open(&path).map_err(|source| JsonlError::Open {
            path: path.clone(),
            source,
        })?;
        self.input = Some((Box::new(file), path));
        Ok(())
    }
}

/// Lines read by [`LineSource::next_batch`], stored in one reused buffer (no allocation per
/// line once the buffers have grown).
#[derive(Debug, Default)]
pub struct LineBatch {
    bytes: Vec<u8>,
    lines: Vec<(u64, usize, usize)>,
}

impl LineBatch {
    /// Forgets every line, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there are no lines.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines as (global line number, bytes without the line end), in input order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.lines
            .iter()
            .map(|&(n, start, end)| (n, &self.bytes[start..end]))
    }

    fn push(&mut self, number: u64, line: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(line);
        self.lines.push((number, start, self.bytes.len()));
    }
}

/// A JSON Lines file sink of `T` rows, shared by the worker threads of a process
/// (`Arc<JsonlWriter<T>>`): one JSON object per line. The alerts file (SPEC §4) is a
/// `JsonlWriter<Alert>`, the daily features file (SPEC §5) a `JsonlWriter<DailyFeatures>`;
/// the row type keeps one from being written into the other.
///
/// Buffering: writes go through a 64 KiB buffer behind a mutex; the lines of one
/// [`write`](Self::write) call stay together. Nothing reaches the file until the buffer fills
/// or [`flush`](Self::flush) is called, so call `flush` after each batch or epoch and before
/// exit (dropping the writer also flushes, but cannot report errors).
pub struct JsonlWriter<T> {
    /// The file (`-` = stdout), for errors.
    path: PathBuf,
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
    /// The row type; `fn(&T)` so the writer is `Send + Sync` whatever `T` is.
    rows: PhantomData<fn(&T)>,
}

impl<T: Serialize> JsonlWriter<T> {
    /// Creates (truncates) the file at `path`; `-` writes to stdout.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, JsonlError> {
        let path = path.as_ref();
        let out: Box<dyn Write + Send> = if is_std(path) {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(path).map_err(|source| JsonlError::Create {
                path: path.into(),
                source,
            })?)
        };
        Ok(Self {
            path: path.into(),
            out: Mutex::new(BufWriter::with_capacity(WRITER_BUFFER_BYTES, out)),
            rows: PhantomData,
        })
    }

    /// Appends `rows`, one JSON object per line.
    pub fn write(&self, rows: &[T]) -> Result<(), JsonlError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let mut append = |row: &T| -> io::Result<()> {
            serde_json::to_writer(&mut *out, row)?;
            out.write_all(b"\n")
        };
        rows.iter()
            .try_for_each(&mut append)
            .map_err(|source| self.write_error(source))
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&self) -> Result<(), JsonlError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.flush().map_err(|source| self.write_error(source))
    }

    fn write_error(&self, source: io::Error) -> JsonlError {
        JsonlError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use schemas::{Alert, AlertKind, Phase, Severity};

    use super::*;

    /// The lines of `inputs` as the spec numbers them: global, 0-based, blank lines counted
    /// but not returned, terminators stripped.
    fn reference(inputs: &[&[u8]]) -> BTreeMap<u64, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut n = 0;
        for input in inputs {
            let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            for line in lines {
                let line = strip_cr(line);
                if !is_blank(line) {
                    out.insert(n, line.to_vec());
                }
                n += 1;
            }
        }
        out
    }

    fn write_inputs(dir: &Path, inputs: &[&[u8]]) -> Vec<PathBuf> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = dir.join(format!("in{i}.jsonl"));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect()
    }

    /// Everything worker `worker` of `peers` reads, in batches of `batch` lines.
    fn read_all(
        paths: &[PathBuf],
        worker: usize,
        peers: usize,
        block: u64,
        batch: usize,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut source = LineSource::new(paths.to_vec(), worker, peers, block);
        let mut out = Vec::new();
        let mut lines = LineBatch::default();
        loop {
            lines.clear();
            let more = source.next_batch(batch, &mut lines).unwrap();
            assert!(lines.len() <= batch);
            out.extend(lines.iter().map(|(n, l)| (n, l.to_vec())));
            if !more {
                break;
            }
        }
        lines.clear();
        assert!(
            !source.next_batch(batch, &mut lines).unwrap() && lines.is_empty(),
            "stays exhausted"
        );
        out
    }

    /// Checks that `peers` workers together return every non-blank line exactly once, each
    /// from its owner, with its global number.
    fn check_cover(inputs: &[&[u8]], peers: usize, block: u64, batch: usize) {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_inputs(dir.path(), inputs);
        let mut seen = BTreeMap::new();
        for worker in 0..peers {
            let lines = read_all(&paths, worker, peers, block, batch);
            assert!(lines.windows(2).all(|w| w[0].0 < w[1].0), "in order");
            for (n, line) in lines {
                assert_eq!((n / block) % peers as u64, worker as u64, "line {n} owner");
                assert!(seen.insert(n, line).is_none(), "line {n} twice");
            }
        }
        assert_eq!(seen, reference(inputs), "peers {peers} block {block}");
    }

    #[test]
    fn workers_cover_every_line_once_across_files() {
        let first: &[u8] = b"{\"a\":0}\n{\"a\":1}\n\n  \n{\"a\":4}\n{\"a\":5}\n{\"a\":6}\n";
        let second: &[u8] = b"{\"b\":7}\n\t\n{\"b\":9}\n{\"b\":10}\n";
        for peers in 1..=3 {
            for block in [1, 2, 5, 1000] {
                check_cover(&[first, second], peers, block, 2);
            }
        }
        let lines = read_all(
            &write_inputs(tempfile::tempdir().unwrap().path(), &[first, second]),
            0,
            1,
            1,
            100,
        );
        let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            [0, 1, 4, 5, 6, 7, 9, 10],
            "blank lines 2, 3, 8 counted, skipped"
        );
    }

    #[test]
    fn crlf_missing_final_newline_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let inputs: [&[u8]; 4] = [b"a\r\nb\r\n\r\nc", b"", b"d\n\r", b"\xff\xfe bad utf8\n"];
        let paths = write_inputs(dir.path(), &inputs);
        let lines = read_all(&paths, 0, 1, 1, 10);
        let expected: Vec<(u64, Vec<u8>)> = vec![
            (0, b"a".to_vec()),
            (1, b"b".to_vec()),
            (3, b"c".to_vec()),
            (4, b"d".to_vec()),
            (6, b"\xff\xfe bad utf8".to_vec()),
        ];
        assert_eq!(lines, expected);
        for peers in 1..=3 {
            check_cover(&inputs, peers, 1, 1);
        }
    }

    #[test]
    fn lines_longer_than_the_read_buffer() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
        let mut first = b"short\n".to_vec();
        first.extend_from_slice(long.as_bytes());
        first.extend_from_slice(b"\r\nafter\n");
        first.extend_from_slice(long.as_bytes());
        let second = format!("{long}\nend\n");
        let inputs: [&[u8]; 2] = [&first, second.as_bytes()];
        for peers in 1..=3 {
            for block in [1, 2] {
                check_cover(&inputs, peers, block, 1);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let lines = read_all(&write_inputs(dir.path(), &inputs), 0, 1, 1, 10);
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[1], (1, long.clone().into_bytes()));
        assert_eq!(
            lines[3],
            (3, long.into_bytes()),
            "final line without newline"
        );
        assert_eq!(lines[5].0, 5);
    }

    #[test]
    fn generated_inputs_cover_every_line_once() {
        // A small LCG: random lines of 0..600 bytes with blanks, CRs and the odd huge line.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) % bound
        };
        let mut inputs = Vec::new();
        for _ in 0..3 {
            let mut bytes = Vec::new();
            for _ in 0..2000 {
                let len = if next(500) == 0 { 300_000 } else { next(600) } as usize;
                bytes.extend((0..len).map(|i| {
                    if next(50) == 0 {
                        b' '
                    } else {
                        b'a' + (i % 26) as u8
                    }
                }));
                if next(10) == 0 {
                    bytes.push(b'\r');
                }
                bytes.push(b'\n');
            }
            if next(2) == 0 {
                bytes.pop();
            }
            inputs.push(bytes);
        }
        let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        for (peers, block) in [(1, 1), (2, 1), (3, 7), (4, 64)] {
            check_cover(&inputs, peers, block, 100);
        }
    }

    #[test]
    fn only_worker_zero_reads_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = write_inputs(dir.path(), &[b"0\n1\n2\n3\n"]);
        paths.push(PathBuf::from("-"));
        paths.push(dir.path().join("never-opened.jsonl"));
        // Worker 1 keeps its share of the files before `-`, then stops without touching
        // stdin or the (missing) file after it.
        assert_eq!(
            read_all(&paths, 1, 2, 1, 10),
            vec![(1, b"1".to_vec()), (3, b"3".to_vec())]
        );
    }

    #[test]
    fn missing_input_is_an_open_error() {
        let mut source = LineSource::new(vec![PathBuf::from("/nonexistent/x.jsonl")], 0, 1, 1);
        let err = source
            .next_batch(10, &mut LineBatch::default())
            .unwrap_err();
        assert!(matches!(err, JsonlError::Open { .. }), "{err}");
    }

    #[test]
    fn writer_writes_one_object_per_line_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let log = Arc::new(JsonlWriter::create(&path).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let alerts: Vec<Alert> = (0..50)
                        .map(|i| Alert {
                            alert_id: schemas::alert::alert_id("V", AlertKind::Offline, i),
                            kind: AlertKind::Offline,
                            phase: Phase::Close,
                            severity: Severity::Medium,
                            vehicle_id: format!("V{t}"),
                            loan_id: Some("L".into()),
                            device_id: "D".into(),
                            event_time_ms: i,
                            detected_at_ms: i,
                            lat: Some(1.5),
                            lon: Some(2.5),
                            backfill: true,
                            evidence: Default::default(),
                        })
                        .collect();
                    for chunk in alerts.chunks(7) {
                        log.write(chunk).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        log.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let alerts: Vec<Alert> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(alerts.len(), 200);
        assert!(alerts.iter().all(|a| a.phase == Phase::Close && a.backfill));
    }

    #[test]
    fn write_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/features.jsonl");
        let err = JsonlWriter::<u32>::create(&missing).err().unwrap();
        assert!(err.to_string().contains("features.jsonl"), "{err}");
        // /dev/full accepts the open and fails every write with ENOSPC.
        let full = JsonlWriter::<u32>::create("/dev/full").unwrap();
        full.write(&[1, 2]).unwrap();
        let err = full.flush().unwrap_err();
        assert!(
            matches!(&err, JsonlError::Write { path, .. } if path == Path::new("/dev/full")),
            "{err}"
        );
    }
}

//! The journal: a durable, group-committed log of received MQTT messages on local disk, so a
//! QoS 1 message is acknowledged only once it would survive a crash ("durable before ack").
//!
//! ```text
//!  poll task ── append (memcpy) ──▶ buffer ── sync (hand-off) ──▶ journal thread: write + fdatasync
//!      ▲                                                                  │
//!      └──────────── durable watermark (tokio watch: every seq below it is on disk) ◀┘
//! ```
//!
//! The MQTT poll task calls [`Journal::append`] for each message — an encode into an in-memory
//! buffer, no syscall — and [`Journal::sync`] every few milliseconds, which hands the buffer to
//! the journal's own thread and returns at once. That thread writes what it was handed and
//! makes it durable with one `fdatasync` per group: while one fsync runs, later hand-offs queue
//! up and the next fsync covers all of them (group commit). After each fsync it publishes the
//! durable watermark, [`Journal::durable`]; the poll task releases the acks of messages whose
//! seq is below it. The poll task thus never blocks on the disk: no `write`, no `fsync`.
//!
//! On restart [`Journal::open`] scans the segments, drops a torn tail left by a crash, and
//! [`Journal::read_from_epoch`] gives back every record of the epochs after the last complete
//! checkpoint for replay; [`Journal::prune_before`] deletes the segments a checkpoint made
//! useless.
//!
//! # On disk
//! A directory of segment files `{first_seq:020}.journal` (they sort by the seq of their first
//! record) and a `LOCK` file (an advisory lock: one open journal per directory). A segment is a
//! sequence of frames, all integers little-endian:
//!
//! ```text
//! frame = body_len u32 | xxh3_64(body, seed = body_len) u64 | body
//! body  = seq u64 | epoch u64 | received_at_ms i64 | device_len u32 (u32::MAX = none) | device id | payload
//! ```
//!
//! Seqs strictly increase within a segment and from one segment to the next. The journal
//! thread creates a segment only after the previous one is fsynced and the new file's
//! directory entry is fsynced too, so only the last segment can hold a torn write: a bad frame
//! anywhere else is damage, and [`Journal::open`] refuses it ([`JournalError::Corrupt`]).
//!
//! # Failures
//! A failed write or fsync is fatal (PostgreSQL's "fsyncgate": after a failed fsync the kernel
//! may have dropped the dirty pages, and a retry would report success over lost data). The
//! journal thread logs it with the file, stops, and never advances the watermark again; its
//! watch sender is dropped, so `changed()` on a [`Journal::durable`] receiver returns an error;
//! every later [`Journal::append`] and [`Journal::sync`] returns [`JournalError::Failed`].
//! Restarting the process recovers: what was fsynced is read back, the rest was never acked.
//!
//! # Metrics
//! `lienwatch_journal_fsync_seconds` (histogram, one sample per fdatasync of a segment),
//! `lienwatch_journal_bytes` (gauge, bytes of the journal's segments, including records not yet
//! handed to the thread) and `lienwatch_journal_records_total` (counter, records made durable).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Default size at which a segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Frame header: body length (u32) and checksum (u64).
const HEADER_BYTES: usize = 12;

/// The fixed part of a body: seq, epoch, received_at_ms, device_len.
const FIXED_BYTES: usize = 28;

/// `device_len` of a record without a device id.
const NO_DEVICE: u32 = u32::MAX;

/// Extension of segment files.
const SEGMENT_EXTENSION: &str = "journal";

/// Digits of the first seq in a segment's name (`u64::MAX` has 20).
const NAME_DIGITS: usize = 20;

/// The lock file in the journal directory.
const LOCK_FILE: &str = "LOCK";

/// Read buffer of the open scan and the readers.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Capacity of a fresh append buffer.
const BUFFER_BYTES: usize = 256 << 10;

/// Spent buffers the journal thread hands back for reuse.
const SPARE_BUFFERS: usize = 4;

/// Larger spent buffers are freed rather than reused (a burst must not pin its memory).
const SPARE_CAPACITY: usize = 16 << 20;

/// Where and how to keep the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Directory of the segment files; created if absent.
    pub dir: PathBuf,
    /// A segment is closed once the next record would take it past this size (a record larger
    /// than this gets a segment of its own).
    pub segment_bytes: u64,
}

impl JournalConfig {
    /// A journal in `dir` with [`DEFAULT_SEGMENT_BYTES`] segments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// One received message as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Receipt order; strictly increasing over the journal's life.
    pub seq: u64,
    /// Ingest epoch of its receipt.
    pub epoch: u64,
    /// Wall-clock receipt time, epoch ms.
    pub received_at_ms: i64,
    /// The topic's device id, if any.
    pub device_id: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

/// A record to append, borrowed from wherever the message lives (no copy before the one into
/// the journal's buffer).
#[derive(Clone, Copy, Debug)]
pub struct JournalEntry<'a> {
    /// Receipt order.
    pub seq: u64,
    /// Ingest epoch of its receipt.
    pub epoch: u64,
    /// Wall-clock receipt time, epoch ms.
    pub received_at_ms: i64,
    /// The topic's device id, if any.
    pub device_id: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> From<&'a JournalRecord> for JournalEntry<'a> {
    fn from(r: &'a JournalRecord) -> Self {
        Self {
            seq: r.seq,
            epoch: r.epoch,
            received_at_ms: r.received_at_ms,
            device_id: r.device_id.as_deref(),
            payload: &r.payload,
        }
    }
}

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A segment holds a bad frame where no crash can leave one (not the tail of the last
    /// segment), or a record out of seq order. Nothing is skipped: the journal does not open.
    #[error("journal: {} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the bad frame.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Another journal (this process or another) has the directory open.
    #[error("journal: {} is locked by another open journal", dir.display())]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// [`Journal::append`] got a seq not above the last one.
    #[error("journal: record seq {seq} is not above the last one (next seq is {next})")]
    SeqOrder {
        /// The record's seq.
        seq: u64,
        /// The journal's next seq.
        next: u64,
    },
    /// The record does not fit a frame (body above 4 GiB).
    #[error("journal: a record of {bytes} bytes does not fit a frame")]
    TooLarge {
        /// Body bytes.
        bytes: usize,
    },
    /// A write or fsync failed earlier: nothing from `durable` on will ever be durable in this
    /// process. Restart to recover.
    #[error("journal failed, records from seq {durable} on are not durable: {message}")]
    Failed {
        /// The durable watermark, which will not move again.
        durable: u64,
        /// The failure, with its file.
        message: String,
    },
    /// The journal thread could not be started.
    #[error("journal: cannot start the sync thread: {0}")]
    Thread(#[source] io::Error),
}

/// A segment as known in memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// Seq of its first record (its name).
    first_seq: u64,
    /// Largest epoch of its records.
    max_epoch: u64,
    /// Bytes of its frames, including those not yet handed to the journal thread.
    bytes: u64,
}

/// Frames of one segment handed to the journal thread.
struct Chunk {
    /// The segment's first seq.
    segment: u64,
    /// Encoded frames.
    frames: Vec<u8>,
    /// Records in `frames`.
    records: u64,
}

/// Work for the journal thread, done in order.
enum Command {
    /// Write these chunks, fsync, then publish `watermark`.
    Write {
        /// Frames in append order; a chunk of a new segment closes the previous one.
        chunks: Vec<Chunk>,
        /// seq + 1 of the last record in `chunks`.
        watermark: u64,
    },
    /// Delete these closed segments.
    Delete(Vec<PathBuf>),
}

/// How far the journal thread has made the journal durable.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    /// The segment it writes (every earlier one is complete and durable); `None` before the
    /// first segment exists.
    segment: Option<u64>,
    /// Durable bytes of that segment.
    len: u64,
}

/// State shared with the journal thread.
#[derive(Default)]
struct Shared {
    /// Set once a write or fsync failed.
    failed: AtomicBool,
    /// The failure, for [`JournalError::Failed`].
    failure: Mutex<Option<String>>,
    /// Bytes made durable since open.
    durable_bytes: AtomicU64,
    /// Durable end of the journal, for readers and pruning.
    position: Mutex<Position>,
    /// Spent buffers for reuse.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Tests: the next fsync fails.
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

/// The journal: owned by the MQTT poll task. See the module docs.
pub struct Journal {
    /// The directory.
    dir: PathBuf,
    /// Roll size.
    segment_bytes: u64,
    /// Segments in seq order; the last one takes appends.
    segments: VecDeque<Segment>,
    /// Bytes of all segments.
    total_bytes: u64,
    /// seq + 1 of the last record, or the first seq a new segment may have.
    next_seq: u64,
    /// Epoch of the last record.
    last_epoch: Option<u64>,
    /// Frames appended to the last segment since the last hand-off.
    buffer: Vec<u8>,
    /// Records in `buffer`.
    buffer_records: u64,
    /// Frames of segments closed since the last hand-off.
    closed: Vec<Chunk>,
    /// Bytes appended since open.
    appended_bytes: u64,
    /// Shared with the thread.
    shared: Arc<Shared>,
    /// The durable watermark.
    durable: watch::Receiver<u64>,
    /// Commands to the thread; `None` once closed.
    tx: Option<Sender<Command>>,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
    /// Holds the directory's lock while open.
    _lock: File,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`: scans the segments in order, truncates a
    /// torn or corrupt tail of the last segment (logged once with the file and the bytes
    /// dropped) and fsyncs what remains of it, and starts the journal thread. A bad frame in
    /// any other segment, or records out of seq order, is [`JournalError::Corrupt`].
    pub fn open(config: JournalConfig) -> Result<Self, JournalError> {
        let dir = config.dir;
        // Directories created here must be durable entries of their parents too.
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        for created in missing.iter().rev() {
            match created.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
                _ => sync_dir(Path::new("."))?,
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &lock_path)(e)),
        }

        let scan = scan(&dir)?;
        let total_bytes = scan.segments.iter().map(|s| s.bytes).sum();
        let next_seq = scan.next_seq;
        let position = match scan.segments.back() {
            Some(last) => Position {
                segment: Some(last.first_seq),
                len: last.bytes,
            },
            None => Position::default(),
        };
        let shared = Arc::new(Shared {
            position: Mutex::new(position),
            ..Shared::default()
        });
        let (watch_tx, durable) = watch::channel(next_seq);
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.clone(),
            current: scan.open,
            dirty: false,
            shared: Arc::clone(&shared),
            fsync_seconds: metrics::histogram!("lienwatch_journal_fsync_seconds"),
        };
        let thread = thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(&rx, &watch_tx))
            .map_err(JournalError::Thread)?;
        metrics::gauge!("lienwatch_journal_bytes").set(total_bytes as f64);
        Ok(Self {
            dir,
            segment_bytes: config.segment_bytes,
            segments: scan.segments,
            total_bytes,
            next_seq,
            last_epoch: scan.last_epoch,
            buffer: Vec::new(),
            buffer_records: 0,
            closed: Vec::new(),
            appended_bytes: 0,
            shared,
            durable,
            tx: Some(tx),
            thread: Some(thread),
            _lock: lock,
        })
    }

    /// The lowest seq [`Journal::append`] takes: the last record's seq + 1, 0 when empty.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Epoch of the last record appended (or found at open).
    pub fn last_epoch(&self) -> Option<u64> {
        self.last_epoch
    }

    /// Every durable record (as of this call) with `epoch >= from_epoch`, in append order.
    /// Reads segment by segment, skipping segments whose epochs are all below `from_epoch`;
    /// only one record is in memory at a time. A bad frame ends the iteration with an error.
    /// A segment pruned before the reader gets to it is an error too: prune after replay.
    pub fn read_from_epoch(&self, from_epoch: u64) -> Result<JournalReader, JournalError> {
        let position = *lock(&self.shared.position);
        let mut files = VecDeque::new();
        if let Some(durable_segment) = position.segment {
            for segment in &self.segments {
                if segment.first_seq > durable_segment {
                    break;
                }
                if segment.max_epoch < from_epoch {
                    continue;
                }
                let limit = if segment.first_seq == durable_segment {
                    position.len
                } else {
                    segment.bytes
                };
                files.push_back((segment_path(&self.dir, segment.first_seq), limit));
            }
        }
        Ok(JournalReader {
            files,
            current: None,
            from_epoch,
            body: Vec::new(),
            done: false,
        })
    }

    /// Buffers one record (not durable until a [`Journal::sync`] after it completes); closes
    /// the last segment first if the record would take it past `segment_bytes`. An encode into
    /// memory, no syscall. `record.seq` must be at least [`Journal::next_seq`].
    pub fn append<'a>(&mut self, record: impl Into<JournalEntry<'a>>) -> Result<(), JournalError> {
        let record = record.into();
        self.check()?;
        if record.seq < self.next_seq {
            return Err(JournalError::SeqOrder {
                seq: record.seq,
                next: self.next_seq,
            });
        }
        let device = record.device_id.map(str::as_bytes);
        let device_len = device.map_or(0, <[u8]>::len);
        let body_len = FIXED_BYTES + device_len + record.payload.len();
        if body_len > u32::MAX as usize {
            return Err(JournalError::TooLarge { bytes: body_len });
        }
        let frame_len = (HEADER_BYTES + body_len) as u64;
        let roll = self
            .segments
            .back()
            .is_none_or(|last| last.bytes + frame_len > self.segment_bytes);
        if roll {
            self.roll(record.seq, record.epoch);
        }

        let buffer = &mut self.buffer;
        buffer.reserve(frame_len as usize);
        let start = buffer.len();
        buffer.extend_from_slice(&(body_len as u32).to_le_bytes());
        buffer.extend_from_slice(&[0; 8]);
        buffer.extend_from_slice(&record.seq.to_le_bytes());
        buffer.extend_from_slice(&record.epoch.to_le_bytes());
        buffer.extend_from_slice(&record.received_at_ms.to_le_bytes());
        match device {
            // body_len <= u32::MAX, so device_len < u32::MAX = NO_DEVICE.
            Some(device) => {
                buffer.extend_from_slice(&(device_len as u32).to_le_bytes());
                buffer.extend_from_slice(device);
            }
            None => buffer.extend_from_slice(&NO_DEVICE.to_le_bytes()),
        }
        buffer.extend_from_slice(record.payload);
        let checksum = xxh3_64_with_seed(&buffer[start + HEADER_BYTES..], body_len as u64);
        buffer[start + 4..start + HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());

        let last = self.segments.back_mut().expect("a segment after the roll");
        last.bytes += frame_len;
        last.max_epoch = last.max_epoch.max(record.epoch);
        self.buffer_records += 1;
        self.total_bytes += frame_len;
        self.appended_bytes += frame_len;
        self.next_seq = record.seq + 1;
        self.last_epoch = Some(record.epoch);
        Ok(())
    }

    /// Hands everything appended so far to the journal thread, which writes and fdatasyncs it
    /// (grouped with other hand-offs that queue while it syncs); returns at once. When that is
    /// done the durable watermark becomes at least the seq + 1 of the last record appended
    /// before this call. A closed segment is fsynced before the next one is created, so it is
    /// durable before anything after it counts as durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.check()?;
        if self.buffer.is_empty() && self.closed.is_empty() {
            return Ok(());
        }
        let mut chunks = mem::take(&mut self.closed);
        if !self.buffer.is_empty() {
            let segment = self.segments.back().expect("a segment with frames");
            chunks.push(Chunk {
                segment: segment.first_seq,
                frames: self.take_buffer(),
                records: mem::take(&mut self.buffer_records),
            });
        }
        let command = Command::Write {
            chunks,
            watermark: self.next_seq,
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(command).is_ok());
        metrics::gauge!("lienwatch_journal_bytes").set(self.total_bytes as f64);
        if sent { Ok(()) } else { Err(self.failed()) }
    }

    /// The durable watermark: every record with a seq below the value is on disk. Await
    /// `changed()` (cancel-safe) to learn of progress; it returns an error once the journal
    /// failed or closed.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Deletes the closed, durable segments whose records all have an epoch below `epoch`
    /// (call after a checkpoint at `epoch` is complete); returns their bytes. Never deletes the
    /// last segment (the one being written). The files are unlinked on the journal thread
    /// after the writes handed to it before this call.
    pub fn prune_before(&mut self, epoch: u64) -> Result<u64, JournalError> {
        self.check()?;
        let Some(durable_segment) = lock(&self.shared.position).segment else {
            return Ok(0);
        };
        let last = self.segments.back().map(|s| s.first_seq);
        let mut freed = 0;
        let mut paths = Vec::new();
        self.segments.retain(|segment| {
            let prune = Some(segment.first_seq) != last
                && segment.first_seq < durable_segment
                && segment.max_epoch < epoch;
            if prune {
                freed += segment.bytes;
                paths.push(segment_path(&self.dir, segment.first_seq));
            }
            !prune
        });
        if paths.is_empty() {
            return Ok(0);
        }
        self.total_bytes -= freed;
        metrics::gauge!("lienwatch_journal_bytes").set(self.total_bytes as f64);
        let sent = self.tx.as_ref().map(|tx| tx.send(Command::Delete(paths)));
        match sent {
            Some(Ok(())) => Ok(freed),
            _ => Err(self.failed()),
        }
    }

    /// Bytes of the journal's segments, including records not yet durable.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes appended but not yet durable.
    pub fn pending_bytes(&self) -> u64 {
        self.appended_bytes
            .saturating_sub(self.shared.durable_bytes.load(Ordering::Acquire))
    }

    /// Syncs everything appended, waits for the journal thread to finish and reports a failure.
    /// Dropping the journal does the same, silently.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.shutdown()
    }

    /// Final sync, stop and join the thread.
    fn shutdown(&mut self) -> Result<(), JournalError> {
        if self.tx.is_none() {
            return Ok(());
        }
        let synced = self.sync();
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            fail(&self.shared, "the journal thread panicked".into());
        }
        synced?;
        self.check()
    }

    /// Starts a segment for a record `seq` of `epoch`; the frames of the last one wait in
    /// `closed` for the next hand-off.
    fn roll(&mut self, seq: u64, epoch: u64) {
        if !self.buffer.is_empty() {
            let segment = self.segments.back().expect("a segment with frames");
            let chunk = Chunk {
                segment: segment.first_seq,
                frames: self.take_buffer(),
                records: mem::take(&mut self.buffer_records),
            };
            self.closed.push(chunk);
        }
        self.segments.push_back(Segment {
            first_seq: seq,
            max_epoch: epoch,
            bytes: 0,
        });
    }

    /// The append buffer, replaced by a spent one or a fresh one.
    fn take_buffer(&mut self) -> Vec<u8> {
        let spare = lock(&self.shared.spare)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES));
        mem::replace(&mut self.buffer, spare)
    }

    /// [`JournalError::Failed`] once the thread failed.
    fn check(&self) -> Result<(), JournalError> {
        if self.shared.failed.load(Ordering::Acquire) {
            Err(self.failed())
        } else {
            Ok(())
        }
    }

    /// The failure, or that the thread is gone.
    fn failed(&self) -> JournalError {
        let message = lock(&self.shared.failure)
            .clone()
            .unwrap_or_else(|| "the journal is closed".into());
        JournalError::Failed {
            durable: *self.durable.borrow(),
            message,
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(dir = %self.dir.display(), error = %e, "journal: close failed");
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .field("durable", &*self.durable.borrow())
            .finish_non_exhaustive()
    }
}

/// Records of a [`Journal::read_from_epoch`], read lazily segment by segment.
#[derive(Debug)]
pub struct JournalReader {
    /// Segments still to read, with the bytes to read of each.
    files: VecDeque<(PathBuf, u64)>,
    /// The segment being read.
    current: Option<FrameReader>,
    /// Records below this epoch are skipped.
    from_epoch: u64,
    /// Body buffer, reused across skipped records.
    body: Vec<u8>,
    /// An error ended the iteration.
    done: bool,
}

impl Iterator for JournalReader {
    type Item = Result<JournalRecord, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let reader = match &mut self.current {
                Some(reader) => reader,
                None => {
                    let (path, limit) = self.files.pop_front()?;
                    match FrameReader::open(path, Some(limit)) {
                        Ok(reader) => self.current.insert(reader),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
            };
            match reader.next_frame(&mut self.body) {
                Ok(false) => self.current = None,
                Ok(true) => {
                    let (_, epoch) = seq_epoch(&self.body);
                    if epoch >= self.from_epoch {
                        let offset = reader.frame_offset;
                        let record = decode(mem::take(&mut self.body))
                            .map_err(|reason| reader.corrupt(offset, reason));
                        self.done = record.is_err();
                        return Some(record);
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// What [`scan`] found.
struct Scan {
    /// The segments.
    segments: VecDeque<Segment>,
    /// The last segment, open for appending, with its first seq and length.
    open: Option<OpenSegment>,
    /// The next seq.
    next_seq: u64,
    /// The last record's epoch.
    last_epoch: Option<u64>,
}

/// Reads every segment of `dir` in order, checking frames and seq order; truncates a bad tail
/// of the last segment (deleting it if nothing valid is left) and fsyncs it.
fn scan(dir: &Path) -> Result<Scan, JournalError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            names.push(first_seq);
        }
    }
    names.sort_unstable();

    let mut segments = VecDeque::with_capacity(names.len());
    let mut last_seq: Option<u64> = None;
    let mut last_epoch = None;
    let mut next_seq = 0;
    let mut body = Vec::new();
    for (i, &first_seq) in names.iter().enumerate() {
        let is_last = i + 1 == names.len();
        let path = segment_path(dir, first_seq);
        if last_seq.is_some_and(|last| first_seq <= last) {
            return Err(corrupt(&path, 0, "segment overlaps the previous one"));
        }
        let mut reader = FrameReader::open(path.clone(), None)?;
        let file_len = reader.limit;
        let mut segment = Segment {
            first_seq,
            max_epoch: 0,
            bytes: 0,
        };
        let mut records = 0u64;
        let torn = loop {
            match reader.next_frame(&mut body) {
                Ok(false) => break None,
                Ok(true) => {
                    let (seq, epoch) = seq_epoch(&body);
                    let in_order = if records == 0 {
                        seq == first_seq
                    } else {
                        last_seq.is_some_and(|last| seq > last)
                    };
                    if !in_order {
                        return Err(corrupt(
                            &path,
                            reader.frame_offset,
                            "record out of seq order",
                        ));
                    }
                    records += 1;
                    last_seq = Some(seq);
                    last_epoch = Some(epoch);
                    segment.max_epoch = segment.max_epoch.max(epoch);
                    segment.bytes = reader.offset;
                }
                Err(JournalError::Corrupt { offset, reason, .. }) if is_last => {
                    break Some((offset, reason));
                }
                Err(e) => return Err(e),
            }
        };
        drop(reader);
        if records == 0 && !is_last {
            return Err(corrupt(&path, 0, "empty segment before the last one"));
        }
        if let Some((offset, reason)) = torn {
            tracing::warn!(
                file = %path.display(),
                offset,
                dropped_bytes = file_len - offset,
                reason,
                "journal: truncating a torn tail"
            );
        }
        if records == 0 {
            // Only the last segment can be empty (created, then a crash): remove it; the seq
            // it was named after stays taken.
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            sync_dir(dir)?;
            next_seq = first_seq;
            continue;
        }
        if torn.is_some() {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(segment.bytes))
                .map_err(io_error("truncate", &path))?;
        }
        segments.push_back(segment);
    }
    if let Some(last) = last_seq {
        next_seq = next_seq.max(last + 1);
    }
    // The last segment takes the appends. Make it durable: a process that crashed before its
    // fsync may have left it in the page cache only (and a truncation needs syncing too).
    let open = match segments.back() {
        Some(last) => {
            let path = segment_path(dir, last.first_seq);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            file.sync_data().map_err(io_error("fsync", &path))?;
            Some(OpenSegment {
                first_seq: last.first_seq,
                path,
                file,
                len: last.bytes,
            })
        }
        None => None,
    };
    Ok(Scan {
        segments,
        open,
        next_seq,
        last_epoch,
    })
}

/// Sequential frame reader of one segment, up to `limit` bytes.
#[derive(Debug)]
struct FrameReader {
    /// The segment file.
    path: PathBuf,
    /// Its reader.
    reader: BufReader<File>,
    /// Offset of the next frame.
    offset: u64,
    /// Offset of the frame last read.
    frame_offset: u64,
    /// Bytes to read.
    limit: u64,
}

impl FrameReader {
    /// Opens `path` to read up to `limit` bytes (`None`: the whole file).
    fn open(path: PathBuf, limit: Option<u64>) -> Result<Self, JournalError> {
        let file = File::open(&path).map_err(io_error("open", &path))?;
        let limit = match limit {
            Some(limit) => limit,
            None => file.metadata().map_err(io_error("stat", &path))?.len(),
        };
        Ok(Self {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES.min(limit as usize).max(64), file),
            path,
            offset: 0,
            frame_offset: 0,
            limit,
        })
    }

    /// Reads the next frame's checked body into `body`: `false` at the limit, a
    /// [`JournalError::Corrupt`] for a partial, mis-sized or mis-summed frame.
    fn next_frame(&mut self, body: &mut Vec<u8>) -> Result<bool, JournalError> {
        let offset = self.offset;
        self.frame_offset = offset;
        let remaining = self.limit - offset;
        if remaining == 0 {
            return Ok(false);
        }
        if remaining < HEADER_BYTES as u64 {
            return Err(self.corrupt(offset, "partial frame header"));
        }
        let mut header = [0; HEADER_BYTES];
        self.read(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let checksum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        if (len as usize) < FIXED_BYTES {
            return Err(self.corrupt(offset, "frame length too small"));
        }
        if u64::from(len) > remaining - HEADER_BYTES as u64 {
            return Err(self.corrupt(offset, "frame runs past the end of the segment"));
        }
        body.clear();
        body.resize(len as usize, 0);
        self.read(body)?;
        if xxh3_64_with_seed(body, u64::from(len)) != checksum {
            return Err(self.corrupt(offset, "checksum mismatch"));
        }
        let device_len = u32::from_le_bytes(body[24..28].try_into().expect("4 bytes"));
        if device_len != NO_DEVICE && device_len as usize > body.len() - FIXED_BYTES {
            return Err(self.corrupt(offset, "device id runs past the frame"));
        }
        self.offset = offset + HEADER_BYTES as u64 + u64::from(len);
        Ok(true)
    }

    /// Fills `buf`; a short file (shorter than the limit) is a corrupt frame.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), JournalError> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(self.frame_offset, "segment shorter than expected"))
            }
            Err(e) => Err(io_error("read", &self.path)(e)),
        }
    }

    /// A corrupt frame at `offset` of this segment.
    fn corrupt(&self, offset: u64, reason: &'static str) -> JournalError {
        corrupt(&self.path, offset, reason)
    }
}

/// seq and epoch of a checked body.
fn seq_epoch(body: &[u8]) -> (u64, u64) {
    let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let epoch = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    (seq, epoch)
}

/// The record of a checked body; the payload shares the body's allocation.
fn decode(body: Vec<u8>) -> Result<JournalRecord, &'static str> {
    let (seq, epoch) = seq_epoch(&body);
    let received_at_ms = i64::from_le_bytes(body[16..24].try_into().expect("8 bytes"));
    let device_len = u32::from_le_bytes(body[24..28].try_into().expect("4 bytes"));
    let (device_id, payload_start) = if device_len == NO_DEVICE {
        (None, FIXED_BYTES)
    } else {
        let end = FIXED_BYTES + device_len as usize;
        let device = std::str::from_utf8(&body[FIXED_BYTES..end])
            .map_err(|_| "device id is not UTF-8")?
            .to_owned();
        (Some(device), end)
    };
    let payload = Bytes::from(body).slice(payload_start..);
    Ok(JournalRecord {
        seq,
        epoch,
        received_at_ms,
        device_id,
        payload,
    })
}

/// A segment file open for appending.
struct OpenSegment {
    /// Its first seq.
    first_seq: u64,
    /// Its path.
    path: PathBuf,
    /// The file, in append mode.
    file: File,
    /// Bytes written.
    len: u64,
}

/// A write or fsync failure of the journal thread.
struct Failure {
    /// What was being done.
    action: &'static str,
    /// The file.
    path: PathBuf,
    /// The error.
    error: io::Error,
}

/// The journal thread's state: writes chunks, fsyncs, publishes the watermark.
struct Writer {
    /// The journal directory.
    dir: PathBuf,
    /// The segment being written.
    current: Option<OpenSegment>,
    /// `current` has writes not yet fsynced.
    dirty: bool,
    /// Shared with the journal.
    shared: Arc<Shared>,
    /// `lienwatch_journal_fsync_seconds`.
    fsync_seconds: metrics::Histogram,
}

impl Writer {
    /// Serves commands until the journal is dropped or a write fails. Every command queued
    /// while the previous group was being written and fsynced joins the next group.
    fn run(mut self, rx: &Receiver<Command>, watermark: &watch::Sender<u64>) {
        let records_total = metrics::counter!("lienwatch_journal_records_total");
        while let Ok(first) = rx.recv() {
            let mut group_watermark = None;
            let mut bytes = 0;
            let mut records = 0;
            let mut spent = Vec::new();
            let mut deletes = Vec::new();
            let mut result = Ok(());
            for command in std::iter::once(first).chain(rx.try_iter()) {
                match command {
                    Command::Write {
                        chunks,
                        watermark: w,
                    } => {
                        for chunk in chunks {
                            if result.is_ok() {
                                result = self.write(&chunk);
                                bytes += chunk.frames.len() as u64;
                                records += chunk.records;
                            }
                            spent.push(chunk.frames);
                        }
                        group_watermark = Some(w);
                    }
                    Command::Delete(paths) => deletes.extend(paths),
                }
            }
            if result.is_ok() && self.dirty {
                result = self.sync();
            }
            if let Err(failure) = result {
                let message = format!(
                    "cannot {} {}: {}",
                    failure.action,
                    failure.path.display(),
                    failure.error
                );
                tracing::error!(
                    file = %failure.path.display(),
                    error = %failure.error,
                    "journal: {} failed; no record after the durable watermark will become durable",
                    failure.action,
                );
                fail(&self.shared, message);
                return;
            }
            if let Some(current) = &self.current {
                *lock(&self.shared.position) = Position {
                    segment: Some(current.first_seq),
                    len: current.len,
                };
            }
            self.shared
                .durable_bytes
                .fetch_add(bytes, Ordering::Release);
            records_total.increment(records);
            if let Some(w) = group_watermark {
                watermark.send_if_modified(|value| {
                    let advance = w > *value;
                    *value = (*value).max(w);
                    advance
                });
            }
            self.recycle(spent);
            for path in deletes {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "journal: cannot delete a pruned segment");
                }
            }
        }
    }

    /// Writes one chunk, first closing (fsyncing) the current segment and creating the
    /// chunk's one if they differ.
    fn write(&mut self, chunk: &Chunk) -> Result<(), Failure> {
        if self.current.as_ref().map(|c| c.first_seq) != Some(chunk.segment) {
            if self.dirty {
                self.sync()?;
            }
            let path = segment_path(&self.dir, chunk.segment);
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(|error| Failure {
                    action: "create",
                    path: path.clone(),
                    error,
                })?;
            // The new name must be durable before the records in it count as durable.
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|error| Failure {
                    action: "fsync",
                    path: self.dir.clone(),
                    error,
                })?;
            self.current = Some(OpenSegment {
                first_seq: chunk.segment,
                path,
                file,
                len: 0,
            });
        }
        let current = self.current.as_mut().expect("a current segment");
        current
            .file
            .write_all(&chunk.frames)
            .map_err(|error| Failure {
                action: "write",
                path: current.path.clone(),
                error,
            })?;
        current.len += chunk.frames.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// fdatasyncs the current segment.
    fn sync(&mut self) -> Result<(), Failure> {
        let current = self.current.as_ref().expect("a current segment");
        let started = Instant::now();
        #[cfg(test)]
        if self.shared.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Err(Failure {
                action: "fsync",
                path: current.path.clone(),
                error: io::Error::other("injected failure"),
            });
        }
        current.file.sync_data().map_err(|error| Failure {
            action: "fsync",
            path: current.path.clone(),
            error,
        })?;
        self.fsync_seconds.record(started.elapsed().as_secs_f64());
        self.dirty = false;
        Ok(())
    }

    /// Hands spent buffers back to the journal for reuse.
    fn recycle(&self, spent: Vec<Vec<u8>>) {
        let mut spare = lock(&self.shared.spare);
        for mut buffer in spent {
            if spare.len() >= SPARE_BUFFERS {
                break;
            }
            if buffer.capacity() <= SPARE_CAPACITY {
                buffer.clear();
                spare.push(buffer);
            }
        }
    }
}

/// Marks the journal failed with `message` (the first failure wins).
fn fail(shared: &Shared, message: String) {
    lock(&shared.failure).get_or_insert(message);
    shared.failed.store(true, Ordering::Release);
}

/// fsyncs a directory, so names created or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

/// The path of the segment starting at `first_seq`.
fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:0NAME_DIGITS$}.{SEGMENT_EXTENSION}"))
}

/// The first seq of a segment file name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Maps an I/O error on `path` to [`JournalError::Io`].
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io {
        action,
        path,
        source,
    }
}

/// A [`JournalError::Corrupt`].
fn corrupt(path: &Path, offset: u64, reason: &'static str) -> JournalError {
    JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical section is a
/// plain store).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Record `seq` of `epoch` with a payload of `len` bytes; every third one has no device.
    fn record(seq: u64, epoch: u64, len: usize) -> JournalRecord {
        JournalRecord {
            seq,
            epoch,
            received_at_ms: 1_790_000_000_000 + seq as i64,
            device_id: (!seq.is_multiple_of(3)).then(|| format!("dev-{seq}")),
            payload: Bytes::from(
                (0..len)
                    .map(|i| (seq as usize + i) as u8)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// Records `0..n` with `epoch = seq / 10` and payloads of 0 to 96 bytes.
    fn records(n: u64) -> Vec<JournalRecord> {
        (0..n)
            .map(|seq| record(seq, seq / 10, (seq as usize * 37) % 97))
            .collect()
    }

    fn open(dir: &Path, segment_bytes: u64) -> Journal {
        Journal::open(JournalConfig {
            dir: dir.to_path_buf(),
            segment_bytes,
        })
        .expect("open")
    }

    /// Waits up to 5 s for the watermark to reach `target`.
    fn wait_durable(journal: &Journal, target: u64) {
        let rx = journal.durable();
        for _ in 0..5000 {
            if *rx.borrow() >= target {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("durable watermark {} never reached {target}", *rx.borrow());
    }

    fn read_all(journal: &Journal, from_epoch: u64) -> Vec<JournalRecord> {
        journal
            .read_from_epoch(from_epoch)
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("records")
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXTENSION))
            .collect();
        files.sort();
        files
    }

    fn frame_len(record: &JournalRecord) -> u64 {
        (HEADER_BYTES
            + FIXED_BYTES
            + record.device_id.as_ref().map_or(0, String::len)
            + record.payload.len()) as u64
    }

    /// Writes `records` (syncing every 7) into a fresh journal and closes it.
    fn write_closed(dir: &Path, segment_bytes: u64, records: &[JournalRecord]) {
        let mut journal = open(dir, segment_bytes);
        for (i, r) in records.iter().enumerate() {
            journal.append(r).unwrap();
            if i.is_multiple_of(7) && i > 0 {
                journal.sync().unwrap();
            }
        }
        journal.close().unwrap();
    }

    #[test]
    fn round_trip_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(300);
        let mut journal = open(dir.path(), 1000);
        for (i, r) in all.iter().enumerate() {
            journal.append(r).unwrap();
            if i.is_multiple_of(7) && i > 0 {
                journal.sync().unwrap();
            }
        }
        journal.sync().unwrap();
        wait_durable(&journal, 300);
        assert_eq!(journal.pending_bytes(), 0);
        assert_eq!(read_all(&journal, 0), all);
        let total: u64 = all.iter().map(frame_len).sum();
        assert_eq!(journal.bytes(), total);
        journal.close().unwrap();

        let files = segment_files(dir.path());
        assert!(files.len() > 10, "{} segments", files.len());
        let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
        assert_eq!(on_disk, total);
        for file in &files {
            assert!(fs::metadata(file).unwrap().len() <= 1000);
        }
        // Every segment is named after its first record.
        let firsts: Vec<u64> = files
            .iter()
            .map(|f| parse_segment_name(f.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        assert_eq!(firsts[0], 0);

        let journal = open(dir.path(), 1000);
        assert_eq!(journal.bytes(), total);
        assert_eq!(read_all(&journal, 0), all);
        let mut reader = journal.read_from_epoch(0).unwrap();
        for first in firsts {
            let mut r = reader.next().unwrap().unwrap();
            while r.seq < first {
                r = reader.next().unwrap().unwrap();
            }
            assert_eq!(r.seq, first);
        }
    }

    #[test]
    fn reopen_continues_seq() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(40);
        {
            let journal = open(dir.path(), 1 << 20);
            assert_eq!(journal.next_seq(), 0);
            assert_eq!(journal.last_epoch(), None);
            assert_eq!(*journal.durable().borrow(), 0);
        }
        write_closed(dir.path(), 1 << 20, &all[..20]);

        let mut journal = open(dir.path(), 1 << 20);
        assert_eq!(journal.next_seq(), 20);
        assert_eq!(journal.last_epoch(), Some(1));
        assert_eq!(*journal.durable().borrow(), 20);
        let err = journal.append(&record(19, 5, 3)).unwrap_err();
        assert!(
            matches!(err, JournalError::SeqOrder { seq: 19, next: 20 }),
            "{err}"
        );
        for r in &all[20..] {
            journal.append(r).unwrap();
        }
        // Dropping syncs what was appended.
        drop(journal);

        let journal = open(dir.path(), 1 << 20);
        assert_eq!(journal.next_seq(), 40);
        assert_eq!(journal.last_epoch(), Some(3));
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "appends continue the last segment"
        );
        assert_eq!(read_all(&journal, 0), all);
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/journal");
        write_closed(&nested, 1 << 20, &records(3));
        let journal = open(&nested, 1 << 20);
        assert_eq!(read_all(&journal, 0), records(3));
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _journal = open(dir.path(), 1 << 20);
        let err = Journal::open(JournalConfig::new(dir.path())).unwrap_err();
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_torn_tail_is_truncated() {
        let all = records(30);
        // A partial frame after the last record: a crash in the middle of a write.
        let mut partial = Vec::new();
        {
            let dir = tempfile::tempdir().unwrap();
            let mut journal = open(dir.path(), 1 << 20);
            journal.append(&record(30, 3, 50)).unwrap();
            journal.close().unwrap();
            partial.extend(fs::read(&segment_files(dir.path())[0]).unwrap());
        }
        let tails: [(&str, Vec<u8>); 4] = [
            ("partial header", partial[..7].to_vec()),
            ("partial body", partial[..partial.len() - 5].to_vec()),
            ("zeros", vec![0; 4096]),
            ("huge length", vec![0xff; 64]),
        ];
        for (what, tail) in tails {
            let dir = tempfile::tempdir().unwrap();
            write_closed(dir.path(), 700, &all);
            let files = segment_files(dir.path());
            let last = files.last().unwrap();
            let len = fs::metadata(last).unwrap().len();
            let mut contents = fs::read(last).unwrap();
            contents.extend_from_slice(&tail);
            fs::write(last, contents).unwrap();

            let mut journal = open(dir.path(), 700);
            assert_eq!(journal.next_seq(), 30, "{what}");
            assert_eq!(read_all(&journal, 0), all, "{what}");
            assert_eq!(fs::metadata(last).unwrap().len(), len, "{what}");
            journal.append(&record(30, 3, 50)).unwrap();
            journal.close().unwrap();
            let journal = open(dir.path(), 700);
            assert_eq!(read_all(&journal, 0).len(), 31, "{what}");
        }
    }

    #[test]
    fn a_damaged_last_record_is_truncated_and_earlier_ones_kept() {
        let all = records(30);
        // Flip a byte of the last record's payload, of its length, of its checksum.
        for from_end in [1, frame_len(&all[29]), frame_len(&all[29]) - 5] {
            let dir = tempfile::tempdir().unwrap();
            write_closed(dir.path(), 1 << 20, &all);
            let files = segment_files(dir.path());
            let last = files.last().unwrap();
            let mut contents = fs::read(last).unwrap();
            let at = contents.len() - from_end as usize;
            contents[at] ^= 0x40;
            fs::write(last, &contents).unwrap();

            let journal = open(dir.path(), 1 << 20);
            assert_eq!(journal.next_seq(), 29, "byte {from_end} from the end");
            assert_eq!(journal.last_epoch(), Some(2));
            assert_eq!(read_all(&journal, 0), all[..29]);
            let truncated = contents.len() as u64 - frame_len(&all[29]);
            assert_eq!(fs::metadata(last).unwrap().len(), truncated);
        }
    }

    #[test]
    fn a_segment_left_empty_by_truncation_is_removed_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(30);
        write_closed(dir.path(), 700, &all);
        // A crash right after the next segment was created, and one mid-way through its first
        // record.
        fs::write(segment_path(dir.path(), 30), [1, 2, 3]).unwrap();
        let mut journal = open(dir.path(), 700);
        assert!(!segment_path(dir.path(), 30).exists());
        assert_eq!(journal.next_seq(), 30);
        journal.append(&record(30, 3, 10)).unwrap();
        journal.close().unwrap();
        let journal = open(dir.path(), 700);
        assert_eq!(journal.next_seq(), 31);
        assert_eq!(read_all(&journal, 0)[..30], all);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let all = records(100);
        let dir = tempfile::tempdir().unwrap();
        write_closed(dir.path(), 700, &all);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3);
        let second = &files[1];
        let pristine = fs::read(second).unwrap();
        let first_seq = parse_segment_name(second.file_name().unwrap().to_str().unwrap()).unwrap();
        // Offset of the segment's third frame.
        let offset = frame_len(&all[first_seq as usize]) + frame_len(&all[first_seq as usize + 1]);

        // A flipped byte inside the third record.
        let mut damaged = pristine.clone();
        damaged[offset as usize + HEADER_BYTES + 3] ^= 1;
        fs::write(second, &damaged).unwrap();
        let err = Journal::open(JournalConfig::new(dir.path())).unwrap_err();
        match &err {
            JournalError::Corrupt {
                path,
                offset: at,
                reason,
            } => {
                assert_eq!(path, second);
                assert_eq!(*at, offset);
                assert_eq!(*reason, "checksum mismatch");
            }
            other => panic!("{other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(second.to_str().unwrap()) && message.contains(&offset.to_string()),
            "{message}"
        );

        // A torn tail of a segment that is not the last one.
        fs::write(second, &pristine[..pristine.len() - 3]).unwrap();
        let err = Journal::open(JournalConfig::new(dir.path())).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { path, .. } if path == second),
            "{err}"
        );

        // Nothing was truncated or removed.
        assert_eq!(fs::read(second).unwrap().len(), pristine.len() - 3);
        assert_eq!(segment_files(dir.path()), files);
        fs::write(second, &pristine).unwrap();
        let journal = open(dir.path(), 700);
        assert_eq!(read_all(&journal, 0), all);
    }

    #[test]
    fn records_out_of_seq_order_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_closed(dir.path(), 1 << 20, &records(10));
        // A segment named 5 overlaps the one holding 0..10.
        let mut other = Vec::new();
        {
            let scratch = tempfile::tempdir().unwrap();
            write_closed(scratch.path(), 1 << 20, &[record(5, 0, 4)]);
            other.extend(fs::read(segment_path(scratch.path(), 5)).unwrap());
        }
        fs::write(segment_path(dir.path(), 5), &other).unwrap();
        let err = Journal::open(JournalConfig::new(dir.path())).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        // The same record in a file named after another seq.
        fs::remove_file(segment_path(dir.path(), 5)).unwrap();
        fs::write(segment_path(dir.path(), 50), &other).unwrap();
        let err = Journal::open(JournalConfig::new(dir.path())).unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    reason: "record out of seq order",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn read_from_epoch_filters() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(100);
        write_closed(dir.path(), 500, &all);
        let mut journal = open(dir.path(), 500);
        assert_eq!(read_all(&journal, 0), all);
        assert_eq!(read_all(&journal, 5), all[50..]);
        assert_eq!(read_all(&journal, 9), all[90..]);
        assert!(read_all(&journal, 10).is_empty());

        // A later run appends larger epochs; records not yet durable are not read.
        let later: Vec<_> = (100..120)
            .map(|seq| record(seq, 1000 + seq / 10, 20))
            .collect();
        for r in &later {
            journal.append(r).unwrap();
        }
        assert!(read_all(&journal, 1000).is_empty());
        journal.sync().unwrap();
        wait_durable(&journal, 120);
        assert_eq!(read_all(&journal, 1000), later);
        assert_eq!(read_all(&journal, 1011), later[10..]);
        assert_eq!(read_all(&journal, 8).len(), 40);
    }

    #[test]
    fn prune_before_deletes_only_fully_older_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(200);
        let mut journal = open(dir.path(), 600);
        for r in &all {
            journal.append(r).unwrap();
        }
        journal.sync().unwrap();
        wait_durable(&journal, 200);
        let before = journal.bytes();
        let segments_before: Vec<Segment> = journal.segments.iter().copied().collect();

        let freed = journal.prune_before(8).unwrap();
        assert!(freed > 0);
        assert_eq!(journal.bytes(), before - freed);
        let kept = read_all(&journal, 0);
        // Every record of epoch >= 8 is kept; only records of epoch < 8 went.
        assert!(
            all.iter()
                .filter(|r| r.epoch >= 8)
                .all(|r| kept.contains(r))
        );
        assert!(
            all.iter()
                .filter(|r| !kept.contains(r))
                .all(|r| r.epoch < 8)
        );
        // Exactly the segments whose every epoch is below 8.
        let expected: u64 = segments_before
            .iter()
            .filter(|s| s.max_epoch < 8)
            .map(|s| s.bytes)
            .sum();
        assert_eq!(freed, expected);
        // The first kept record is a segment's first.
        assert!(segments_before.iter().any(|s| s.first_seq == kept[0].seq));
        assert!(kept[0].epoch <= 8);

        // Everything is old: all but the last segment go.
        let last = *journal.segments.back().unwrap();
        journal.prune_before(u64::MAX).unwrap();
        assert_eq!(journal.segments.len(), 1);
        assert_eq!(journal.bytes(), last.bytes);

        // Closed segments not yet durable are not pruned.
        let more: Vec<_> = (200..300).map(|seq| record(seq, 30, 60)).collect();
        for r in &more {
            journal.append(r).unwrap();
        }
        let segments = journal.segments.len();
        assert!(segments > 2);
        assert_eq!(journal.prune_before(u64::MAX).unwrap(), 0);
        assert_eq!(journal.segments.len(), segments);
        journal.close().unwrap();

        let files = segment_files(dir.path());
        assert_eq!(files.len(), segments);
        assert_eq!(files[0], segment_path(dir.path(), last.first_seq));
        let journal = open(dir.path(), 600);
        let left = read_all(&journal, 0);
        assert_eq!(left.first().unwrap().seq, last.first_seq);
        assert_eq!(left[left.len() - 100..], more);
    }

    #[test]
    fn durable_watermark_advances_only_after_sync_and_only_over_earlier_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), 1 << 20);
        let rx = journal.durable();
        let all = records(6);
        for r in &all[..5] {
            journal.append(r).unwrap();
        }
        thread::sleep(Duration::from_millis(50));
        assert_eq!(*rx.borrow(), 0, "nothing is durable before a sync");
        let first_five: u64 = all[..5].iter().map(frame_len).sum();
        assert_eq!(journal.pending_bytes(), first_five);
        assert!(
            segment_files(dir.path()).is_empty(),
            "nothing is written before a sync"
        );

        journal.sync().unwrap();
        // Appended after the sync: not covered by it.
        journal.append(&all[5]).unwrap();
        wait_durable(&journal, 5);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(*rx.borrow(), 5);
        assert_eq!(journal.pending_bytes(), frame_len(&all[5]));
        let file = segment_path(dir.path(), 0);
        assert_eq!(fs::metadata(&file).unwrap().len(), first_five);
        assert_eq!(read_all(&journal, 0), all[..5]);

        journal.sync().unwrap();
        wait_durable(&journal, 6);
        assert_eq!(journal.pending_bytes(), 0);
        assert_eq!(read_all(&journal, 0), all);
        // A sync with nothing appended changes nothing.
        journal.sync().unwrap();
        thread::sleep(Duration::from_millis(20));
        assert_eq!(*rx.borrow(), 6);
    }

    #[test]
    fn a_failed_fsync_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = open(dir.path(), 1 << 20);
        let rx = journal.durable();
        let all = records(20);
        for r in &all[..10] {
            journal.append(r).unwrap();
        }
        journal.sync().unwrap();
        wait_durable(&journal, 10);

        journal.shared.fail_next_sync.store(true, Ordering::Release);
        journal.append(&all[10]).unwrap();
        journal.sync().unwrap();
        let mut failed = None;
        for r in &all[11..] {
            if let Err(e) = journal.append(r) {
                failed = Some(e);
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let err = failed.unwrap_or_else(|| journal.sync().unwrap_err());
        match &err {
            JournalError::Failed { durable, message } => {
                assert_eq!(*durable, 10);
                assert!(
                    message.contains("00000000000000000000.journal"),
                    "{message}"
                );
            }
            other => panic!("{other}"),
        }
        assert!(matches!(journal.sync(), Err(JournalError::Failed { .. })));
        assert!(matches!(
            journal.prune_before(1),
            Err(JournalError::Failed { .. })
        ));
        assert!(rx.has_changed().is_err(), "the watch is closed");
        assert_eq!(*rx.borrow(), 10);
        assert!(matches!(journal.close(), Err(JournalError::Failed { .. })));
    }

    /// Throughput of appends and the latency of a sync of 10 000 pending records of ~300 bytes.
    /// `cargo test --release -p connectors --lib journal::tests::bench -- --ignored --nocapture`
    /// (`LIENWATCH_JOURNAL_BENCH_DIR` picks the file system; the default is the temp dir).
    #[test]
    #[ignore = "measurement, not a test"]
    fn bench() {
        let base = std::env::var_os("LIENWATCH_JOURNAL_BENCH_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = tempfile::tempdir_in(base).unwrap();
        let mut journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
        let payload = Bytes::from(vec![b'x'; 280]);
        let make = |seq: u64| JournalRecord {
            seq,
            epoch: seq / 100_000,
            received_at_ms: 1_790_000_000_000 + seq as i64,
            device_id: Some(format!("dev-{:06}", seq % 1000)),
            payload: payload.clone(),
        };
        let wait = |journal: &Journal, target: u64| {
            let mut rx = journal.durable();
            futures::executor::block_on(rx.wait_for(|v| *v >= target)).unwrap();
        };

        // Appends only (records prepared outside the timing).
        let batch: Vec<_> = (0..1_000_000).map(make).collect();
        let started = Instant::now();
        for r in &batch {
            journal.append(r).unwrap();
        }
        let appending = started.elapsed();
        eprintln!(
            "append: {} records in {:?} = {:.1} M appends/s, {:.0} ns each",
            batch.len(),
            appending,
            batch.len() as f64 / appending.as_secs_f64() / 1e6,
            appending.as_nanos() as f64 / batch.len() as f64
        );
        let started = Instant::now();
        journal.sync().unwrap();
        wait(&journal, journal.next_seq());
        eprintln!(
            "sync of those {} MB: {:?}",
            journal.bytes() >> 20,
            started.elapsed()
        );

        // Sync latency: 10 000 pending records, hand-off to durable.
        let mut latencies = Vec::new();
        let mut handoffs = Vec::new();
        let mut appends = Vec::new();
        for _ in 0..50 {
            let first = journal.next_seq();
            let batch: Vec<_> = (first..first + 10_000).map(make).collect();
            let started = Instant::now();
            for r in &batch {
                journal.append(r).unwrap();
            }
            appends.push(started.elapsed());
            let started = Instant::now();
            journal.sync().unwrap();
            handoffs.push(started.elapsed());
            wait(&journal, first + 10_000);
            latencies.push(started.elapsed());
        }
        latencies.sort();
        handoffs.sort();
        appends.sort();
        eprintln!(
            "append into a reused buffer: median {:.0} ns per record (10 000 records in {:?})",
            appends[25].as_nanos() as f64 / 10_000.0,
            appends[25]
        );
        eprintln!(
            "sync of 10 000 records ({} KB): hand-off median {:?}, max {:?}; durable median {:?}, p90 {:?}, max {:?}",
            10_000 * frame_len(&make(0)) / 1000,
            handoffs[25],
            handoffs[49],
            latencies[25],
            latencies[45],
            latencies[49]
        );

        // Sustained: a sync every 2 000 records (~10 ms at 200 k msg/s), durable throughput.
        let first = journal.next_seq();
        let n = 1_000_000;
        let started = Instant::now();
        for seq in first..first + n {
            journal.append(&make(seq)).unwrap();
            if (seq + 1).is_multiple_of(2000) {
                journal.sync().unwrap();
            }
        }
        journal.sync().unwrap();
        wait(&journal, first + n);
        let elapsed = started.elapsed();
        eprintln!(
            "sustained: {n} records durable in {elapsed:?} = {:.0} k records/s ({:.0} MB/s)",
            n as f64 / elapsed.as_secs_f64() / 1e3,
            (n * frame_len(&make(0))) as f64 / elapsed.as_secs_f64() / 1e6
        );
        journal.close().unwrap();
    }
}

//! The records queue, the keeper thread, and the reads of what it kept (newest in memory, all
//! within the retention on disk).

use super::db::{self, StatRow};
use super::{wire, Filter};
use crate::config::records::RecordsConfig;
use crate::engine::ledger::RequestLog;
use crate::gateway::Gateway;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long the keeper lets records gather before it takes them: a busy gateway's batch is
/// about a thousand records, written as one row.
pub const LINGER: Duration = Duration::from_millis(50);
/// How often the keeper deletes what is past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The most bytes of records that may wait for the keeper (besides `records.queue` records).
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// A batch as kept in memory: its records in [`wire`]'s encoding, one after another.
struct Chunk {
    bytes: Box<[u8]>,
    count: usize,
}

struct Ring {
    chunks: VecDeque<Arc<Chunk>>,
    /// How many records the chunks hold.
    count: usize,
    /// How many are kept: the newest batches that hold at least this many.
    memory: usize,
}

/// What waits for the keeper: records, encoded one after another by the request threads, and
/// wishes to hear when everything before them is written. The keeper swaps `bytes` for its
/// emptied buffer, so neither side allocates once both have grown to a batch.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    count: usize,
    flushes: Vec<SyncSender<()>>,
    /// The [`Recorder`] is gone: the keeper writes what is left and ends.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Signalled when `pending` stops being empty.
    ready: Condvar,
}

/// The records queue and the ones kept.
///
/// The keeper thread and the file's connections start at first use, not in [`Recorder::start`]:
/// `-d` forks after startup, and neither a thread nor a SQLite connection survives a fork.
pub struct Recorder {
    enabled: bool,
    queue: Arc<Queue>,
    /// `records.queue`: the most records that may wait.
    cap: usize,
    kept: Arc<Mutex<Ring>>,
    dropped: prometheus::IntCounter,
    /// The records file, absolute (`-d` changes the working directory); `None`: memory only.
    path: Option<PathBuf>,
    /// The keeper, until its thread starts.
    idle: Mutex<Option<Keeper>>,
    /// The keeper has been taken from `idle`: the request path's check, without the lock.
    woken: AtomicBool,
    /// A reading connection to the records file, opened at the first read.
    reader: OnceLock<Result<Mutex<Connection>, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// What the keeper thread owns.
struct Keeper {
    queue: Arc<Queue>,
    kept: Arc<Mutex<Ring>>,
    path: Option<PathBuf>,
    cfg: RecordsConfig,
}

impl Recorder {
    /// Open the records file (when kept on disk) and get the keeper ready; `dropped` counts
    /// records the full queue refused.
    pub fn start(cfg: RecordsConfig, dropped: prometheus::IntCounter) -> std::io::Result<Recorder> {
        let queue = Arc::new(Queue::default());
        let kept = Arc::new(Mutex::new(Ring {
            chunks: VecDeque::new(),
            count: 0,
            memory: cfg.memory,
        }));
        let path = match (&cfg.sqlite, cfg.enabled) {
            (Some(p), true) => {
                let p = std::path::absolute(p)?;
                // Opened here once so that a file that cannot be opened stops the start.
                drop(db::open(&p).map_err(io)?);
                Some(p)
            }
            _ => None,
        };
        let keeper = Keeper {
            queue: queue.clone(),
            kept: kept.clone(),
            path: path.clone(),
            cfg: cfg.clone(),
        };
        Ok(Recorder {
            enabled: cfg.enabled,
            queue,
            cap: cfg.queue,
            kept,
            dropped,
            path,
            idle: Mutex::new(Some(keeper)),
            woken: AtomicBool::new(false),
            reader: OnceLock::new(),
        })
    }

    /// Start the keeper thread, once.
    fn wake(&self) {
        if self.woken.load(Ordering::Acquire) {
            return;
        }
        let Some(keeper) = lock(&self.idle).take() else {
            return;
        };
        self.woken.store(true, Ordering::Release);
        let started = std::thread::Builder::new()
            .name("detour-records".into())
            .spawn(move || keeper.run());
        if let Err(e) = started {
            tracing::error!(error = %e, "the request records thread did not start");
        }
    }

    /// The reading connection (`None`: memory only).
    fn db(&self) -> Result<Option<MutexGuard<'_, Connection>>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let conn = self
            .reader
            .get_or_init(|| db::open(path).map(Mutex::new).map_err(|e| e.to_string()));
        match conn {
            Ok(c) => Ok(Some(lock(c))),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether requests are recorded (`records.enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Queue the record of a finished request; never waits for the keeper. Encoded into the
    /// queue's buffer under its lock, which the keeper holds only to swap buffers. The keeper
    /// is woken when the queue stops being empty: once per batch, not per record.
    pub fn submit(&self, gw: &Gateway, log: &RequestLog, elapsed: Duration) {
        self.wake();
        let mut p = lock(&self.queue.pending);
        if p.count >= self.cap || p.bytes.len() >= MAX_QUEUED_BYTES {
            drop(p);
            self.dropped.inc();
            return;
        }
        let idle = p.count == 0 && p.flushes.is_empty();
        super::encode(&mut p.bytes, gw, log, elapsed);
        p.count += 1;
        drop(p);
        if idle {
            self.queue.ready.notify_one();
        }
    }

    /// Wait until every record queued so far is kept (written, when on disk), at most `wait`:
    /// a stopping process calls it last, so that the answers it gave are on record. False when
    /// the wait ran out.
    pub fn flush(&self, wait: Duration) -> bool {
        if !self.woken.load(Ordering::Acquire) {
            return true; // the keeper never started: nothing was queued
        }
        let (done, heard) = sync_channel(1);
        {
            let mut p = lock(&self.queue.pending);
            p.flushes.push(done);
        }
        self.queue.ready.notify_one();
        heard.recv_timeout(wait).is_ok()
    }

    /// The batches in memory, oldest first.
    fn chunks(&self) -> Vec<Arc<Chunk>> {
        lock(&self.kept).chunks.iter().cloned().collect()
    }

    /// The records in memory, newest first.
    fn in_memory(&self) -> impl Iterator<Item = super::Record> {
        let chunks = self.chunks();
        (0..chunks.len())
            .rev()
            .flat_map(move |i| wire::newest_first(&chunks[i].bytes).collect::<Vec<_>>())
    }

    /// The newest records `f` wants, newest first, as `(seq, JSON)`. Blocking (on disk).
    pub fn list(&self, f: &Filter) -> Result<Vec<(u64, String)>, String> {
        if let Some(conn) = self.db()? {
            return db::list(&conn, f).map_err(|e| e.to_string());
        }
        Ok(self
            .in_memory()
            .filter(|r| f.wants(r))
            .take(f.limit)
            .map(|r| (r.seq, serde_json::to_string(&r).unwrap_or_default()))
            .collect())
    }

    /// The newest record of request `id`, as JSON. Blocking (on disk).
    pub fn get(&self, id: &str) -> Result<Option<String>, String> {
        let needle = wire::needle(id);
        let found = self
            .chunks()
            .iter()
            .rev()
            .filter(|c| db::holds(&c.bytes, &needle))
            .find_map(|c| wire::newest_first(&c.bytes).find(|r| r.id == id));
        if let Some(r) = found {
            return Ok(Some(serde_json::to_string(&r).unwrap_or_default()));
        }
        match self.db()? {
            Some(conn) => db::get(&conn, id).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// Every request that ended at or after `since` (Unix ms). Blocking (on disk).
    pub fn window(&self, since: i64) -> Result<Vec<StatRow>, String> {
        if let Some(conn) = self.db()? {
            return db::window(&conn, since).map_err(|e| e.to_string());
        }
        Ok(self
            .in_memory()
            .filter(|r| r.at >= since)
            .map(StatRow::from)
            .collect())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        lock(&self.queue.pending).closed = true;
        self.queue.ready.notify_one();
    }
}

impl Keeper {
    /// Wait for records, let others gather for [`LINGER`] (a request thread wakes the keeper
    /// only when the queue stops being empty, so a busy gateway pays one wake-up per batch),
    /// then number them, write them to disk and only then into memory: a record that can be
    /// read by its id can be found by a listing too.
    fn run(self) {
        let mut disk = Disk {
            conn: self.path.as_deref().map(db::open),
            next: 1,
            pruned: None,
            complained: None,
        };
        let mut batch = Vec::new();
        while let Some((count, acks)) = self.gather(&mut batch) {
            if count > 0 {
                disk.write(&mut batch);
                self.keep(&batch, count);
                disk.prune(&self.cfg);
            }
            batch.clear();
            for done in acks {
                let _ = done.send(());
            }
        }
    }

    /// Wait until something is queued; when records are, let more gather for [`LINGER`] (a
    /// flush alone is answered at once). Swap the queued bytes into `batch` (emptied): how many
    /// records, and the flushes asked for among them. `None` once the recorder is gone and
    /// nothing is left.
    fn gather(&self, batch: &mut Vec<u8>) -> Option<(usize, Vec<SyncSender<()>>)> {
        let q = &self.queue;
        let mut p = lock(&q.pending);
        while p.count == 0 && p.flushes.is_empty() {
            if p.closed {
                return None;
            }
            p = q.ready.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        if p.count > 0 {
            drop(p);
            std::thread::sleep(LINGER);
            p = lock(&q.pending);
        }
        std::mem::swap(&mut p.bytes, batch);
        Some((std::mem::take(&mut p.count), std::mem::take(&mut p.flushes)))
    }

    /// Into memory, the oldest batches out while the newer ones hold `records.memory`.
    fn keep(&self, batch: &[u8], count: usize) {
        let chunk = Arc::new(Chunk {
            bytes: batch.into(),
            count,
        });
        let mut g = lock(&self.kept);
        g.count += count;
        g.chunks.push_back(chunk);
        while let Some(oldest) = g.chunks.front().map(|c| c.count) {
            if g.count - oldest < g.memory {
                break;
            }
            g.chunks.pop_front();
            g.count -= oldest;
        }
    }
}

/// The keeper's side of the records file: its connection (`None`: memory only), the number
/// after the last record when the file cannot be written, when it last pruned and complained.
struct Disk {
    conn: Option<rusqlite::Result<Connection>>,
    next: u64,
    pruned: Option<Instant>,
    complained: Option<Instant>,
}

impl Disk {
    /// Number the batch and write it: numbered after the newest in the file when written
    /// there (another process may share it, as during a graceful upgrade), else after the
    /// last one here.
    fn write(&mut self, batch: &mut [u8]) {
        let written = match &mut self.conn {
            None => Ok(None),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(c)) => db::write(c, batch).map(Some).map_err(|e| e.to_string()),
        };
        self.next = match written {
            Ok(Some(next)) => next,
            _ => wire::number(batch, self.next),
        };
        if let Err(e) = written {
            self.complain("request records were not written to disk", &e);
        }
    }

    /// Delete what is past the retention, once a [`PRUNE_EVERY`].
    fn prune(&mut self, cfg: &RecordsConfig) {
        let Some(Ok(conn)) = &mut self.conn else {
            return;
        };
        if self.pruned.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.pruned = Some(Instant::now());
        let now = crate::store::now_ms();
        if let Err(e) = db::prune(conn, cfg.retention_days, cfg.retention_rows, now) {
            self.complain("old request records were not deleted", &e.to_string());
        }
    }

    /// Log a failure, at most once a [`PRUNE_EVERY`].
    fn complain(&mut self, what: &str, e: &str) {
        if self.complained.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.complained = Some(Instant::now());
            tracing::error!(error = %e, "{what}");
        }
    }
}

//! The records queue, the keeper thread, and the reads of what it kept (newest in memory, all
//! within the retention on disk).

use super::db::{self, StatAttempt, StatRow};
use super::{Filter, Record};
use crate::config::records::RecordsConfig;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long the keeper lets records gather before it takes them: a busy gateway's batch is
/// about a thousand records, and the per-transaction writes (each index's last pages) are
/// shared by them all.
pub const LINGER: Duration = Duration::from_millis(50);
/// How often the keeper deletes what is past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct Ring {
    records: VecDeque<Arc<Record>>,
    /// How many are kept.
    memory: usize,
}

/// What the queue carries: a record, or a wish to hear when everything before it is written.
/// Records are the traffic and flushes rare: a boxed record would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Record),
    Flush(SyncSender<()>),
}

/// The records queue and the ones kept.
///
/// The keeper thread and the file's connections start at first use, not in [`Recorder::start`]:
/// `-d` forks after startup, and neither a thread nor a SQLite connection survives a fork.
pub struct Recorder {
    enabled: bool,
    queue: SyncSender<Msg>,
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
    rx: Receiver<Msg>,
    kept: Arc<Mutex<Ring>>,
    path: Option<PathBuf>,
    cfg: RecordsConfig,
}

impl Recorder {
    /// Open the records file (when kept on disk) and start the keeper thread; `dropped` counts
    /// records the full queue refused.
    pub fn start(cfg: RecordsConfig, dropped: prometheus::IntCounter) -> std::io::Result<Recorder> {
        let (queue, rx) = sync_channel(cfg.queue);
        let kept = Arc::new(Mutex::new(Ring {
            records: VecDeque::with_capacity(cfg.memory.min(4096)),
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
            rx,
            kept: kept.clone(),
            path: path.clone(),
            cfg: cfg.clone(),
        };
        Ok(Recorder {
            enabled: cfg.enabled,
            queue,
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

    /// Queue a record; never waits.
    pub fn submit(&self, r: Record) {
        self.wake();
        match self.queue.try_send(Msg::Record(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Wait until every record queued so far is kept (written, when on disk), at most `wait`:
    /// a stopping process calls it last, so that the answers it gave are on record. False when
    /// the wait ran out.
    pub fn flush(&self, wait: Duration) -> bool {
        if lock(&self.idle).is_some() {
            return true; // the keeper never started: nothing was queued
        }
        let deadline = Instant::now() + wait;
        let (done, heard) = sync_channel(1);
        let mut ask = Msg::Flush(done);
        loop {
            match self.queue.try_send(ask) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    ask = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        heard
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The newest records `f` wants, newest first, as `(seq, JSON)`. Blocking (on disk).
    pub fn list(&self, f: &Filter) -> Result<Vec<(u64, String)>, String> {
        if let Some(conn) = self.db()? {
            return db::list(&conn, f).map_err(|e| e.to_string());
        }
        let g = lock(&self.kept);
        Ok(g.records
            .iter()
            .rev()
            .filter(|r| f.wants(r))
            .take(f.limit)
            .map(|r| (r.seq, serde_json::to_string(r.as_ref()).unwrap_or_default()))
            .collect())
    }

    /// The newest record of request `id`, as JSON. Blocking (on disk).
    pub fn get(&self, id: &str) -> Result<Option<String>, String> {
        let found = lock(&self.kept)
            .records
            .iter()
            .rev()
            .find(|r| r.id == id)
            .cloned();
        if let Some(r) = found {
            return Ok(Some(serde_json::to_string(r.as_ref()).unwrap_or_default()));
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
        let g = lock(&self.kept);
        Ok(g.records
            .iter()
            .filter(|r| r.at >= since)
            .map(|r| StatRow {
                outcome: r.outcome.to_string(),
                fallback: r.fallback,
                ms: r.ms,
                attempts: r
                    .attempts
                    .iter()
                    .map(|a| StatAttempt {
                        provider: a.provider.clone(),
                        model: db::attempt_model(&a.source, &a.provider).to_string(),
                        outcome: a.outcome.to_string(),
                        ms: a.ms,
                        first_token_ms: a.first_token_ms,
                    })
                    .collect(),
            })
            .collect())
    }
}

impl Keeper {
    /// Once a record arrives, let others gather for [`LINGER`] (a queued record wakes nobody
    /// while the thread sleeps, so a busy gateway pays no wake-up per request), then number
    /// them, write them to disk and only then into memory: a record that can be read by its
    /// id can be found by a listing too.
    fn run(self) {
        let mut conn = self.path.as_deref().map(db::open);
        let mut next = 1;
        let mut pruned: Option<Instant> = None;
        let mut complained: Option<Instant> = None;
        while let Ok(first) = self.rx.recv() {
            let (mut batch, acks) = self.gather(first);
            if !batch.is_empty() {
                let written = match &mut conn {
                    None => Ok(()),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(c)) => self
                        .persist(c, &mut batch, &mut pruned)
                        .map_err(|e| e.to_string()),
                };
                next = number(&mut batch, next, conn.is_some() && written.is_ok());
                if let Err(e) = written {
                    if complained.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                        complained = Some(Instant::now());
                        tracing::error!(error = %e, "request records were not written to disk");
                    }
                }
                self.keep(batch);
            }
            for done in acks {
                let _ = done.send(());
            }
        }
    }

    /// The batch that starts with `first`: what else arrives within [`LINGER`] (none when
    /// `first` is a flush: nothing is waiting), and the flushes asked for among it.
    fn gather(&self, first: Msg) -> (Vec<Record>, Vec<SyncSender<()>>) {
        let (mut batch, mut acks) = (Vec::new(), Vec::new());
        if matches!(first, Msg::Record(_)) {
            std::thread::sleep(LINGER);
        }
        for m in std::iter::once(first).chain(self.rx.try_iter()) {
            match m {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(done) => acks.push(done),
            }
        }
        (batch, acks)
    }

    /// Into memory, the oldest out past `records.memory`.
    fn keep(&self, batch: Vec<Record>) {
        let mut g = lock(&self.kept);
        for r in batch {
            if g.records.len() >= g.memory {
                g.records.pop_front();
            }
            g.records.push_back(Arc::new(r));
        }
    }

    /// Number the batch after the newest on disk (another process may share the file, as
    /// during a graceful upgrade) and write it.
    fn persist(
        &self,
        conn: &mut Connection,
        batch: &mut [Record],
        pruned: &mut Option<Instant>,
    ) -> rusqlite::Result<()> {
        db::write(conn, batch)?;
        if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            *pruned = Some(Instant::now());
            db::prune(
                conn,
                self.cfg.retention_days,
                self.cfg.retention_rows,
                crate::store::now_ms(),
            )?;
        }
        Ok(())
    }
}

/// The number after `batch`: numbered on disk when `written` there, else from `next` here.
fn number(batch: &mut [Record], next: u64, written: bool) -> u64 {
    if written {
        return batch.last().map_or(next, |r| r.seq + 1);
    }
    let mut n = next;
    for r in batch {
        r.seq = n;
        n += 1;
    }
    n
}

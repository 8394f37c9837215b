//! Balances and holds of the embedded store, in process; the ledger written by one thread.
//!
//! One detour instance owns a SQLite file's balances (several instances share Redis), so a
//! hold need not be a row: holds live here, and a crash releases them by forgetting them. What
//! must outlive a crash (a debit with its ledger row, a top-up, a BYOK record) goes to the
//! ledger writer: one thread that, once a write arrives, lets others gather for [`LINGER`] and
//! commits them all in one transaction (group commit), then answers the callers that wait. A
//! settle does not wait: its debit is pending in memory (holds count it) until committed, so
//! a `kill -9` can leave the answers of the last millisecond or so unbilled, never a debit half
//! written; the admin's reads wait for every write queued before them. The request path
//! itself does no I/O.
//!
//! A balance here is the file's balance as of the writer's last commit for that key, less the
//! debits queued since. Another process (the `detour keys` CLI) may top a key up in the file:
//! a hold that does not fit re-reads the balance before it refuses.

use super::rows;
use crate::store::{Charge, Micros, Reserve, StoreError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Writes batched into one transaction at most.
const BATCH: usize = 512;
/// How long the writer lets a batch gather after its first write arrives: each commit costs a
/// WAL append of the pages it touched, whatever its size, and while the writer sleeps a queued
/// write wakes nobody. It bounds how long a settled answer's debit stays in memory only.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A durable write for the ledger writer.
pub enum Op {
    /// A settled hold's debit (≥ 0) off the balance, with its ledger row.
    Debit {
        amount: Micros,
        charge: Charge,
    },
    /// A BYOK answer's cost, recorded.
    Record(Charge),
    TopUp {
        amount: Micros,
        note: String,
    },
    /// Nothing written: the balance is read back.
    Refresh,
    /// Nothing written or read: answered once every write queued before it is committed.
    Barrier,
}

struct Job {
    id: String,
    op: Op,
    /// The key's balance in the file once the write is committed, to a caller that waits.
    reply: Option<oneshot::Sender<Result<Micros, StoreError>>>,
}

#[derive(Default)]
struct Account {
    /// The file's balance as of the writer's last commit for this key.
    committed: Micros,
    /// Debits queued and not yet committed.
    pending: Micros,
    reserved: Micros,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    /// Hold id → (key id, amount).
    holds: HashMap<u64, (String, Micros)>,
    next: u64,
}

pub struct Purse {
    state: Arc<Mutex<State>>,
    jobs: mpsc::Sender<Job>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Purse {
    /// The purse, and its ledger writer on a thread of its own over `conn`.
    pub fn start(conn: Arc<Mutex<Connection>>) -> Result<Purse, StoreError> {
        let state = Arc::new(Mutex::new(State::default()));
        let (jobs, rx) = mpsc::channel();
        let shared = state.clone();
        std::thread::Builder::new()
            .name("detour-ledger".into())
            .spawn(move || writer(&conn, &rx, &shared))
            .map_err(|e| StoreError::Unavailable(format!("ledger writer: {e}")))?;
        Ok(Purse { state, jobs })
    }

    pub fn knows(&self, id: &str) -> bool {
        lock(&self.state).accounts.contains_key(id)
    }

    /// A key's balance read from the file, unless the purse has it already.
    pub fn load(&self, id: &str, balance: Micros) {
        lock(&self.state)
            .accounts
            .entry(id.to_string())
            .or_insert_with(|| Account {
                committed: balance,
                ..Account::default()
            });
    }

    /// Hold `amount` if it fits the balance less what is held and queued, plus `credit_limit`.
    pub fn hold(&self, id: &str, amount: Micros, credit_limit: Micros) -> Option<Reserve> {
        let mut g = lock(&self.state);
        let st = &mut *g;
        let a = st.accounts.get_mut(id)?;
        let available = a
            .committed
            .saturating_sub(a.pending)
            .saturating_sub(a.reserved)
            .saturating_add(credit_limit.max(0));
        if amount > available {
            return Some(Reserve::Short { available });
        }
        a.reserved = a.reserved.saturating_add(amount);
        st.next += 1;
        st.holds.insert(st.next, (id.to_string(), amount));
        Some(Reserve::Held(st.next))
    }

    /// Close hold `hold` of key `id`; with `cost`, its debit (at most the hold) is queued as
    /// pending and returned. A hold already closed, or another key's, changes nothing.
    pub fn close(&self, id: &str, hold: u64, cost: Option<Micros>) -> Option<Micros> {
        let mut g = lock(&self.state);
        let st = &mut *g;
        if st.holds.get(&hold).is_none_or(|h| h.0 != id) {
            return None;
        }
        let (_, held) = st.holds.remove(&hold)?;
        let a = st.accounts.get_mut(id)?;
        a.reserved = a.reserved.saturating_sub(held);
        let debit = cost.map(|c| c.clamp(0, held));
        a.pending = a.pending.saturating_add(debit.unwrap_or(0));
        debit
    }

    /// What the open holds of key `id` add up to.
    pub fn reserved(&self, id: &str) -> Micros {
        lock(&self.state).accounts.get(id).map_or(0, |a| a.reserved)
    }

    /// Queue a durable write; the key's balance once it is committed.
    pub async fn write(&self, id: &str, op: Op) -> Result<Micros, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(id, op, Some(reply))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the ledger writer stopped".into())))
    }

    /// Queue a durable write nobody waits for (a settled debit): the writer commits it within
    /// about [`LINGER`] and logs it if it fails. Meanwhile a debit counts as pending.
    pub fn queue(&self, id: &str, op: Op) -> Result<(), StoreError> {
        self.send(id, op, None)
    }

    /// Answered once every write queued so far is committed: what a reader waits for to see
    /// every settled debit.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write("", Op::Barrier).await.map(|_| ())
    }

    fn send(
        &self,
        id: &str,
        op: Op,
        reply: Option<oneshot::Sender<Result<Micros, StoreError>>>,
    ) -> Result<(), StoreError> {
        let job = Job {
            id: id.to_string(),
            op,
            reply,
        };
        self.jobs.send(job).map_err(|mpsc::SendError(job)| {
            // The writer is gone: a queued debit is no longer pending.
            settled(&self.state, &[(job.id, pending_of(&job.op), None)]);
            StoreError::Unavailable("the ledger writer stopped".into())
        })
    }
}

fn pending_of(op: &Op) -> Micros {
    match op {
        Op::Debit { amount, .. } => *amount,
        _ => 0,
    }
}

/// The writer's loop: a batch of what is queued, one transaction, then the answers.
fn writer(conn: &Mutex<Connection>, rx: &mpsc::Receiver<Job>, state: &Mutex<State>) {
    while let Ok(first) = rx.recv() {
        std::thread::sleep(LINGER);
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut c = lock(conn);
        let results = match commit(&mut c, &batch) {
            Ok(r) => r,
            // One bad write must not fail the rest: each on its own.
            Err(_) if batch.len() > 1 => batch
                .iter()
                .map(|j| {
                    commit(&mut c, std::slice::from_ref(j))
                        .and_then(|mut r| r.pop().ok_or_else(|| rows::unavailable("no result")))
                        .unwrap_or_else(Err)
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        drop(c);
        let done: Vec<_> = batch
            .iter()
            .zip(&results)
            .map(|(j, r)| (j.id.clone(), pending_of(&j.op), r.as_ref().ok().copied()))
            .collect();
        settled(state, &done);
        for (j, r) in batch.into_iter().zip(results) {
            match j.reply {
                Some(reply) => {
                    let _ = reply.send(r);
                }
                None => {
                    if let Err(e) = r {
                        tracing::error!(key = %j.id, error = %e, "a settled debit was not written");
                    }
                }
            }
        }
    }
}

/// One transaction for `batch`: each write's own result (a key that does not exist fails
/// only its write) with its key's balance read back. `Err`: the transaction failed.
fn commit(
    c: &mut Connection,
    batch: &[Job],
) -> Result<Vec<Result<Micros, StoreError>>, StoreError> {
    rows::write(c, |tx| {
        let mut done = Vec::with_capacity(batch.len());
        for j in batch {
            let r = match &j.op {
                Op::Debit { amount, charge } => rows::debit(tx, &j.id, *amount, charge),
                Op::Record(charge) => rows::record(tx, &j.id, charge),
                Op::TopUp { amount, note } => rows::top_up(tx, &j.id, *amount, note),
                Op::Refresh | Op::Barrier => Ok(()),
            };
            if let Err(StoreError::Unavailable(e)) = r {
                return Err(StoreError::Unavailable(e));
            }
            done.push(r);
        }
        let mut balances: HashMap<&str, Micros> = HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        for (j, r) in batch.iter().zip(done) {
            if let Err(e) = r {
                out.push(Err(e));
                continue;
            }
            if matches!(j.op, Op::Barrier) {
                out.push(Ok(0));
                continue;
            }
            let b = match balances.get(j.id.as_str()) {
                Some(b) => Some(*b),
                None => rows::balance(tx, &j.id)?,
            };
            if let Some(b) = b {
                balances.insert(&j.id, b);
            }
            out.push(b.ok_or(StoreError::NoSuchKey));
        }
        Ok(out)
    })
}

/// After a batch: each written key's committed balance, and its debits no longer pending
/// (written or failed).
fn settled(state: &Mutex<State>, done: &[(String, Micros, Option<Micros>)]) {
    let mut g = lock(state);
    for (id, pending, balance) in done {
        if let Some(a) = g.accounts.get_mut(id) {
            a.pending = a.pending.saturating_sub(*pending);
            if let Some(b) = balance {
                a.committed = *b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purse() -> Purse {
        let c = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        c.execute_batch(rows::SCHEMA)
            .unwrap_or_else(|e| panic!("{e}"));
        Purse::start(Arc::new(Mutex::new(c))).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn holds_fit_the_balance_less_what_is_held_and_queued() {
        let p = purse();
        assert!(
            p.hold("k", 1, 0).is_none(),
            "an unknown key is loaded first"
        );
        p.load("k", 100);
        p.load("k", 5);
        let Some(Reserve::Held(a)) = p.hold("k", 60, 0) else {
            panic!("60 of 100 fits")
        };
        assert_eq!(p.hold("k", 50, 0), Some(Reserve::Short { available: 40 }));
        assert!(matches!(p.hold("k", 50, 20), Some(Reserve::Held(_))));
        assert_eq!(p.reserved("k"), 110);
        // Settled at 70: the debit is the hold at most, pending until written.
        assert_eq!(p.close("k", a, Some(70)), Some(60));
        assert_eq!(p.close("k", a, Some(70)), None, "closed once");
        assert_eq!(p.reserved("k"), 50);
        assert_eq!(p.hold("k", 1, 0), Some(Reserve::Short { available: -10 }));
    }

    #[test]
    fn a_hold_closes_only_for_its_own_key() {
        let p = purse();
        p.load("a", 10);
        p.load("b", 10);
        let Some(Reserve::Held(h)) = p.hold("a", 10, 0) else {
            panic!("fits")
        };
        assert_eq!(p.close("b", h, Some(5)), None);
        assert_eq!(p.reserved("a"), 10);
        assert_eq!(p.close("a", h, None), None, "a release debits nothing");
        assert_eq!(p.reserved("a"), 0);
    }
}

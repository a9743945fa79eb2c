//! The scheduler: worker threads, each holding up to `n_parallel` sequences
//! (slots, each with its own KV cache) that it runs together.  At every
//! step a worker admits queued requests into free slots, then runs **one
//! forward pass** over the next token of every generating sequence plus a
//! chunk of prompt tokens of those still reading their prompt, then samples
//! for each.  Every weight is read once per step for all of them.
//!
//! Layers: the engine (API, deadlines, placement) puts [`Job`]s on queues;
//! this module steps [`Sequence`]s through a [`Batch`] of the model; the
//! model runs the kernels.  Nothing here knows the engine.
//!
//! A sequence's text depends only on its prompt, options and seed: the
//! model's rows do not depend on their neighbours, and a sequence samples
//! from its own logits with its own sampler.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::cancel::CancelToken;
use crate::constraint::Constraint;
use crate::embed::{embed, Pooling};
use crate::error::{panic_message, Error, ErrorKind, Result};
use crate::generate::{Completion, Sequence, PROMPT_CHUNK};
use crate::model::{Batch, SeqInput, Weights};
use crate::options::GenerateOptions;
use crate::tokenizer::Tokenizer;

/// How long a worker stays idle after work before it hands the memory its
/// requests freed back to the system (`engine::give_back_memory`): long
/// enough that a steady stream of requests never pays for it, short enough
/// that a host's resident memory settles soon after a burst.
pub const IDLE_TRIM: Duration = Duration::from_secs(1);

/// What the workers share, read-only but for the shutdown flag and the KV
/// memory account.
pub struct Shared {
    pub weights: Box<dyn Weights>,
    pub tokenizer: Tokenizer,
    pub shutting_down: AtomicBool,
    pub fault: Option<Fault>,
    pub kv: KvBudget,
    /// Queued requests the engine took out of the full queue (to drop the
    /// abandoned ones) and could not put back; taken before the queue.
    pub requeued: Mutex<VecDeque<Job>>,
    /// Where the workers' messages (and panic reports) go.
    pub logger: crate::log::Logger,
}

/// Faults a test can inject through the `ZEPH_FAULT` environment variable
/// (read when an engine is created, by a build with the `fault-injection`
/// feature only), to exercise the recovery paths that
/// no well-formed input reaches: a panic on the caller's thread, or in a
/// worker while it generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CallerPanic,
    WorkerPanic,
}

impl Fault {
    /// Read only by a build with the `fault-injection` feature (the tests');
    /// a production build never looks at `ZEPH_FAULT`.
    #[cfg(not(feature = "fault-injection"))]
    pub fn from_env() -> Option<Self> {
        None
    }

    #[cfg(feature = "fault-injection")]
    pub fn from_env() -> Option<Self> {
        match std::env::var("ZEPH_FAULT").ok()?.as_str() {
            "caller-panic" => Some(Self::CallerPanic),
            "worker-panic" => Some(Self::WorkerPanic),
            _ => None,
        }
    }
}

/// The engine-wide bound on KV cache memory, in bytes (0 = none).  Each
/// slot is charged for the most its current request can grow its cache to
/// (prompt plus `max_tokens` positions), and for what its cache holds
/// while it is idle.
pub struct KvBudget {
    limit: usize,
    used: Mutex<usize>,
}

impl KvBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: Mutex::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn take(&self, n: usize) -> bool {
        if self.limit == 0 || n == 0 {
            return true;
        }
        let mut used = self.used.lock();
        if *used + n > self.limit {
            return false;
        }
        *used += n;
        true
    }

    fn give(&self, n: usize) {
        if self.limit > 0 {
            let mut used = self.used.lock();
            *used = used.saturating_sub(n);
        }
    }
}

/// Where a job's result goes.
pub enum Output {
    /// The whole completion, to a caller blocked on it.  Capacity 1, so the
    /// worker never blocks on a caller that left.
    Reply(Sender<Result<Completion>>),
    /// Pieces as they come, then the end, to a stream.  Bounded: when its
    /// reader stops reading, that sequence pauses (the others go on).
    Stream(Sender<StreamEvent>),
    /// An embedding (no sampling: the tokens' hidden states, pooled), to a
    /// caller blocked on it.  Capacity 1, as `Reply`.
    Embed(Pooling, Sender<Result<Vec<f32>>>),
}

pub enum StreamEvent {
    Piece(String),
    Done(Result<Completion>),
}

pub struct Job {
    pub tokens: Vec<u32>,
    pub options: GenerateOptions,
    pub seed: u64,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// Tripped by the engine when the caller stops waiting (timeout,
    /// shutdown, a stream cancelled or freed).
    pub cancel: Arc<CancelToken>,
    pub output: Output,
    /// The request's compiled structured-output constraint.
    pub constraint: Option<Constraint>,
}

impl Job {
    /// Why this job must not go on, if it must not.
    pub fn interrupted(&self, shutting_down: &AtomicBool) -> Result<()> {
        if shutting_down.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::Shutdown,
                "the engine is shutting down",
            ))
        } else if self.cancel.is_cancelled()
            || self
                .options
                .cancel
                .as_ref()
                .is_some_and(|c| c.is_cancelled())
        {
            Err(Error::new(
                ErrorKind::Cancelled,
                "the request was cancelled",
            ))
        } else if Instant::now() >= self.deadline {
            Err(Error::new(
                ErrorKind::Timeout,
                "the request's deadline (its timeout) passed",
            ))
        } else {
            Ok(())
        }
    }

    /// Delivers `result` if that can be done without waiting; returns the
    /// event back when a stream is full.
    fn try_finish(self, result: Result<Completion>) -> Option<(Job, StreamEvent)> {
        match &self.output {
            Output::Reply(tx) => {
                let _ = tx.try_send(result);
                None
            }
            Output::Embed(_, tx) => {
                // Only a failure comes here (an embedding sends its own
                // answer).
                let _ = tx.try_send(result.map(|_| Vec::new()));
                None
            }
            Output::Stream(tx) => match tx.try_send(StreamEvent::Done(result)) {
                Err(TrySendError::Full(event)) => Some((self, event)),
                _ => None,
            },
        }
    }
}

/// What the engine knows of a worker, to place a request where its prefix
/// is cached.
#[derive(Default)]
pub struct Placement {
    /// Slots without a request (requests routed but not yet admitted are
    /// subtracted by the engine as it routes them).
    pub free: usize,
    /// The tokens in the caches of the slots without a request.
    pub idle: Vec<Vec<u32>>,
}

/// A worker's private entrance (for requests routed to it for a cached
/// prefix) and its placement state.
pub struct WorkerLink {
    pub tx: Sender<Job>,
    pub state: Mutex<Placement>,
}

/// A sequence slot of a worker.
#[derive(Default)]
struct Slot {
    /// The tokens in the slot's cache, when no request runs in it.
    tokens: Vec<u32>,
    /// Bytes charged to the KV budget.
    charge: usize,
    /// When it last ran a request (a step count), for eviction.
    last_used: u64,
    active: Option<Active>,
}

/// A request running in a slot.
struct Active {
    job: Job,
    seq: Sequence,
    /// Stream pieces not yet taken by the stream; while there are any, the
    /// sequence is paused.
    pending: VecDeque<String>,
    queue_time: Duration,
    /// Admission order, which orders prompt chunks.
    order: u64,
}

/// A finished stream whose last pieces and end wait for room in it.
struct Unsent {
    job: Job,
    pending: VecDeque<String>,
    done: StreamEvent,
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    link: Arc<WorkerLink>,
    batch: Box<dyn Batch>,
    slots: Vec<Slot>,
    /// A request taken from a queue that waits for KV memory.
    waiting: Option<Job>,
    unsent: Vec<Unsent>,
    step: u64,
    admitted: u64,
}

pub fn run(
    index: usize,
    n_slots: usize,
    shared: Arc<Shared>,
    link: Arc<WorkerLink>,
    private: Receiver<Job>,
    queue: Receiver<Job>,
    shutdown: Receiver<()>,
) {
    crate::log::route_panics_to(&shared.logger);
    let n_slots = n_slots.max(1);
    let mut w = Worker {
        index,
        batch: shared.weights.new_batch(n_slots),
        slots: (0..n_slots).map(|_| Slot::default()).collect(),
        shared,
        link,
        waiting: None,
        unsent: Vec::new(),
        step: 0,
        admitted: 0,
    };
    w.publish();
    let mut worked = false;
    loop {
        let busy = w.slots.iter().any(|s| s.active.is_some())
            || w.waiting.is_some()
            || !w.unsent.is_empty();
        if !busy {
            // Nothing to do: sleep until a request or shutdown comes.  After
            // work, the first IDLE_TRIM of quiet hands the memory the
            // requests freed back to the system, once.
            let job = if worked {
                select! {
                    recv(private) -> job => Some(job.ok()),
                    recv(queue) -> job => Some(job.ok()),
                    recv(shutdown) -> _ => Some(None),
                    default(IDLE_TRIM) => None,
                }
            } else {
                select! {
                    recv(private) -> job => Some(job.ok()),
                    recv(queue) -> job => Some(job.ok()),
                    recv(shutdown) -> _ => Some(None),
                }
            };
            match job {
                Some(Some(job)) => w.admit(job),
                Some(None) => return,
                None => {
                    crate::engine::give_back_memory();
                    worked = false;
                    continue;
                }
            }
        }
        worked = true;
        if w.shared.shutting_down.load(Ordering::Acquire) {
            w.stop_all();
            return;
        }
        // A request routed here for its cached prefix goes first.
        while w.waiting.is_none() && w.free_slot_count() > 0 {
            let requeued = || w.shared.requeued.lock().pop_front();
            let job = match private.try_recv() {
                Ok(job) => job,
                Err(_) => match requeued() {
                    Some(job) => job,
                    None => match queue.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    },
                },
            };
            w.admit(job);
        }
        if let Some(job) = w.waiting.take() {
            w.admit(job);
        }
        let ran = w.step();
        if !ran {
            // Every sequence waits (for a stream reader or for memory):
            // wait a little, waking for shutdown.
            select! {
                recv(shutdown) -> _ => {},
                default(Duration::from_millis(2)) => {},
            }
        }
    }
}

impl Worker {
    fn free_slot_count(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_none()).count()
    }

    /// Tells the engine which slots are free and what the idle ones hold.
    fn publish(&self) {
        let mut state = self.link.state.lock();
        state.free = self.free_slot_count();
        state.idle.clear();
        for s in &self.slots {
            if s.active.is_none() && !s.tokens.is_empty() {
                state.idle.push(s.tokens.clone());
            }
        }
    }

    /// Puts `job` into a slot, or into `waiting` when the KV memory it
    /// needs is not free, or finishes it when it cannot run.
    fn admit(&mut self, mut job: Job) {
        if let Err(e) = job.interrupted(&self.shared.shutting_down) {
            self.finish(job, Err(e));
            return;
        }
        if job.tokens.is_empty() {
            self.finish(
                job,
                Err(Error::invalid_argument("the prompt has no tokens")),
            );
            return;
        }
        let Some(slot) = self.choose_slot(&job) else {
            // No free slot (a routed request raced a queued one): wait.
            self.waiting = Some(job);
            return;
        };
        // The KV memory the request can grow its cache to.
        let need = self
            .batch
            .kv_bytes_for(job.tokens.len() + job.options.max_tokens);
        let limit = self.shared.kv.limit();
        if limit > 0 && need > limit {
            let e = Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "the request needs {} MiB of KV cache ({} prompt tokens + max_tokens {}), more than the engine's kv_memory_mib of {} MiB",
                    need.div_ceil(1 << 20),
                    job.tokens.len(),
                    job.options.max_tokens,
                    limit >> 20
                ),
            );
            self.finish(job, Err(e));
            return;
        }
        let extra = need.saturating_sub(self.slots[slot].charge);
        if !self.shared.kv.take(extra) {
            // Free idle caches of this worker, least recently used first.
            let mut idle: Vec<usize> = (0..self.slots.len())
                .filter(|&i| {
                    i != slot && self.slots[i].active.is_none() && self.slots[i].charge > 0
                })
                .collect();
            idle.sort_by_key(|&i| self.slots[i].last_used);
            let mut got = false;
            for i in idle {
                self.evict(i);
                if self.shared.kv.take(extra) {
                    got = true;
                    break;
                }
            }
            if !got {
                if Instant::now() >= job.deadline {
                    let e = Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "the request's timeout ran out while it waited for KV memory (kv_memory_mib = {} MiB, all in use)",
                            limit >> 20
                        ),
                    );
                    self.finish(job, Err(e));
                } else {
                    self.waiting = Some(job);
                }
                return;
            }
        }
        let s = &mut self.slots[slot];
        s.charge += extra;
        // Reuse the cached prefix (at least the last prompt token is
        // evaluated, for its logits).
        let mut keep = if job.options.cache_prompt {
            common_prefix(&s.tokens, &job.tokens).min(job.tokens.len() - 1)
        } else {
            0
        };
        if let Output::Embed(pooling, tx) = &job.output {
            // An embedding runs at once, in this slot, from position 0.
            let result = self.embed_now(slot, &job, *pooling);
            let _ = tx.try_send(result);
            self.evict(slot);
            self.slots[slot].last_used = self.step;
            self.publish();
            return;
        }
        keep = self.batch.truncate(slot, keep);
        s.tokens.clear();
        let constraint = job.constraint.take();
        let seq = Sequence::new(job.tokens.clone(), keep, &job.options, job.seed, constraint);
        self.admitted += 1;
        s.active = Some(Active {
            queue_time: job.enqueued.elapsed(),
            job,
            seq,
            pending: VecDeque::new(),
            order: self.admitted,
        });
        self.publish();
    }

    /// The free slot for `job`: the one whose cache it continues (see
    /// [`continues`]) with the longest prefix, else an empty one, else the
    /// one sharing the longest prefix with it, else the least recently
    /// used.  So a new conversation does not overwrite another's cache
    /// while a slot is empty.
    fn choose_slot(&self, job: &Job) -> Option<usize> {
        let free = || (0..self.slots.len()).filter(|&i| self.slots[i].active.is_none());
        let best = |score: &dyn Fn(&[u32]) -> usize| {
            free()
                .map(|i| (score(&self.slots[i].tokens), i))
                .filter(|&(n, _)| n > 0)
                .max_by_key(|&(n, i)| (n, std::cmp::Reverse(i)))
                .map(|(_, i)| i)
        };
        if job.options.cache_prompt {
            if let Some(i) = best(&|t| continues(t, &job.tokens)) {
                return Some(i);
            }
        }
        if let Some(i) = free().find(|&i| self.slots[i].tokens.is_empty()) {
            return Some(i);
        }
        if job.options.cache_prompt {
            if let Some(i) = best(&|t| common_prefix(t, &job.tokens)) {
                return Some(i);
            }
        }
        free().min_by_key(|&i| self.slots[i].last_used)
    }

    /// The embedding of `job`'s tokens, computed in `slot` (emptied first),
    /// with panics caught.
    fn embed_now(&mut self, slot: usize, job: &Job, pooling: Pooling) -> Result<Vec<f32>> {
        self.batch.release(slot);
        let n_embd = self.shared.weights.info().embedding_length;
        let interrupt = || job.interrupted(&self.shared.shutting_down);
        let batch = &mut self.batch;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            embed(
                &mut |chunk| batch.hidden_states(slot, chunk),
                &job.tokens,
                n_embd,
                pooling,
                &interrupt,
            )
        }));
        outcome.unwrap_or_else(|payload| {
            self.batch = self.shared.weights.new_batch(self.slots.len());
            for s in &mut self.slots {
                s.tokens.clear();
            }
            Err(Error::new(
                ErrorKind::Panic,
                format!("embedding panicked: {}", panic_message(payload.as_ref())),
            ))
        })
    }

    /// Drops an idle slot's cache and its charge.
    fn evict(&mut self, i: usize) {
        let s = &mut self.slots[i];
        self.shared.kv.give(s.charge);
        s.charge = 0;
        s.tokens.clear();
        self.batch.release(i);
    }

    /// Ends every request (shutdown).
    fn stop_all(&mut self) {
        let err = || Error::new(ErrorKind::Shutdown, "the engine is shutting down");
        for i in 0..self.slots.len() {
            if let Some(a) = self.slots[i].active.take() {
                let _ = a.job.try_finish(Err(err()));
            }
        }
        if let Some(job) = self.waiting.take() {
            let _ = job.try_finish(Err(err()));
        }
        self.unsent.clear();
    }

    /// Finishes a request that never got a slot.
    fn finish(&mut self, job: Job, result: Result<Completion>) {
        if let Some((job, done)) = job.try_finish(result) {
            self.unsent.push(Unsent {
                job,
                pending: VecDeque::new(),
                done,
            });
        }
    }

    /// Ends the request in slot `i` with `result` (its completion or an
    /// error); the slot keeps what its cache holds.
    fn end(&mut self, i: usize, result: Option<Error>) {
        let Some(a) = self.slots[i].active.take() else {
            return;
        };
        let Active {
            job,
            seq,
            pending,
            queue_time,
            ..
        } = a;
        let s = &mut self.slots[i];
        s.tokens = seq.cache_tokens().collect();
        s.last_used = self.step;
        if s.tokens.len() != self.batch.len(i) {
            // The cache and the sequence disagree (a failed step): drop it.
            s.tokens.clear();
            self.batch.release(i);
        }
        // Charge only what the cache holds now.
        let holds = self.batch.kv_bytes(i);
        if self.shared.kv.limit() > 0 && holds < s.charge {
            self.shared.kv.give(s.charge - holds);
            s.charge = holds;
        }
        // Published before the caller hears the answer, so that its next
        // turn finds this cache.
        self.publish();
        let result = match result {
            Some(e) => Err(e),
            None => {
                let mut c = seq.completion();
                c.usage.queue_time = queue_time;
                c.usage.worker = self.index;
                Ok(c)
            }
        };
        match job.output {
            Output::Stream(_) if !pending.is_empty() => {
                let event = StreamEvent::Done(result);
                self.unsent.push(Unsent {
                    job,
                    pending,
                    done: event,
                });
            }
            _ => {
                if let Some((job, done)) = job.try_finish(result) {
                    self.unsent.push(Unsent { job, pending, done });
                }
            }
        }
    }

    /// Sends what finished streams still hold, as far as they have room.
    fn flush_unsent(&mut self) {
        let shutting = &self.shared.shutting_down;
        self.unsent.retain_mut(|u| {
            let Output::Stream(tx) = &u.job.output else {
                return false;
            };
            // Past its deadline or cancelled, the reader has its answer.
            if u.job.interrupted(shutting).is_err() {
                return false;
            }
            if !deliver(&u.job.output, &mut u.pending) {
                return false;
            }
            if !u.pending.is_empty() {
                return true;
            }
            let done = std::mem::replace(&mut u.done, StreamEvent::Piece(String::new()));
            match tx.try_send(done) {
                Err(TrySendError::Full(done)) => {
                    u.done = done;
                    true
                }
                _ => false,
            }
        });
    }

    /// One step: interrupts, stream delivery, one forward pass, sampling.
    /// Returns whether a forward pass ran.
    fn step(&mut self) -> bool {
        self.step += 1;
        self.flush_unsent();
        // Requests whose caller gave up, and streams that have room again.
        for i in 0..self.slots.len() {
            let verdict = match &mut self.slots[i].active {
                None => continue,
                Some(a) => match a.job.interrupted(&self.shared.shutting_down) {
                    Err(e) => Some(e),
                    Ok(()) if deliver(&a.job.output, &mut a.pending) => None,
                    Ok(()) => Some(Error::new(ErrorKind::Cancelled, "the stream was freed")),
                },
            };
            if let Some(e) = verdict {
                self.end(i, Some(e));
            }
        }

        // The inputs: every generating sequence's next token, then prompt
        // chunks in admission order within the step's prompt budget.
        let mut order: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let a = s.active.as_ref()?;
                (a.pending.is_empty()).then_some((a.order, i))
            })
            .collect();
        order.sort_unstable();
        let mut budget = PROMPT_CHUNK;
        let mut chosen: Vec<(usize, usize)> = Vec::with_capacity(order.len());
        for &(_, i) in order.iter() {
            let a = self.slots[i].active.as_ref().expect("active");
            if !a.seq.in_prompt() {
                chosen.push((i, 1));
            }
        }
        for &(_, i) in order.iter() {
            let a = self.slots[i].active.as_ref().expect("active");
            if a.seq.in_prompt() && budget > 0 {
                let n = a.seq.input(budget).len();
                budget -= n;
                chosen.push((i, n));
            }
        }
        if chosen.is_empty() {
            return false;
        }
        chosen.sort_unstable();

        let shared = self.shared.clone();
        let outcome = {
            let slots = &mut self.slots;
            let batch = &mut self.batch;
            catch_unwind(AssertUnwindSafe(|| -> Result<Vec<(usize, bool)>> {
                if shared.fault == Some(Fault::WorkerPanic) {
                    panic!("fault injected by ZEPH_FAULT=worker-panic");
                }
                // Only the inputs that complete a prompt or carry a
                // generated token need logits.
                let inputs: Vec<SeqInput<'_>> = chosen
                    .iter()
                    .map(|&(i, n)| {
                        let seq = &slots[i].active.as_ref().expect("active").seq;
                        SeqInput {
                            slot: i,
                            tokens: seq.input(n),
                            logits: seq.completes(n),
                        }
                    })
                    .collect();
                batch.forward(&inputs)?;
                let wants: Vec<(usize, bool)> = inputs.iter().map(|i| (i.slot, i.logits)).collect();
                drop(inputs);
                let mut k = 0;
                let mut finished = Vec::new();
                for (idx, &(i, logits)) in wants.iter().enumerate() {
                    let a = slots[i].active.as_mut().expect("active");
                    let n = chosen[idx].1;
                    a.seq.ran(n);
                    if !logits {
                        continue;
                    }
                    let row = batch.logits(k);
                    k += 1;
                    let stream = matches!(a.job.output, Output::Stream(_));
                    let pending = &mut a.pending;
                    let mut push = |p: &str| -> Result<()> {
                        pending.push_back(p.to_string());
                        Ok(())
                    };
                    let sink: Option<crate::generate::Sink> =
                        if stream { Some(&mut push) } else { None };
                    let done = a.seq.accept(row, &shared.tokenizer, sink)?;
                    finished.push((i, done));
                }
                Ok(finished)
            }))
        };
        match outcome {
            Ok(Ok(finished)) => {
                for (i, done) in finished {
                    // Deliver what it produced; a full stream pauses it (a
                    // freed one is found at the next step).
                    if let Some(a) = &mut self.slots[i].active {
                        deliver(&a.job.output, &mut a.pending);
                    }
                    if done {
                        self.end(i, None);
                    }
                }
            }
            Ok(Err(e)) => {
                // The step failed: its sequences end with the error, and
                // their caches (which may hold part of the step) are dropped.
                for &(i, _) in &chosen {
                    self.batch.release(i);
                    self.end(i, Some(e.clone()));
                }
            }
            Err(payload) => {
                // A panic may leave any cache half-written: every request
                // of this worker fails, and it starts again clean.
                let msg = format!("inference panicked: {}", panic_message(payload.as_ref()));
                for i in 0..self.slots.len() {
                    self.batch.release(i);
                    if self.slots[i].active.is_some() {
                        self.end(i, Some(Error::new(ErrorKind::Panic, msg.clone())));
                    }
                    self.evict(i);
                }
                self.batch = self.shared.weights.new_batch(self.slots.len());
                self.publish();
            }
        }
        true
    }
}

/// Sends a stream's pending pieces as far as it has room.  Returns false
/// when the stream is gone.
fn deliver(output: &Output, pending: &mut VecDeque<String>) -> bool {
    let Output::Stream(tx) = output else {
        return true;
    };
    while let Some(p) = pending.pop_front() {
        match tx.try_send(StreamEvent::Piece(p)) {
            Ok(()) => {}
            Err(TrySendError::Full(StreamEvent::Piece(p))) => {
                pending.push_front(p);
                return true;
            }
            Err(_) => return false,
        }
    }
    true
}

/// How much of `cached` a request for `prompt` reuses when it continues
/// that cache (shares at least half of it, as the next turn of the same
/// conversation does); 0 otherwise.
pub fn continues(cached: &[u32], prompt: &[u32]) -> usize {
    let n = common_prefix(cached, prompt);
    if n > 0 && 2 * n >= cached.len() {
        n
    } else {
        0
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(deadline_in: Duration) -> Job {
        let now = Instant::now();
        Job {
            tokens: vec![1],
            options: GenerateOptions::default(),
            seed: 0,
            enqueued: now,
            deadline: now + deadline_in,
            cancel: Arc::new(CancelToken::new()),
            output: Output::Reply(crossbeam_channel::bounded(1).0),
            constraint: None,
        }
    }

    #[test]
    fn a_job_runs_until_its_deadline_passes() {
        let running = AtomicBool::new(false);
        let j = job(Duration::from_millis(30));
        assert!(j.interrupted(&running).is_ok());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            j.interrupted(&running).unwrap_err().kind,
            ErrorKind::Timeout
        );
    }

    #[test]
    fn cancel_flag_token_and_shutdown_each_interrupt() {
        let running = AtomicBool::new(false);
        let j = job(Duration::from_secs(60));
        j.cancel.cancel();
        assert_eq!(
            j.interrupted(&running).unwrap_err().kind,
            ErrorKind::Cancelled
        );

        let mut j = job(Duration::from_secs(60));
        let token = Arc::new(CancelToken::new());
        j.options.cancel = Some(token.clone());
        assert!(j.interrupted(&running).is_ok());
        token.cancel();
        assert_eq!(
            j.interrupted(&running).unwrap_err().kind,
            ErrorKind::Cancelled
        );

        let j = job(Duration::from_secs(60));
        assert_eq!(
            j.interrupted(&AtomicBool::new(true)).unwrap_err().kind,
            ErrorKind::Shutdown
        );
    }

    #[test]
    fn the_kv_budget_refuses_what_exceeds_its_limit() {
        let b = KvBudget::new(100);
        assert!(b.take(60));
        assert!(!b.take(50));
        b.give(20);
        assert!(b.take(50));
        assert!(!b.take(11));
        let unbounded = KvBudget::new(0);
        assert!(unbounded.take(usize::MAX));
    }
}

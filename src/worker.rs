//! Worker threads: each owns a KV cache over the shared weights and takes
//! jobs from its own slot (jobs routed to it because its cache holds their
//! prefix) or from the engine's shared bounded queue.  A job carries its
//! deadline and cancel tokens; the worker drops a job whose caller has given
//! up before it starts, and checks again between prompt chunks and tokens.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, SendTimeoutError, Sender};
use parking_lot::Mutex;

use crate::cancel::CancelToken;
use crate::constraint::Constraint;
use crate::embed::{embed, Pooling};
use crate::engine::{Fault, Shared};
use crate::error::{panic_message, Error, ErrorKind, Result};
use crate::generate::{generate, Cache, Completion};
use crate::options::GenerateOptions;

/// Where a job's result goes.
pub enum Output {
    /// The whole completion, to a caller blocked on it.  Capacity 1, so the
    /// worker never blocks on a caller that left.
    Reply(Sender<Result<Completion>>),
    /// Pieces as they come, then the end, to a stream.  Bounded: a consumer
    /// that stops reading makes the worker wait (while still honouring
    /// cancellation and the deadline), never buffer without bound.
    Stream(Sender<StreamEvent>),
    /// An embedding job (no sampling: the tokens' hidden states, pooled),
    /// to a caller blocked on it.  Capacity 1, as `Reply`.
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
    fn interrupted(&self, shutting_down: &AtomicBool) -> Result<()> {
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

    fn finish(self, result: Result<Completion>, shutting_down: &AtomicBool) {
        match &self.output {
            Output::Reply(tx) => {
                let _ = tx.try_send(result);
            }
            Output::Embed(_, tx) => {
                // Only a failure before the job ran comes here (`run_embed`
                // sends its own answer).
                let _ = tx.try_send(result.map(|_| Vec::new()));
            }
            Output::Stream(tx) => {
                // The stream may be full of unread pieces: wait for room a
                // little, but never past the deadline, a cancel or shutdown
                // (so that freeing the engine never waits on a reader).
                let mut event = StreamEvent::Done(result);
                while let Err(SendTimeoutError::Timeout(e)) =
                    tx.send_timeout(event, Duration::from_millis(20))
                {
                    if self.interrupted(shutting_down).is_err() {
                        break;
                    }
                    event = e;
                }
            }
        }
    }
}

/// What the engine knows of a worker, for routing.
#[derive(Default)]
pub struct SlotState {
    pub busy: bool,
    /// The tokens in the worker's KV cache.
    pub tokens: Vec<u32>,
}

/// A worker's private entrance (capacity 1) and its state.
pub struct Slot {
    pub tx: Sender<Job>,
    pub state: Mutex<SlotState>,
}

pub fn run(
    index: usize,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    private: Receiver<Job>,
    queue: Receiver<Job>,
    shutdown: Receiver<()>,
) {
    crate::log::route_panics_to(&shared.logger);
    let mut cache = Cache::new(shared.weights.new_session());
    loop {
        // A job routed here for its cached prefix goes first.
        let job = match private.try_recv() {
            Ok(job) => job,
            Err(_) => select! {
                recv(private) -> job => match job { Ok(job) => job, Err(_) => return },
                recv(queue) -> job => match job { Ok(job) => job, Err(_) => return },
                recv(shutdown) -> _ => return,
            },
        };
        slot.state.lock().busy = true;
        run_job(index, &shared, &slot, &mut cache, job);
    }
}

/// Marks the worker idle with what its cache now holds.  Done before the
/// caller hears the answer, so that its next turn finds the cache.
fn release(slot: &Slot, cache: &Cache) {
    let mut state = slot.state.lock();
    state.busy = false;
    state.tokens.clone_from(&cache.tokens);
}

fn run_job(index: usize, shared: &Shared, slot: &Slot, cache: &mut Cache, mut job: Job) {
    // A job whose caller already gave up is dropped unrun.
    if let Err(e) = job.interrupted(&shared.shutting_down) {
        release(slot, cache);
        job.finish(Err(e), &shared.shutting_down);
        return;
    }
    if let Output::Embed(pooling, tx) = &job.output {
        let result = run_embed(shared, cache, &job, *pooling);
        release(slot, cache);
        let _ = tx.try_send(result);
        return;
    }
    let queue_time = job.enqueued.elapsed();
    let mut constraint = job.constraint.take();
    let interrupt = || job.interrupted(&shared.shutting_down);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if shared.fault == Some(Fault::WorkerPanic) {
            panic!("fault injected by ZEPH_FAULT=worker-panic");
        }
        let mut send_piece = |piece: &str| -> Result<()> {
            let Output::Stream(tx) = &job.output else {
                return Ok(());
            };
            let mut piece = StreamEvent::Piece(piece.to_string());
            loop {
                match tx.send_timeout(piece, Duration::from_millis(20)) {
                    Ok(()) => return Ok(()),
                    Err(SendTimeoutError::Timeout(p)) => {
                        interrupt()?;
                        piece = p;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => {
                        return Err(Error::new(ErrorKind::Cancelled, "the stream was freed"))
                    }
                }
            }
        };
        let sink: Option<crate::generate::Sink> = match job.output {
            Output::Stream(_) => Some(&mut send_piece),
            Output::Reply(_) | Output::Embed(..) => None,
        };
        generate(
            cache,
            &shared.tokenizer,
            &job.tokens,
            &job.options,
            job.seed,
            &interrupt,
            sink,
            constraint.as_mut(),
        )
    }));
    let result = match outcome {
        Ok(Ok(mut completion)) => {
            completion.usage.queue_time = queue_time;
            completion.usage.worker = index;
            Ok(completion)
        }
        Ok(Err(e)) => Err(e),
        Err(payload) => {
            // The cache may be half-written: start the next job clean.
            *cache = Cache::new(shared.weights.new_session());
            Err(Error::new(
                ErrorKind::Panic,
                format!("inference panicked: {}", panic_message(payload.as_ref())),
            ))
        }
    };
    release(slot, cache);
    job.finish(result, &shared.shutting_down);
}

/// An embedding job's work, with panics caught as for generation.
fn run_embed(shared: &Shared, cache: &mut Cache, job: &Job, pooling: Pooling) -> Result<Vec<f32>> {
    let interrupt = || job.interrupted(&shared.shutting_down);
    let n_embd = shared.weights.info().embedding_length;
    catch_unwind(AssertUnwindSafe(|| {
        embed(cache, &job.tokens, n_embd, pooling, &interrupt)
    }))
    .unwrap_or_else(|payload| {
        *cache = Cache::new(shared.weights.new_session());
        Err(Error::new(
            ErrorKind::Panic,
            format!("embedding panicked: {}", panic_message(payload.as_ref())),
        ))
    })
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
}

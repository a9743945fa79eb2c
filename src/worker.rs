//! Worker threads: each owns a KV cache over the shared weights and takes
//! jobs from the engine's bounded queue.  A job carries its deadline and a
//! cancel flag; the worker drops a job whose caller has given up before it
//! starts, and checks again between prompt chunks and between tokens.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};

use crate::engine::{Fault, Shared};
use crate::error::{panic_message, Error, ErrorKind, Result};
use crate::generate::{generate, Completion};
use crate::options::GenerateOptions;

pub struct Job {
    pub tokens: Vec<u32>,
    pub options: GenerateOptions,
    pub seed: u64,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// Set by the caller when it stops waiting (timeout, shutdown).
    pub cancel: Arc<AtomicBool>,
    /// Capacity 1, so the worker never blocks on a caller that left.
    pub reply: Sender<Result<Completion>>,
}

impl Job {
    /// Why this job must not go on, if it must not.
    fn interrupted(&self, shutting_down: &AtomicBool) -> Result<()> {
        if shutting_down.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::Shutdown,
                "the engine is shutting down",
            ))
        } else if self.cancel.load(Ordering::Acquire)
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
                "the request's deadline passed",
            ))
        } else {
            Ok(())
        }
    }
}

pub fn run(shared: Arc<Shared>, queue: Receiver<Job>, shutdown: Receiver<()>) {
    let mut session = shared.weights.new_session();
    loop {
        let job = select! {
            recv(queue) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(shutdown) -> _ => return,
        };
        // A job whose caller already gave up is dropped unrun.
        if let Err(e) = job.interrupted(&shared.shutting_down) {
            let _ = job.reply.try_send(Err(e));
            continue;
        }
        let queue_time = job.enqueued.elapsed();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if shared.fault == Some(Fault::WorkerPanic) {
                panic!("fault injected by ZEPH_FAULT=worker-panic");
            }
            generate(
                session.as_mut(),
                &shared.tokenizer,
                &job.tokens,
                &job.options,
                job.seed,
                &|| job.interrupted(&shared.shutting_down),
            )
        }));
        let result = match outcome {
            Ok(Ok(mut completion)) => {
                completion.usage.queue_time = queue_time;
                Ok(completion)
            }
            Ok(Err(e)) => Err(e),
            Err(payload) => {
                // The cache may be half-written: start the next job clean.
                session = shared.weights.new_session();
                Err(Error::new(
                    ErrorKind::Panic,
                    format!("inference panicked: {}", panic_message(payload.as_ref())),
                ))
            }
        };
        let _ = job.reply.try_send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelToken;
    use std::time::Duration;

    fn job(deadline_in: Duration) -> Job {
        let now = Instant::now();
        Job {
            tokens: vec![1],
            options: GenerateOptions::default(),
            seed: 0,
            enqueued: now,
            deadline: now + deadline_in,
            cancel: Arc::new(AtomicBool::new(false)),
            reply: crossbeam_channel::bounded(1).0,
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
        j.cancel.store(true, Ordering::Release);
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

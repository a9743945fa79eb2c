//! A cancel token a caller can trip from any thread to stop the requests
//! that carry it, whether they wait in the queue or are running.

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct CancelToken {
    flag: AtomicBool,
    /// Dropped on cancel, which wakes every caller blocked on `rx`.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

impl Default for CancelToken {
    fn default() -> Self {
        let (tx, rx) = bounded(0);
        Self {
            flag: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every request carrying this token, now and later.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.tx.lock().take();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Becomes ready (disconnected) once the token is cancelled.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// A receiver that becomes ready when `token` is cancelled, or never when
/// there is no token: one arm of a `select!` either way.
pub fn cancelled_receiver(token: Option<&std::sync::Arc<CancelToken>>) -> Receiver<()> {
    token.map_or_else(crossbeam_channel::never, |t| t.rx.clone())
}

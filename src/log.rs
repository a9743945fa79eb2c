//! Where the library's messages go: the caller's log callback when it gave
//! one (every message, with its level), else standard error (warnings and
//! errors only, as before callbacks existed).  Nothing else in the crate
//! writes to standard error.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Once};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

/// A log callback: may be called from any of the engine's threads.
pub type LogFn = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// A load-progress callback: the fraction done (0 to 1) in, whether to go
/// on out.  Called on the loading thread only.
pub type ProgressFn = Arc<dyn Fn(f32) -> bool + Send + Sync>;

#[derive(Clone, Default)]
pub struct Logger(pub Option<LogFn>);

impl Logger {
    pub fn log(&self, level: LogLevel, message: &str) {
        match &self.0 {
            Some(f) => f(level, message),
            None if level <= LogLevel::Warn => {
                // The one place the library writes to standard error.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("zeph_llm: {level}: {message}");
                }
            }
            None => {}
        }
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Logger(callback)"
        } else {
            "Logger(stderr)"
        })
    }
}

thread_local! {
    /// Where a panic on this thread is reported, when not standard error.
    static PANIC_LOGGER: RefCell<Option<LogFn>> = const { RefCell::new(None) };
}

/// Sends the report of a panic on the calling thread (one of the engine's
/// own threads) to `logger`'s callback instead of standard error.  The
/// process's panic hook is wrapped once: threads that did not ask keep the
/// previous hook.
pub fn route_panics_to(logger: &Logger) {
    let Some(f) = logger.0.clone() else { return };
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let routed = PANIC_LOGGER.with(|l| match &*l.borrow() {
                Some(f) => {
                    f(LogLevel::Error, &format!("panic: {info}"));
                    true
                }
                None => false,
            });
            if !routed {
                previous(info);
            }
        }));
    });
    PANIC_LOGGER.with(|l| *l.borrow_mut() = Some(f));
}

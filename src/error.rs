//! The core's error type: a kind that maps one-to-one onto a C status code,
//! and a message that names the cause (which file, which option, which limit).

use std::fmt;

/// What went wrong, in the categories a caller can act on.  The ffi layer maps
/// each kind to a stable `zeph_status` number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NullArgument,
    InvalidArgument,
    InvalidUtf8,
    Io,
    Model,
    Tokenizer,
    Template,
    ContextOverflow,
    QueueFull,
    Timeout,
    Cancelled,
    Shutdown,
    Inference,
    Panic,
    /// A structured-output constraint did not compile, or failed.
    Grammar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn model(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Model, message)
    }

    pub fn tokenizer(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Tokenizer, message)
    }

    pub fn inference(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Inference, message)
    }

    /// Prefixes the message with context, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Turns a panic payload into a readable message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// The start of the message of every panic that `ZEPH_FAULT` injects.
pub const INJECTED_PANIC: &str = "fault injected by ZEPH_FAULT";

/// Keeps the panics `ZEPH_FAULT` injects off stderr (no message, no
/// backtrace, whatever `RUST_BACKTRACE` says): they are expected, caught,
/// and reported as `ZEPH_STATUS_PANIC`.  Every other panic still goes to the
/// hook that was there before.  Installed only when `ZEPH_FAULT` is set.
#[cfg(feature = "fault-injection")]
pub fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !panic_message(info.payload()).starts_with(INJECTED_PANIC) {
                previous(info);
            }
        }));
    });
}

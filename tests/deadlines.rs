//! Work on the caller's thread (tokenizing the prompt, rendering the chat
//! template) counts against the request's deadline and observes its cancel
//! token, on the real SmolLM2 model (a byte-level BPE vocabulary).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{greedy, HANG_GUARD};
use zeph_llm::{CancelToken, Engine, EngineOptions, ErrorKind, GenerateOptions, Message};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(&common::model_path("smollm2"), EngineOptions::default()).unwrap()
    })
}

/// `bytes` pseudo-random lowercase letters: one pre-tokenizer piece, the
/// shape that was quadratic.
fn no_spaces(bytes: usize) -> String {
    let mut x = 0x1234_5678u32;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn with_timeout(ms: u64) -> GenerateOptions {
    GenerateOptions {
        timeout: Some(Duration::from_millis(ms)),
        ..greedy(4)
    }
}

#[test]
fn a_256_kib_prompt_without_spaces_returns_by_a_1_s_deadline() {
    let prompt = no_spaces(256 << 10);
    // On a thread, so that a tokenizer that ignored the deadline (this
    // shape once took quadratic time: minutes) fails the guard rather than
    // hanging the test.  How fast it returns is the benchmarks' business.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(engine().complete(&prompt, &with_timeout(1000)));
    });
    let e = rx
        .recv_timeout(HANG_GUARD)
        .expect("no answer long after the 1 s deadline")
        .unwrap_err();
    // Tokenized in time, the prompt (~150k tokens) cannot fit the context;
    // not in time, the deadline stops the tokenizer.
    match e.kind {
        ErrorKind::Timeout => assert!(e.message.contains("tokenizing"), "{}", e.message),
        ErrorKind::ContextOverflow => assert!(e.message.contains("8192"), "{}", e.message),
        other => panic!("{other:?}: {}", e.message),
    }
}

#[test]
fn a_deadline_shorter_than_tokenizing_is_a_timeout() {
    // 4 MiB without a space: far more than 1 ms of tokenizing.
    let prompt = no_spaces(4 << 20);
    let e = engine().complete(&prompt, &with_timeout(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
    assert!(e.message.contains("tokenizing the prompt"), "{}", e.message);
    let e = engine()
        .stream_complete(&prompt, &with_timeout(1))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
    let messages = [Message::new("user", prompt.as_str())];
    let e = engine().chat(&messages, &with_timeout(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
    let e = engine()
        .stream_chat(&messages, &with_timeout(1))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
}

#[test]
fn a_cancel_token_stops_tokenizing() {
    let prompt = no_spaces(4 << 20);
    let token = Arc::new(CancelToken::new());
    // Cancelled before the call: the tokenizer is the first to look at the
    // token (every few thousand bytes), and stops.  Tokenized to the end,
    // this prompt would be a context overflow.
    token.cancel();
    let options = GenerateOptions {
        cancel: Some(token),
        ..greedy(4)
    };
    let e = engine().complete(&prompt, &options).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{}", e.message);
}

#[test]
fn tokenize_stops_at_shutdown() {
    let e = Engine::new(&common::model_path("smollm2"), EngineOptions::default()).unwrap();
    e.shutdown();
    let err = e.tokenize(&no_spaces(1 << 20), false, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Shutdown, "{}", err.message);
    // Short texts finish before the first check: tokenizing needs no workers.
    assert!(!e.tokenize("hello", false, false).unwrap().is_empty());
}

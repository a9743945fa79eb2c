//! Engine behaviour on the small fixture models (see tests/fixtures): the
//! worker, deadlines, cancellation, back-pressure and shutdown.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{fixtures, greedy, occupy_a_slot, HANG_GUARD};
use zeph_llm::{CancelToken, Engine, EngineOptions, ErrorKind, FinishReason};

fn tiny(options: EngineOptions) -> Engine {
    Engine::new(&fixtures().join("tiny-llama.gguf"), options).unwrap()
}

/// One worker with one sequence slot: a request waits in the queue while
/// another holds the slot.
fn one_slot(queue_capacity: usize) -> EngineOptions {
    EngineOptions {
        n_workers: 1,
        n_parallel: 1,
        queue_capacity,
        ..Default::default()
    }
}

#[test]
fn tiny_model_loads_and_generates_deterministically() {
    let e = tiny(EngineOptions::default());
    assert_eq!(e.info().architecture, "llama");
    assert_eq!(e.info().context_length, 4096);
    let a = e.complete("hello", &greedy(20)).unwrap();
    let b = e.complete("hello", &greedy(20)).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.usage.finish_reason, FinishReason::Length);
    assert_eq!(a.usage.completion_tokens, 20);
    // The fixture never ends by itself, so long requests stay long.
    let long = e.complete("a", &greedy(4000)).unwrap();
    assert_eq!(long.usage.completion_tokens, 4000);
}

#[test]
fn broken_tensor_shape_is_an_inference_error() {
    // bad-shape.gguf has embeddings for the first 64 tokens only.
    let e = Engine::new(&fixtures().join("bad-shape.gguf"), EngineOptions::default()).unwrap();
    let err = e.complete("hello", &greedy(4)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Inference, "{err}");
    // The worker survives and reports the same again.
    let err = e.complete("hello", &greedy(4)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Inference);
}

#[test]
fn context_overflow_names_the_numbers() {
    let e = tiny(EngineOptions::default());
    let err = e.complete("hello", &greedy(5000)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextOverflow);
    assert!(
        err.message.contains("5000") && err.message.contains("4096"),
        "{err}"
    );
    let e = tiny(EngineOptions {
        context_length: 16,
        ..Default::default()
    });
    assert_eq!(e.info().context_length, 16);
    let err = e.complete("hello", &greedy(12)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextOverflow);
}

#[test]
fn timeout_returns_and_the_worker_is_free_for_the_next_request() {
    let e = tiny(one_slot(4));
    // Queued behind a request that holds the only slot, a 1 ms deadline
    // passes before the worker can take it.
    let holder = occupy_a_slot(&e);
    let mut o = greedy(50);
    o.timeout = Some(Duration::from_millis(1));
    let err = e.complete(&"x".repeat(200), &o).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    drop(holder);
    // The worker does not run the request that gave up: the next one gets
    // the slot (within the guard, which only catches a hang).
    let mut o = greedy(2);
    o.timeout = Some(HANG_GUARD);
    let c = e.complete("hi", &o).unwrap();
    assert_eq!(c.usage.completion_tokens, 2);
}

#[test]
fn cancel_token_stops_a_running_request_from_another_thread() {
    let e = tiny(one_slot(4));
    let token = Arc::new(CancelToken::new());
    let mut o = greedy(4000);
    o.cancel = Some(token.clone());
    // Streamed, so that its first piece says the worker runs it; not read
    // meanwhile, it pauses, so it cannot end before the token is cancelled.
    let running = e.stream_complete("a", &o).unwrap();
    assert!(running.next(HANG_GUARD).unwrap().is_some());
    let canceller = token.clone();
    thread::spawn(move || canceller.cancel()).join().unwrap();
    let err = loop {
        match running.next(HANG_GUARD) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the request ended by itself"),
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    // A blocking call, waiting in the queue behind a slot holder, is woken
    // by its token from another thread.
    let e = Arc::new(e);
    let holder = occupy_a_slot(&e);
    let token = Arc::new(CancelToken::new());
    let mut o = greedy(2);
    o.cancel = Some(token.clone());
    let caller = {
        let e = e.clone();
        thread::spawn(move || e.complete("a", &o))
    };
    token.cancel();
    let err = caller.join().unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    drop(holder);
    // An already-cancelled token fails at once, without queueing.
    let mut o = greedy(2);
    o.cancel = Some(token);
    assert_eq!(e.complete("a", &o).unwrap_err().kind, ErrorKind::Cancelled);
}

#[test]
fn full_queue_is_reported_not_dropped() {
    let e = tiny(one_slot(1));
    let holder = occupy_a_slot(&e);
    // The one place in the queue: a stream call returns once it is queued.
    let token = Arc::new(CancelToken::new());
    let mut o = greedy(4000);
    o.cancel = Some(token.clone());
    let queued = e.stream_complete("a", &o).unwrap();
    // Nothing leaves the queue while the holder keeps the slot.
    let mut o = greedy(2);
    o.timeout = Some(Duration::from_millis(100));
    let err = e.complete("b", &o).unwrap_err();
    assert_eq!(err.kind, ErrorKind::QueueFull, "{err}");
    token.cancel();
    assert_eq!(
        queued.next(HANG_GUARD).unwrap_err().kind,
        ErrorKind::Cancelled
    );
    drop(holder);
    let mut o = greedy(2);
    o.timeout = Some(HANG_GUARD);
    assert!(e.complete("b", &o).is_ok());
}

#[test]
fn a_request_that_gave_up_does_not_keep_its_queue_place() {
    let e = tiny(one_slot(1));
    let holder = occupy_a_slot(&e);
    // Takes the only place in the queue, then times out there.
    let mut o = greedy(2);
    o.timeout = Some(Duration::from_millis(50));
    assert_eq!(e.complete("b", &o).unwrap_err().kind, ErrorKind::Timeout);
    // Its place is free again: this one gets in, then times out waiting
    // for the worker (not QUEUE_FULL).
    o.timeout = Some(Duration::from_millis(150));
    let err = e.complete("c", &o).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    drop(holder);
}

#[test]
fn shutdown_wakes_every_waiting_caller_and_refuses_later_calls() {
    let e = Arc::new(tiny(one_slot(4)));
    // One request running (the holder), three waiting behind it, queued or
    // about to be: shutdown answers them all, wherever they are.
    let holder = occupy_a_slot(&e);
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            thread::spawn(move || e.complete("a", &greedy(4000)))
        })
        .collect();
    e.shutdown();
    for c in callers {
        assert_eq!(c.join().unwrap().unwrap_err().kind, ErrorKind::Shutdown);
    }
    let mut last = holder.next(HANG_GUARD);
    while let Ok(Some(_)) = last {
        last = holder.next(HANG_GUARD);
    }
    assert_eq!(last.unwrap_err().kind, ErrorKind::Shutdown);
    assert_eq!(
        e.complete("a", &greedy(2)).unwrap_err().kind,
        ErrorKind::Shutdown
    );
    e.shutdown();
}

#[test]
fn concurrent_callers_get_their_own_answers() {
    let e = Arc::new(tiny(EngineOptions {
        n_workers: 2,
        ..Default::default()
    }));
    let want = e.complete("same prompt", &greedy(8)).unwrap().tokens;
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let e = e.clone();
            thread::spawn(move || e.complete("same prompt", &greedy(8)).unwrap().tokens)
        })
        .collect();
    for c in callers {
        assert_eq!(c.join().unwrap(), want);
    }
}

#[test]
fn hostile_files_are_errors_not_crashes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        ("empty.gguf", vec![], ErrorKind::Model),
        (
            "text.gguf",
            b"this is not a model at all, not even close".to_vec(),
            ErrorKind::Model,
        ),
        ("header.gguf", good[..64].to_vec(), ErrorKind::Model),
        (
            "half.gguf",
            good[..good.len() / 2].to_vec(),
            ErrorKind::Model,
        ),
        (
            "tail-cut.gguf",
            good[..good.len() - 1].to_vec(),
            ErrorKind::Model,
        ),
        (
            "huge-count.gguf",
            {
                // Claim 2^60 metadata entries.
                let mut b = good.clone();
                b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
            ErrorKind::Model,
        ),
        (
            "arch.gguf",
            {
                // Same length, another architecture name.
                let mut b = good.clone();
                let at = b.windows(5).position(|w| w == b"llama").unwrap();
                b[at..at + 5].copy_from_slice(b"zorro");
                b
            },
            ErrorKind::Model,
        ),
    ];
    for (name, bytes, kind) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        match Engine::new(&path, EngineOptions::default()) {
            Ok(_) => panic!("{name} loaded"),
            Err(e) => assert_eq!(e.kind, kind, "{name}: {e}"),
        }
    }
    let e = Engine::new(&dir.join("missing.gguf"), EngineOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Io);
    assert!(e.message.contains("missing.gguf"));
}

#[test]
fn every_architecture_loads_generates_deterministically_and_reports_its_context() {
    for (file, arch, context, template) in [
        ("tiny-llama.gguf", "llama", 4096, "builtin:chatml"),
        ("tiny-qwen2.gguf", "qwen2", 2048, "builtin:chatml"),
        ("tiny-qwen3.gguf", "qwen3", 1024, "builtin:chatml"),
        ("tiny-phi3.gguf", "phi3", 512, "builtin:chatml"),
        ("tiny-gemma3.gguf", "gemma3", 300, "builtin:gemma"),
    ] {
        let e = Engine::new(&fixtures().join(file), EngineOptions::default()).unwrap();
        assert_eq!(e.info().architecture, arch);
        assert_eq!(e.info().context_length, context, "{arch}");
        assert_eq!(e.info().vocab_size, 259, "{arch}");
        assert_eq!(e.chat_template_origin(), template, "{arch}");
        // Past gemma3's 8-token window and across prompt chunks.
        let prompt = "hello there, ".repeat(8);
        let a = e.complete(&prompt, &greedy(40)).unwrap();
        let b = e.complete(&prompt, &greedy(40)).unwrap();
        assert_eq!(a.tokens, b.tokens, "{arch}");
        assert_eq!(a.usage.completion_tokens, 40, "{arch}");
        // One pass or chunk by chunk (with the cache and masks offset) or
        // token by token: the same logits.
        let mut gguf = zeph_llm::gguf::Gguf::open(&fixtures().join(file)).unwrap();
        let weights = zeph_llm::model::load(&mut gguf, 0, 2).unwrap();
        let ids: Vec<u32> = (0..150u32).map(|i| 32 + i % 90).collect();
        let whole = weights.new_session().forward(&ids, 0).unwrap();
        for step in [64, 1] {
            let mut s = weights.new_session();
            let mut last = Vec::new();
            for (n, chunk) in ids.chunks(step).enumerate() {
                last = s.forward(chunk, n * step).unwrap();
            }
            let diff = whole
                .iter()
                .zip(&last)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-3, "{arch}: step {step}: max difference {diff}");
        }
    }
    let err = Engine::new(
        &fixtures().join("tiny-llama.gguf"),
        EngineOptions::default(),
    )
    .map(|_| ())
    .and_then(|_| {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let mut b = std::fs::read(fixtures().join("tiny-qwen2.gguf")).unwrap();
        let at = b.windows(5).position(|w| w == b"qwen2").unwrap();
        b[at..at + 5].copy_from_slice(b"zorro");
        std::fs::write(dir.join("zorro.gguf"), b).unwrap();
        Engine::new(&dir.join("zorro.gguf"), EngineOptions::default()).map(|_| ())
    })
    .unwrap_err();
    assert!(
        err.message.contains("zorro") && err.message.contains("gemma3"),
        "{err}"
    );
}

#[test]
fn an_external_tokenizer_json_overrides_the_gguf_vocabulary() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
        "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":5,"world":6},
        "unk_token":"[UNK]"}}"#;
    std::fs::write(dir.join("wordlevel.json"), json).unwrap();
    let e = tiny(EngineOptions {
        tokenizer_path: Some(dir.join("wordlevel.json")),
        ..Default::default()
    });
    assert_eq!(
        e.tokenizer().encode("hello world", false, false).unwrap(),
        vec![5, 6]
    );
    assert_eq!(
        e.tokenizer().encode("hello there", false, false).unwrap(),
        vec![5, 0]
    );
    // Without it, the GGUF's byte-level vocabulary: one id per byte here.
    let plain = tiny(EngineOptions::default());
    assert_eq!(
        plain
            .tokenizer()
            .encode("hello world", false, false)
            .unwrap()
            .len(),
        11
    );
}

#[test]
fn an_unknown_pre_tokenizer_falls_back_with_a_warning() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut b = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    // "default" -> "dEfault": same length, a name llama.cpp does not know.
    let at = b.windows(7).position(|w| w == b"default").unwrap();
    b[at + 1] = b'E';
    std::fs::write(dir.join("weird-pre.gguf"), b).unwrap();
    let gguf = zeph_llm::gguf::Gguf::open(&dir.join("weird-pre.gguf")).unwrap();
    let tok = zeph_llm::tokenizer::Tokenizer::load(&gguf, None).unwrap();
    assert!(
        tok.warning.as_deref().unwrap_or("").contains("dEfault"),
        "{:?}",
        tok.warning
    );
    let known = zeph_llm::gguf::Gguf::open(&fixtures().join("tiny-llama.gguf")).unwrap();
    assert!(zeph_llm::tokenizer::Tokenizer::load(&known, None)
        .unwrap()
        .warning
        .is_none());
}

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn an_absurd_context_length_allocates_nothing_up_front() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut b = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    // The value follows the key and its u32 type tag.
    let key = b"llama.context_length";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    b[at..at + 4].copy_from_slice(&(1u32 << 24).to_le_bytes());
    std::fs::write(dir.join("huge-context.gguf"), b).unwrap();
    let before = peak_rss();
    let e = Engine::new(&dir.join("huge-context.gguf"), EngineOptions::default()).unwrap();
    assert_eq!(e.info().context_length, 1 << 24);
    let c = e.complete("hello", &greedy(8)).unwrap();
    assert_eq!(c.usage.completion_tokens, 8);
    // Tables sized to 16M positions would take gigabytes.
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 256 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

//! Streams, cancellation and conversations that reuse their KV cache.

mod common;

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use common::{greedy, occupy_a_slot, HANG_GUARD};
use zeph_llm::{CancelToken, Engine, EngineOptions, ErrorKind, FinishReason, Message};

fn smollm2() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(&common::model_path("smollm2"), EngineOptions::default()).unwrap()
    })
}

fn tiny(options: EngineOptions) -> Engine {
    Engine::new(&common::fixtures().join("tiny-llama.gguf"), options).unwrap()
}

fn collect(stream: &zeph_llm::engine::Stream) -> Vec<String> {
    let mut pieces = Vec::new();
    while let Some(p) = stream.next(HANG_GUARD).unwrap() {
        pieces.push(p);
    }
    pieces
}

#[test]
fn pieces_add_up_to_the_blocking_answer() {
    for prompt in ["The capital of France is", "Emoji: 🦀🚀 and 日本語 are"] {
        let o = greedy(24);
        let whole = smollm2().complete(prompt, &o).unwrap();
        let stream = smollm2().stream_complete(prompt, &o).unwrap();
        let pieces = collect(&stream);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), whole.text, "{prompt}");
        assert!(pieces.iter().all(|p| !p.is_empty()));
        let usage = stream.usage().unwrap();
        assert_eq!(usage.completion_tokens, whole.usage.completion_tokens);
        assert_eq!(usage.finish_reason, whole.usage.finish_reason);
    }
}

#[test]
fn a_stop_string_split_across_pieces_is_never_shown() {
    let mut o = greedy(24);
    // " population" arrives as two tokens: " pop" ... the text before it
    // must come out, the stop string must not.
    o.stop = vec![" population".into(), "Paris.\n\nThe Un".into()];
    let stream = smollm2()
        .stream_complete("The capital of France is", &o)
        .unwrap();
    let text = collect(&stream).concat();
    assert_eq!(text, " ");
    assert_eq!(
        stream.usage().unwrap().finish_reason,
        FinishReason::StopString
    );
    o.stop = vec![" population".into()];
    let stream = smollm2()
        .stream_complete("The capital of France is", &o)
        .unwrap();
    assert_eq!(
        collect(&stream).concat(),
        " Paris.\n\nThe United States has a"
    );
}

#[test]
fn chat_streams_too() {
    let m = [Message::new("user", "What is 2+2?")];
    let whole = smollm2().chat(&m, &greedy(16)).unwrap();
    let stream = smollm2().stream_chat(&m, &greedy(16)).unwrap();
    assert_eq!(collect(&stream).concat(), whole.text);
}

/// One worker with one sequence slot.
fn one_slot() -> EngineOptions {
    EngineOptions {
        n_workers: 1,
        n_parallel: 1,
        ..Default::default()
    }
}

/// Runs a request beside `stream` (on an engine with a free slot) long
/// enough that the stream, unread, has certainly filled its buffer and
/// paused: it runs in every step the other request needs (one per token),
/// far more than its buffer holds.
fn until_paused(e: &Engine) {
    let c = e.complete("b", &greedy(200)).unwrap();
    assert_eq!(c.usage.completion_tokens, 200);
}

#[test]
fn next_with_a_short_timeout_lets_the_stream_go_on() {
    let e = tiny(one_slot());
    // Queued behind a request that holds the only slot, the stream has no
    // piece yet: a zero wait times out.
    let holder = occupy_a_slot(&e);
    let stream = e.stream_complete("a", &greedy(300)).unwrap();
    assert_eq!(
        stream.next(Duration::ZERO).unwrap_err().kind,
        ErrorKind::Timeout
    );
    drop(holder);
    // And the stream goes on.
    assert!(!collect(&stream).is_empty());
    assert_eq!(stream.usage().unwrap().completion_tokens, 300);
}

#[test]
fn cancel_from_another_thread_ends_the_stream() {
    let e = tiny(EngineOptions::default());
    let stream = Arc::new(e.stream_complete("a", &greedy(4000)).unwrap());
    assert!(stream.next(HANG_GUARD).unwrap().is_some());
    let s = stream.clone();
    let mut canceller = Some(thread::spawn(move || s.cancel()));
    let mut read = 0;
    let err = loop {
        // Read on while the other thread cancels; after some pieces, wait
        // for it: unread, the stream pauses, so it cannot end first.
        if read == 50 {
            canceller.take().unwrap().join().unwrap();
        }
        match stream.next(HANG_GUARD) {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended on its own"),
            Err(e) => break e,
        }
    };
    if let Some(t) = canceller {
        t.join().unwrap();
    }
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(
        stream.usage().unwrap().finish_reason,
        FinishReason::Cancelled
    );
    // And it stays ended.
    assert_eq!(
        stream.next(Duration::ZERO).unwrap_err().kind,
        ErrorKind::Cancelled
    );
}

#[test]
fn the_request_deadline_ends_a_stream_with_timeout() {
    let e = tiny(EngineOptions::default());
    let deadline = Duration::from_millis(50);
    let mut o = greedy(4000);
    o.timeout = Some(deadline);
    let stream = e.stream_complete("a", &o).unwrap();
    // Unread, the stream pauses once its buffer is full: it cannot end
    // before its deadline, which has passed once this sleep returns.
    thread::sleep(deadline);
    let err = loop {
        match stream.next(HANG_GUARD) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended before its deadline"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(stream.usage().unwrap().finish_reason, FinishReason::Timeout);
}

#[test]
fn an_unread_stream_does_not_buffer_without_bound() {
    let e = tiny(EngineOptions::default());
    let stream = e.stream_complete("a", &greedy(4000)).unwrap();
    until_paused(&e);
    // The worker ran 200 steps beside the stream: unbounded, it would hold
    // some 200 pieces; it ran ahead by its buffer (32) at most, then waited.
    // (Counted while the worker may refill what is read: a few at most.)
    let mut ready = 0;
    while let Ok(Some(_)) = stream.next(Duration::ZERO) {
        ready += 1;
    }
    assert!((32..=100).contains(&ready), "{ready} pieces were waiting");
    // Reading again lets it finish.
    while stream.next(HANG_GUARD).unwrap().is_some() {}
    assert_eq!(stream.usage().unwrap().completion_tokens, 4000);
}

#[test]
fn a_freed_stream_cancels_its_work() {
    let e = tiny(EngineOptions {
        n_workers: 1,
        n_parallel: 2,
        ..Default::default()
    });
    let stream = e.stream_complete("a", &greedy(4000)).unwrap();
    // Paused with a full buffer, the stream can no longer end by itself:
    // only cancelling it frees its slot.
    until_paused(&e);
    let holder = occupy_a_slot(&e);
    drop(stream);
    // The other slot is held: this request runs only in the freed one.
    let mut o = greedy(2);
    o.timeout = Some(HANG_GUARD);
    let c = e.complete("b", &o).unwrap();
    assert_eq!(c.usage.completion_tokens, 2);
    drop(holder);
}

#[test]
fn a_blocking_call_is_cancelled_by_its_token() {
    let e = Arc::new(tiny(one_slot()));
    // Waiting behind a request that holds the only slot, the call cannot
    // end by itself before its token is cancelled.
    let holder = occupy_a_slot(&e);
    let token = Arc::new(CancelToken::new());
    let mut o = greedy(4000);
    o.cancel = Some(token.clone());
    let e2 = e.clone();
    let t = thread::spawn(move || e2.complete("a", &o));
    token.cancel();
    assert_eq!(t.join().unwrap().unwrap_err().kind, ErrorKind::Cancelled);
    drop(holder);
}

#[test]
fn a_second_turn_reuses_the_history_and_answers_the_same() {
    // An engine of its own: other tests' requests would evict its cache.
    let e = &Engine::new(&common::model_path("smollm2"), EngineOptions::default()).unwrap();
    let history = "Tell me about the sea. ".repeat(40);
    let mut messages = vec![Message::new("user", history.as_str())];
    let first = e.chat(&messages, &greedy(12)).unwrap();
    messages.push(Message::new("assistant", first.text.as_str()));
    messages.push(Message::new("user", "And the mountains?"));

    let reused = e.chat(&messages, &greedy(12)).unwrap();
    let mut fresh_options = greedy(12);
    fresh_options.cache_prompt = false;
    let fresh = e.chat(&messages, &fresh_options).unwrap();
    assert_eq!(reused.tokens, fresh.tokens);
    assert_eq!(fresh.usage.cached_tokens, 0);
    // All of the first turn's prompt was reused (and its answer, as far as
    // the template's re-tokenization of it matches what was generated).
    assert!(
        reused.usage.cached_tokens >= first.usage.prompt_tokens,
        "{} cached of {}",
        reused.usage.cached_tokens,
        first.usage.prompt_tokens
    );
    // An edited history is rebuilt correctly.
    messages[0] = Message::new("user", "Tell me about the desert.");
    let edited = e.chat(&messages, &greedy(12)).unwrap();
    let mut fresh_options = greedy(12);
    fresh_options.cache_prompt = false;
    assert_eq!(
        edited.tokens,
        e.chat(&messages, &fresh_options).unwrap().tokens
    );
}

#[test]
fn turns_go_to_the_worker_that_holds_their_cache() {
    let e = tiny(EngineOptions {
        n_workers: 3,
        ..Default::default()
    });
    let a = "conversation A: ".repeat(20);
    let b = "conversation B: ".repeat(20);
    let first_a = e.complete(&a, &greedy(4)).unwrap();
    let first_b = e.complete(&b, &greedy(4)).unwrap();
    for _ in 0..3 {
        let next_a = e.complete(&format!("{a} more"), &greedy(4)).unwrap();
        assert!(next_a.usage.cached_tokens > 0);
        let next_b = e.complete(&format!("{b} more"), &greedy(4)).unwrap();
        assert!(next_b.usage.cached_tokens > 0);
        assert_eq!(next_a.usage.worker, first_a.usage.worker);
        assert_eq!(next_b.usage.worker, first_b.usage.worker);
    }
}

#[test]
fn a_conversation_that_outgrows_the_context_is_an_error() {
    let e = tiny(EngineOptions {
        context_length: 200,
        ..Default::default()
    });
    let long = "x".repeat(190);
    let err = e.complete(&long, &greedy(20)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextOverflow);
}

#[test]
fn freeing_the_engine_does_not_wait_for_an_unread_stream() {
    let e = tiny(EngineOptions::default());
    let stream = e.stream_complete("a", &greedy(4000)).unwrap();
    // The worker has filled the stream's buffer and waits for a reader.
    until_paused(&e);
    let (done, freed) = std::sync::mpsc::channel();
    thread::spawn(move || {
        drop(e);
        done.send(()).unwrap();
    });
    assert!(
        freed.recv_timeout(HANG_GUARD).is_ok(),
        "freeing the engine hangs on the unread stream"
    );
    // The stream outlives its engine safely: it reports the shutdown.
    let mut last = stream.next(HANG_GUARD);
    while let Ok(Some(_)) = last {
        last = stream.next(HANG_GUARD);
    }
    assert_eq!(last.unwrap_err().kind, ErrorKind::Shutdown);
}

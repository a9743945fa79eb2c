//! Streams, cancellation and conversations that reuse their KV cache.

mod common;

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::greedy;
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
    while let Some(p) = stream.next(Duration::from_secs(60)).unwrap() {
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

#[test]
fn next_with_a_short_timeout_lets_the_stream_go_on() {
    let e = tiny(EngineOptions::default());
    let stream = e.stream_complete("a", &greedy(3000)).unwrap();
    let mut timeouts = 0;
    let mut pieces = 0;
    loop {
        match stream.next(Duration::from_millis(0)) {
            Err(err) if err.kind == ErrorKind::Timeout => {
                timeouts += 1;
                thread::sleep(Duration::from_millis(1));
            }
            Ok(Some(_)) => pieces += 1,
            Ok(None) => break,
            Err(err) => panic!("{err}"),
        }
    }
    assert!(timeouts > 0);
    assert!(pieces > 0);
    assert_eq!(stream.usage().unwrap().completion_tokens, 3000);
}

#[test]
fn cancel_from_another_thread_ends_the_stream() {
    let e = tiny(EngineOptions::default());
    let stream = Arc::new(e.stream_complete("a", &greedy(4000)).unwrap());
    assert!(stream.next(Duration::from_secs(10)).unwrap().is_some());
    let s = stream.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        let at = Instant::now();
        s.cancel();
        at
    });
    let err = loop {
        match stream.next(Duration::from_secs(10)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended on its own"),
            Err(e) => break e,
        }
    };
    let cancelled_at = t.join().unwrap();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    println!("cancel to return: {:?}", cancelled_at.elapsed());
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
    let mut o = greedy(4000);
    o.timeout = Some(Duration::from_millis(50));
    let stream = e.stream_complete("a", &o).unwrap();
    let err = loop {
        match stream.next(Duration::from_secs(10)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("4000 tokens in 50 ms"),
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
    thread::sleep(Duration::from_millis(300));
    let mut ready = 0;
    while let Ok(Some(_)) = stream.next(Duration::ZERO) {
        ready += 1;
    }
    // The worker ran ahead by at most the stream's buffer, then waited.
    assert!((1..=40).contains(&ready), "{ready} pieces were waiting");
    // Reading again lets it finish.
    while stream.next(Duration::from_secs(60)).unwrap().is_some() {}
    assert_eq!(stream.usage().unwrap().completion_tokens, 4000);
}

#[test]
fn a_freed_stream_cancels_its_work() {
    let e = tiny(EngineOptions {
        n_workers: 1,
        ..Default::default()
    });
    let stream = e.stream_complete("a", &greedy(4000)).unwrap();
    assert!(stream.next(Duration::from_secs(10)).unwrap().is_some());
    drop(stream);
    // The one worker is free again: a short request is not queued behind
    // the rest of the 4,000 tokens.
    let c = e.complete("b", &greedy(2)).unwrap();
    let solo = e.complete("c", &greedy(2)).unwrap();
    assert!(
        c.usage.queue_time < solo.usage.generation_time * 20 + Duration::from_millis(50),
        "queued {:?}",
        c.usage.queue_time
    );
}

#[test]
fn a_blocking_call_is_cancelled_by_its_token() {
    let e = Arc::new(tiny(EngineOptions::default()));
    let token = Arc::new(CancelToken::new());
    let mut o = greedy(4000);
    o.cancel = Some(token.clone());
    let e2 = e.clone();
    let t = thread::spawn(move || e2.complete("a", &o));
    thread::sleep(Duration::from_millis(30));
    let at = Instant::now();
    token.cancel();
    assert_eq!(t.join().unwrap().unwrap_err().kind, ErrorKind::Cancelled);
    println!("blocking cancel to return: {:?}", at.elapsed());
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
    // Let the worker fill the stream's buffer and wait for a reader.
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    drop(e);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The stream outlives its engine safely: it reports the shutdown.
    let mut last = stream.next(Duration::from_secs(1));
    while let Ok(Some(_)) = last {
        last = stream.next(Duration::from_secs(1));
    }
    assert_eq!(last.unwrap_err().kind, ErrorKind::Shutdown);
}

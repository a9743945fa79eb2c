//! Continuous batching: sequences that run together in one forward pass
//! give the same answers as when they run alone, and one sequence's fate
//! (cancelled, timed out, an unread stream) does not change the others'.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{greedy, HANG_GUARD};
use zeph_llm::engine::Stream;
use zeph_llm::model::{self, SeqInput};
use zeph_llm::{
    CancelToken, Completion, Engine, EngineOptions, ErrorKind, FinishReason, GenerateOptions,
};

const PROMPTS: [&str; 8] = [
    "The history of the printing press",
    "Write a short poem about the sea.",
    "List three uses of copper:",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
    "Tell me a joke about computers.",
];

fn engine(name: &str, n_parallel: usize) -> Engine {
    Engine::new(
        &common::model_path(name),
        EngineOptions {
            n_workers: 1,
            n_parallel,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Greedy for even indices, seeded sampling for odd ones.
fn options(i: usize, max_tokens: usize) -> GenerateOptions {
    let mut o = greedy(max_tokens);
    if i % 2 == 1 {
        o.sampling = Default::default();
        o.seed = Some(1000 + i as u64);
    }
    o
}

fn concurrently(e: &Arc<Engine>, max_tokens: usize) -> Vec<Completion> {
    let callers: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let e = e.clone();
            thread::spawn(move || e.complete(p, &options(i, max_tokens)).unwrap())
        })
        .collect();
    callers.into_iter().map(|c| c.join().unwrap()).collect()
}

fn same_answers_alone_together_and_cached(name: &str) {
    let max_tokens = 24;
    // Alone, one at a time, on an engine with a single slot.
    let single = engine(name, 1);
    let alone: Vec<Completion> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut o = options(i, max_tokens);
            o.cache_prompt = false;
            single.complete(p, &o).unwrap()
        })
        .collect();
    drop(single);
    // Eight at once, twice: the second time their prompts are cached.
    let e = Arc::new(engine(name, 8));
    for round in 0..2 {
        let together = concurrently(&e, max_tokens);
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.text, t.text, "{name}: prompt {i}, round {round}");
            assert_eq!(a.tokens, t.tokens, "{name}: prompt {i}, round {round}");
        }
        if round == 1 {
            assert!(
                together.iter().any(|c| c.usage.cached_tokens > 0),
                "{name}: no prompt was reused"
            );
        }
    }
}

#[test]
fn smollm2_answers_do_not_depend_on_the_load() {
    same_answers_alone_together_and_cached("smollm2");
}

#[test]
fn gemma3_answers_do_not_depend_on_the_load() {
    same_answers_alone_together_and_cached("gemma3");
}

#[test]
fn a_batch_of_sequences_gives_each_its_own_logits_bit_for_bit() {
    for name in ["smollm2", "gemma3"] {
        let mut g = zeph_llm::gguf::Gguf::open(&common::model_path(name)).unwrap();
        let w = model::load(&mut g, 0, 2).unwrap();
        let seqs: [Vec<u32>; 3] = [
            (0..70).map(|i| 100 + i * 7).collect(),
            (0..5).map(|i| 300 + i).collect(),
            (0..130).map(|i| 50 + i * 3).collect(),
        ];
        // Each alone.
        let alone: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| {
                let mut session = w.new_session();
                session.forward(s, 0).unwrap()
            })
            .collect();
        // Together: in one forward, then a token each in another.
        let mut b = w.new_batch(3);
        let inputs: Vec<SeqInput> = seqs
            .iter()
            .enumerate()
            .map(|(slot, s)| SeqInput {
                slot,
                tokens: &s[..s.len() - 1],
                logits: false,
            })
            .collect();
        b.forward(&inputs).unwrap();
        let last: Vec<[u32; 1]> = seqs.iter().map(|s| [s[s.len() - 1]]).collect();
        let inputs: Vec<SeqInput> = last
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqInput {
                slot,
                tokens: t,
                logits: true,
            })
            .collect();
        b.forward(&inputs).unwrap();
        for (k, want) in alone.iter().enumerate() {
            assert_eq!(b.logits(k), &want[..], "{name}: sequence {k}");
            assert_eq!(b.len(k), seqs[k].len());
        }
    }
}

/// Every piece of `stream` to its end.
fn text_of(stream: &Stream) -> String {
    let mut text = String::new();
    while let Some(p) = stream.next(HANG_GUARD).unwrap() {
        text.push_str(&p);
    }
    text
}

/// The error `stream` ends with, reading it to there.
fn error_of(stream: &Stream) -> ErrorKind {
    loop {
        match stream.next(HANG_GUARD) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => return e.kind,
        }
    }
}

#[test]
fn a_cancelled_or_timed_out_sequence_leaves_the_others_unchanged() {
    let e = engine("smollm2", 4);
    // Forty tokens each (one of the two would end at once by itself).
    let forty = |i| GenerateOptions {
        ignore_eog: true,
        ..options(i, 40)
    };
    let want: Vec<String> = (0..2)
        .map(|i| e.complete(PROMPTS[i], &forty(i)).unwrap().text)
        .collect();
    let token = Arc::new(CancelToken::new());
    let mut cancelled = greedy(4000);
    cancelled.cancel = Some(token.clone());
    cancelled.ignore_eog = true;
    let mut timed = greedy(4000);
    timed.ignore_eog = true;
    timed.timeout = Some(Duration::from_millis(300));
    // Streams, so that a first piece says a sequence runs: the cancelled one
    // and the two others run together when the token is cancelled.
    let doomed: Vec<Stream> = [cancelled, timed]
        .iter()
        .map(|o| e.stream_complete("Count to a thousand:", o).unwrap())
        .collect();
    let others: Vec<Stream> = (0..2)
        .map(|i| e.stream_complete(PROMPTS[i], &forty(i)).unwrap())
        .collect();
    let mut firsts = Vec::new();
    for s in &others {
        firsts.push(s.next(HANG_GUARD).unwrap().unwrap());
    }
    assert!(doomed[0].next(HANG_GUARD).unwrap().is_some());
    token.cancel();
    // Unread, the timed one pauses: it cannot end before its deadline.
    let kinds: Vec<ErrorKind> = doomed.iter().map(error_of).collect();
    assert_eq!(kinds, [ErrorKind::Cancelled, ErrorKind::Timeout]);
    for ((w, s), first) in want.iter().zip(&others).zip(firsts) {
        assert_eq!(&(first + &text_of(s)), w);
    }
}

#[test]
fn an_unread_stream_pauses_only_its_own_sequence() {
    let e = engine("smollm2", 4);
    let mut o = greedy(4000);
    o.ignore_eog = true;
    let unread = e.stream_complete("Count to a thousand:", &o).unwrap();
    // Its first piece: the worker runs it.
    assert!(unread.next(HANG_GUARD).unwrap().is_some());
    // While that stream waits for a reader, other requests run to the end
    // on the same worker.
    for (i, prompt) in PROMPTS.iter().enumerate().take(3) {
        let mut o = options(i, 32);
        o.ignore_eog = true;
        let c = e.complete(prompt, &o).unwrap();
        assert_eq!(c.usage.completion_tokens, 32);
    }
    // The unread stream was paused, not running ahead or failing: it holds
    // at most its buffer, and reading it lets it go on.
    let mut n = 0;
    while n < 100 {
        assert!(unread.next(HANG_GUARD).unwrap().is_some());
        n += 1;
    }
    unread.cancel();
}

#[test]
fn shutdown_with_eight_sequences_in_flight_returns_every_caller() {
    let e = Arc::new(engine("smollm2", 8));
    // Eight streams, each running once its first piece came ...
    let streams: Vec<Stream> = (0..8)
        .map(|i| {
            let mut o = options(i, 4000);
            o.ignore_eog = true;
            e.stream_complete(PROMPTS[i], &o).unwrap()
        })
        .collect();
    for s in &streams {
        assert!(s.next(HANG_GUARD).unwrap().is_some());
    }
    // ... and two blocking callers waiting for a slot (or about to).
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let e = e.clone();
            let mut o = greedy(4000);
            o.ignore_eog = true;
            thread::spawn(move || e.complete("waiting", &o))
        })
        .collect();
    e.shutdown();
    for c in callers {
        assert_eq!(c.join().unwrap().unwrap_err().kind, ErrorKind::Shutdown);
    }
    for s in &streams {
        assert_eq!(error_of(s), ErrorKind::Shutdown);
    }
}

#[test]
fn the_kv_memory_bound_refuses_waits_and_then_serves() {
    // SmolLM2 holds 22.5 KiB of KV cache per position, allocated in steps
    // of 256 positions: 8 MiB is room for one request of up to 256
    // positions, not two.
    let e = Arc::new(
        Engine::new(
            &common::model_path("smollm2"),
            EngineOptions {
                n_workers: 1,
                n_parallel: 4,
                kv_memory: 8 << 20,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    // More than the whole bound: refused at once, with the numbers.
    let err = e.complete("a", &greedy(2000)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextOverflow, "{err}");
    assert!(err.message.contains("kv_memory"), "{err}");
    // Two that fit one at a time: the second waits for the first.
    let mut o = greedy(200);
    o.ignore_eog = true;
    let alone = e.complete("The sea", &o).unwrap();
    let both: Vec<_> = (0..2)
        .map(|_| {
            let e = e.clone();
            let o = o.clone();
            thread::spawn(move || e.complete("The sea", &o).unwrap())
        })
        .collect();
    for b in both {
        let c = b.join().unwrap();
        assert_eq!(c.text, alone.text);
        assert_eq!(c.usage.finish_reason, FinishReason::Length);
    }
    // One that cannot wait long enough times out with a clear status.  The
    // memory is held by a stream that runs (its first piece came) and,
    // unread, pauses: it cannot end and give the memory back meanwhile.
    let blocker = e.stream_complete("The land", &o).unwrap();
    assert!(blocker.next(HANG_GUARD).unwrap().is_some());
    let mut short = o.clone();
    short.timeout = Some(Duration::from_millis(100));
    short.cache_prompt = false;
    let err = e.complete("Other", &short).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    drop(blocker);
}

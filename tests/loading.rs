//! Loading from memory, the load-progress callback (which can cancel) and
//! the log callback, on the tiny fixture and on the real model.

mod common;

use std::sync::{Arc, Mutex};

use common::{fixtures, greedy, model_path};
use zeph_llm::log::LogLevel;
use zeph_llm::{Engine, EngineOptions, ErrorKind};

#[test]
fn a_model_from_memory_answers_as_from_its_file() {
    let path = model_path("smollm2");
    let bytes = std::fs::read(&path).unwrap();
    let from_memory = Engine::from_memory(&bytes, EngineOptions::default()).unwrap();
    // The bytes were copied: the buffer may go at once.
    drop(bytes);
    let from_file = Engine::new(&path, EngineOptions::default()).unwrap();
    let a = from_memory
        .complete("The capital of France is", &greedy(12))
        .unwrap();
    let b = from_file
        .complete("The capital of France is", &greedy(12))
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(from_memory.info().name, from_file.info().name);
}

#[test]
fn bytes_that_are_no_model_are_a_model_error() {
    for bytes in [&b""[..], b"GGUF but nothing else", &[0u8; 4096]] {
        let Err(err) = Engine::from_memory(bytes, EngineOptions::default()) else {
            panic!("loaded {} bytes", bytes.len())
        };
        assert_eq!(err.kind, ErrorKind::Model, "{err}");
        assert!(err.message.contains("<memory>"), "{err}");
    }
    let tiny = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let Err(err) = Engine::from_memory(&tiny[..tiny.len() / 2], EngineOptions::default()) else {
        panic!("loaded half a model")
    };
    assert_eq!(err.kind, ErrorKind::Model, "{err}");
}

fn recording(stop_after: Option<usize>) -> (EngineOptions, Arc<Mutex<Vec<f32>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let options = EngineOptions {
        progress: Some(Arc::new(move |p| {
            let mut s = s.lock().unwrap();
            s.push(p);
            stop_after.is_none_or(|n| s.len() < n)
        })),
        ..Default::default()
    };
    (options, seen)
}

#[test]
fn progress_goes_from_0_to_1_and_false_cancels_the_load() {
    let (options, seen) = recording(None);
    Engine::new(&fixtures().join("tiny-llama.gguf"), options).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&0.0));
    assert_eq!(seen.last(), Some(&1.0));
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    // Stopping at each call in turn, the last one included.
    for stop in 1..=seen.len() {
        let (options, calls) = recording(Some(stop));
        let Err(err) = Engine::new(&fixtures().join("tiny-llama.gguf"), options) else {
            panic!("not cancelled at call {stop}")
        };
        assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
        assert_eq!(calls.lock().unwrap().len(), stop);
    }
}

#[test]
fn the_log_callback_receives_the_load_summary() {
    let (options, lines) = common::logging_options();
    let e = Engine::new(&model_path("smollm2"), options).unwrap();
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|(level, m)| *level == LogLevel::Info
            && m.contains(&e.info().name)
            && m.contains("loaded")),
        "{lines:?}"
    );
}

#[test]
fn a_model_loaded_into_memory_outlives_changes_to_its_file() {
    let tiny = fixtures().join("tiny-llama.gguf");
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("load-into-memory-{}.gguf", std::process::id()));
    std::fs::copy(&tiny, &path).unwrap();
    let in_memory = EngineOptions {
        load_into_memory: true,
        ..Default::default()
    };
    let copied = Engine::new(&path, in_memory.clone()).unwrap();
    let mapped = Engine::new(&tiny, EngineOptions::default()).unwrap();
    // Truncated (what kills a process that maps the file, with SIGBUS),
    // then rewritten in place with other bytes: the copy answers as before.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    std::fs::write(&path, b"not a model any more").unwrap();
    let a = copied.complete("hello world", &greedy(16)).unwrap();
    let b = mapped.complete("hello world", &greedy(16)).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text, b.text);
    // What is now in the file is read (and refused) as a model file is,
    // named by its path.
    let Err(err) = Engine::new(&path, in_memory.clone()) else {
        panic!("loaded a file that is no model")
    };
    assert_eq!(err.kind, ErrorKind::Model, "{err}");
    assert!(err.message.contains(&*path.to_string_lossy()), "{err}");
    std::fs::remove_file(&path).unwrap();
    let Err(err) = Engine::new(&path, in_memory) else {
        panic!("loaded a file that is gone")
    };
    assert_eq!(err.kind, ErrorKind::Io, "{err}");
    assert!(err.message.contains(&*path.to_string_lossy()), "{err}");
}

//! A panic in a worker is reported to the log callback, not standard
//! error.  Alone in its test binary: ZEPH_FAULT, read when an engine is
//! made, would inject the fault into any other test's engine.

mod common;

use common::{fixtures, greedy};
use zeph_llm::log::LogLevel;
use zeph_llm::{Engine, ErrorKind};

#[test]
fn a_worker_panic_goes_to_the_log_callback() {
    let (options, lines) = common::logging_options();
    std::env::set_var("ZEPH_FAULT", "worker-panic");
    let e = Engine::new(&fixtures().join("tiny-llama.gguf"), options).unwrap();
    std::env::remove_var("ZEPH_FAULT");
    let err = e.complete("hello", &greedy(2)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Panic);
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|(level, m)| *level == LogLevel::Error && m.contains("ZEPH_FAULT")),
        "{lines:?}"
    );
}

//! A panic in a worker is reported to the log callback, not standard
//! error.  Alone in its test binary: ZEPH_FAULT, read when an engine is
//! made, would inject the fault into any other test's engine.

mod common;

use std::sync::{Arc, Mutex};

use common::{fixtures, greedy};
use zeph_llm::log::{LogLevel, Logger};
use zeph_llm::{Engine, EngineOptions, ErrorKind};

#[test]
fn a_worker_panic_goes_to_the_log_callback() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let options = EngineOptions {
        logger: Logger(Some(Arc::new(move |level, message: &str| {
            l.lock().unwrap().push((level, message.to_string()))
        }))),
        ..Default::default()
    };
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

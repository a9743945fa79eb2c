//! Bytes as a model file, all the way to an engine: loading must give an
//! engine or an error; an engine must answer a short request or fail with a
//! status, never crash.  Seeds: the fixture models (tests/fixtures).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zeph_llm::{Engine, EngineOptions, GenerateOptions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_file(data);
    let options = EngineOptions {
        n_threads: 1,
        ..Default::default()
    };
    if let Ok(e) = Engine::new(&path, options) {
        let o = GenerateOptions {
            max_tokens: 2,
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let _ = e.complete("a", &o);
        let _ = e.tokenize("hello <s> world", true, true);
    }
});

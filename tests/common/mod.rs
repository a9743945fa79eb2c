//! Shared by the integration tests: finding the test models through the
//! project's fetch script (or `ZEPH_MODEL`), and the reference data.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use zeph_llm::engine::Stream;
use zeph_llm::log::{LogLevel, Logger};
use zeph_llm::{Engine, EngineOptions, GenerateOptions, SamplingOptions};

/// Path of a test model.  `ZEPH_MODEL` overrides the default (smollm2)
/// model; otherwise the fetch script downloads it if needed.  A model that
/// cannot be had fails the test: it is never skipped.
pub fn model_path(name: &str) -> PathBuf {
    if name == "smollm2" {
        if let Ok(p) = std::env::var("ZEPH_MODEL") {
            if !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // One fetch at a time: tests run in parallel, and on a fresh machine
    // each would download the same model.
    static FETCH: Mutex<()> = Mutex::new(());
    let _one = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    // The script's progress lines (a first download takes a while) go
    // straight to the terminal, past the test harness's capture.
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/fetch-models.sh"))
        .args(["--path", name])
        .env_remove("ZEPH_MODEL")
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/fetch-models.sh");
    assert!(
        out.status.success(),
        "fetch-models.sh --path {name} failed (its messages are above)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn reference() -> serde_json::Value {
    let text = include_str!("../data/llamacpp-tokens-and-greedy.json");
    serde_json::from_str(text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs the fixture writer (`make-fixtures FLAGS.. DIR`) into
/// `CARGO_TARGET_TMPDIR/NAME` and returns that directory.
pub fn write_fixtures(name: &str, flags: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let status = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--release",
            "--example",
            "make-fixtures",
            "--",
        ])
        .args(flags)
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running make-fixtures");
    assert!(status.success(), "make-fixtures {flags:?} failed");
    dir
}

/// The directory of the small fixture models (tests/fixtures), written once
/// per test binary.
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| write_fixtures("fixtures", &[])).clone()
}

pub fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingOptions {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The lines an engine logged, in order: (level, message).
pub type LogLines = Arc<Mutex<Vec<(LogLevel, String)>>>;

/// Default engine options whose log callback records every line.
pub fn logging_options() -> (EngineOptions, LogLines) {
    let lines = LogLines::default();
    let l = lines.clone();
    let options = EngineOptions {
        logger: Logger(Some(Arc::new(move |level, message: &str| {
            l.lock().unwrap().push((level, message.to_string()))
        }))),
        ..Default::default()
    };
    (options, lines)
}

/// How long a test waits for something that comes within milliseconds: a
/// guard against a hang, never a measure of speed (that is `make bench`'s).
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Takes one sequence slot of `e` and keeps it until the stream returned is
/// cancelled or dropped: a stream nobody reads pauses once its buffer is
/// full, so it never ends by itself.  Returns once its first piece came,
/// that is once a worker runs it.
pub fn occupy_a_slot(e: &Engine) -> Stream {
    let options = GenerateOptions {
        ignore_eog: true,
        timeout: Some(Duration::from_secs(3600)),
        ..greedy(4000)
    };
    let stream = e.stream_complete("a", &options).unwrap();
    let first = stream.next(HANG_GUARD).unwrap();
    assert!(first.is_some(), "the slot holder ended at once");
    stream
}

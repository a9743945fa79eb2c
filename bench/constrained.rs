//! tg128 with and without a JSON schema: the cost of structured output's
//! token mask.  `cargo run --release --example bench-constrained -- MODEL`
//! prints tokens per second (generation only, best of 3) for both and
//! their ratio (the target is >= 0.9).

use std::path::PathBuf;
use std::time::Duration;

use zeph_llm::constraint::ConstraintKind;
use zeph_llm::{Engine, EngineOptions, GenerateOptions, Message, SamplingOptions};

const SCHEMA: &str = r#"{
  "type": "array",
  "items": {
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 32},
      "age": {"type": "integer", "minimum": 0, "maximum": 120},
      "city": {"type": "string", "maxLength": 32}
    },
    "required": ["name", "age", "city"],
    "additionalProperties": false
  },
  "minItems": 40
}"#;

fn rate(engine: &Engine, options: &GenerateOptions) -> (f64, usize) {
    let messages = [Message::new(
        "user",
        "List forty people with their name, age and city as a JSON array.",
    )];
    let mut best: (f64, usize) = (0.0, 0);
    for _ in 0..3 {
        let c = engine.chat(&messages, options).unwrap();
        let n = c.usage.completion_tokens;
        let tps = n as f64 / c.usage.generation_time.as_secs_f64();
        if tps > best.0 {
            best = (tps, n);
        }
    }
    best
}

fn main() {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: bench-constrained MODEL"),
    );
    let engine = Engine::new(&path, EngineOptions::default()).unwrap();
    let base = GenerateOptions {
        max_tokens: 128,
        seed: Some(1),
        timeout: Some(Duration::from_secs(600)),
        cache_prompt: false,
        sampling: SamplingOptions {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let free = GenerateOptions {
        ignore_eog: true,
        ..base.clone()
    };
    let schema = GenerateOptions {
        constraint: Some(ConstraintKind::JsonSchema(SCHEMA.into())),
        ..base.clone()
    };
    // The constraint compiler for the vocabulary is made once per engine:
    // a first request pays for it, outside the measurement.
    engine
        .chat(
            &[Message::new("user", "x")],
            &GenerateOptions {
                max_tokens: 1,
                ..schema.clone()
            },
        )
        .unwrap();
    let (a, na) = rate(&engine, &free);
    let (b, nb) = rate(&engine, &schema);
    println!(
        "{}: tg without schema {a:.1} t/s ({na} tokens), with JSON schema {b:.1} t/s ({nb} tokens), ratio {:.3}",
        path.file_name().unwrap().to_string_lossy(),
        b / a
    );
}

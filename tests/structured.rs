//! Structured output on both test models: answers that end by themselves
//! satisfy their JSON Schema, regular expression or grammar, checked here
//! by parsing (serde_json) and matching (fancy-regex), greedy and sampled;
//! streams, stop strings, max_tokens and compile errors.

mod common;

use std::time::Duration;

use common::model_path;
use zeph_llm::constraint::ConstraintKind;
use zeph_llm::{
    Engine, EngineOptions, ErrorKind, FinishReason, GenerateOptions, Message, SamplingOptions,
};

const PERSON: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string", "maxLength": 24}
  },
  "required": ["name", "age"],
  "additionalProperties": false
}"#;

/// Checks `v` against PERSON by hand (an independent reading of the schema).
fn is_person(v: &serde_json::Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let name_ok = o["name"]
        .as_str()
        .is_some_and(|s| (1..=24).contains(&s.chars().count()));
    let age_ok = o
        .get("age")
        .and_then(|a| a.as_i64())
        .is_some_and(|a| (0..=150).contains(&a));
    let city_ok = o
        .get("city")
        .is_none_or(|c| c.as_str().is_some_and(|s| s.chars().count() <= 24));
    let keys_ok = o
        .keys()
        .all(|k| ["name", "age", "city"].contains(&k.as_str()));
    o.contains_key("name") && name_ok && age_ok && city_ok && keys_ok
}

fn options(kind: ConstraintKind, temperature: f32, seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_tokens: 160,
        seed: Some(seed),
        timeout: Some(Duration::from_secs(600)),
        sampling: SamplingOptions {
            temperature,
            ..Default::default()
        },
        constraint: Some(kind),
        ..Default::default()
    }
}

fn ask(engine: &Engine, question: &str, o: &GenerateOptions) -> zeph_llm::Completion {
    engine
        .chat(&[Message::new("user", question)], o)
        .unwrap_or_else(|e| panic!("{question}: {e}"))
}

fn json_answers(model: &str) {
    let engine = Engine::new(&model_path(model), EngineOptions::default()).unwrap();
    for (temperature, seed) in [(0.0, 0), (0.8, 1), (0.8, 2), (1.2, 3)] {
        let o = options(ConstraintKind::JsonSchema(PERSON.into()), temperature, seed);
        let c = ask(&engine, "Describe a person as JSON.", &o);
        println!(
            "{model} t={temperature}: {:?} {:?}",
            c.usage.finish_reason, c.text
        );
        assert_eq!(c.usage.finish_reason, FinishReason::StopToken, "{}", c.text);
        let v: serde_json::Value = serde_json::from_str(&c.text)
            .unwrap_or_else(|e| panic!("{model}: not JSON ({e}): {:?}", c.text));
        assert!(is_person(&v), "{model}: {v} does not satisfy the schema");
    }
}

#[test]
fn smollm2_json_answers_satisfy_the_schema() {
    json_answers("smollm2");
}

#[test]
fn gemma3_json_answers_satisfy_the_schema() {
    json_answers("gemma3");
}

fn regex_and_grammar(model: &str) {
    let engine = Engine::new(&model_path(model), EngineOptions::default()).unwrap();
    let date = r"[0-9]{4}-[0-9]{2}-[0-9]{2}";
    let grammar = "start: \"The answer is \" NUMBER \".\"\nNUMBER: /[0-9]{1,4}/\n";
    let anchored = |r: &str| fancy_regex::Regex::new(&format!("^(?:{r})$")).unwrap();
    for (temperature, seed) in [(0.0, 0), (0.9, 5)] {
        let o = options(ConstraintKind::Regex(date.into()), temperature, seed);
        let c = ask(&engine, "When did the first person walk on the moon?", &o);
        println!("{model} regex t={temperature}: {:?}", c.text);
        assert_eq!(c.usage.finish_reason, FinishReason::StopToken);
        assert!(anchored(date).is_match(&c.text).unwrap(), "{:?}", c.text);

        let o = options(ConstraintKind::Grammar(grammar.into()), temperature, seed);
        let c = ask(&engine, "What is 6 times 7?", &o);
        println!("{model} grammar t={temperature}: {:?}", c.text);
        assert_eq!(c.usage.finish_reason, FinishReason::StopToken);
        assert!(
            anchored(r"The answer is [0-9]{1,4}\.")
                .is_match(&c.text)
                .unwrap(),
            "{:?}",
            c.text
        );
    }
}

#[test]
fn smollm2_regex_and_grammar_answers_match() {
    regex_and_grammar("smollm2");
}

#[test]
fn gemma3_regex_and_grammar_answers_match() {
    regex_and_grammar("gemma3");
}

#[test]
fn streams_stop_strings_and_max_tokens_work_under_a_constraint() {
    let engine = Engine::new(&model_path("smollm2"), EngineOptions::default()).unwrap();
    let o = options(ConstraintKind::JsonSchema(PERSON.into()), 0.0, 0);
    let whole = ask(&engine, "Describe a person as JSON.", &o);
    let stream = engine
        .stream_chat(&[Message::new("user", "Describe a person as JSON.")], &o)
        .unwrap();
    let mut joined = String::new();
    while let Some(p) = stream.next(Duration::from_secs(600)).unwrap() {
        joined.push_str(&p);
    }
    assert_eq!(joined, whole.text);
    assert_eq!(
        stream.usage().unwrap().finish_reason,
        FinishReason::StopToken
    );

    // A stop string inside the answer cuts it there.
    let at = whole.text.find("\"age\"").expect("the answer has an age");
    let stopped = ask(
        &engine,
        "Describe a person as JSON.",
        &GenerateOptions {
            stop: vec!["\"age\"".into()],
            ..o.clone()
        },
    );
    assert_eq!(stopped.usage.finish_reason, FinishReason::StopString);
    assert_eq!(stopped.text, whole.text[..at]);

    // max_tokens reached: LENGTH, the text a prefix of the whole answer.
    let short = ask(
        &engine,
        "Describe a person as JSON.",
        &GenerateOptions {
            max_tokens: 3,
            ..o.clone()
        },
    );
    assert_eq!(short.usage.finish_reason, FinishReason::Length);
    assert!(whole.text.starts_with(&short.text));
}

#[test]
fn constraints_that_do_not_compile_are_grammar_errors_with_the_message() {
    let engine = Engine::new(&model_path("smollm2"), EngineOptions::default()).unwrap();
    for (kind, needle) in [
        (
            ConstraintKind::JsonSchema("{ not json".into()),
            "json_schema",
        ),
        (
            ConstraintKind::JsonSchema(r#"{"type": "no-such-type"}"#.into()),
            "json_schema",
        ),
        (ConstraintKind::Regex("(unclosed".into()), "regex"),
        (
            ConstraintKind::Grammar("start: undefined_rule".into()),
            "grammar",
        ),
    ] {
        let err = engine
            .complete("x", &options(kind.clone(), 0.0, 0))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Grammar, "{kind:?}: {err}");
        assert!(err.message.contains(needle), "{kind:?}: {err}");
        println!("{kind:?}: {err}");
    }
}

//! Chat templates against tests/data/chat-templates.json: SmolLM2's own
//! template (from its GGUF) and the built-in Gemma template (Gemma 3 stores
//! none), byte for byte.

mod common;

use zeph_llm::{Engine, EngineOptions, Message};

fn check(model: &str, origin: &str) {
    // Only the template matters here: a small context keeps loading cheap.
    let options = EngineOptions {
        context_length: 64,
        ..Default::default()
    };
    let engine = Engine::new(&common::model_path(model), options).unwrap();
    assert_eq!(engine.chat_template_origin(), origin);
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/chat-templates.json")).unwrap();
    let cases = reference["models"][model]["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = engine.apply_chat_template(&messages, add).unwrap();
        assert_eq!(
            text,
            case["rendered"].as_str().unwrap(),
            "{model}: {messages:?}"
        );
        // Rendered text that begins with BOS never gets a second one.
        let ids = engine.tokenizer().encode(&text, true, true).unwrap();
        if let Some(bos) = engine.tokenizer().bos() {
            assert!(
                !(ids.len() >= 2 && ids[0] == bos && ids[1] == bos),
                "{model}: double BOS"
            );
        }
    }
}

#[test]
fn smollm2_renders_its_own_template() {
    check("smollm2", "gguf");
}

#[test]
fn gemma3_renders_the_builtin_gemma_template() {
    check("gemma3", "builtin:gemma");
}

#[test]
fn a_text_that_starts_with_bos_gets_no_second_one() {
    let engine = Engine::new(
        &common::model_path("gemma3"),
        EngineOptions {
            context_length: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let tok = engine.tokenizer();
    let ids = tok.encode("<bos>Hello", true, true).unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| Some(i) == tok.bos()).count(),
        1,
        "{ids:?}"
    );
    assert_eq!(ids[0], tok.bos().unwrap());
}

//! Chat templates against tests/data/chat-templates.json: SmolLM2's own
//! template (from its GGUF) and the built-in Gemma template (Gemma 3 stores
//! none), byte for byte.

mod common;

use zeph_llm::{Engine, EngineOptions, GenerateOptions, Message};

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
        // The chat path never begins a prompt with two BOS.
        let prompt = zeph_llm::chat::without_leading_bos(&text, engine.tokenizer());
        let ids = engine.tokenizer().encode(prompt, true, true).unwrap();
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

fn gemma3(options: EngineOptions) -> Engine {
    Engine::new(
        &common::model_path("gemma3"),
        EngineOptions {
            context_length: 64,
            ..options
        },
    )
    .unwrap()
}

/// As llama.cpp: with BOS added, a text that already begins with BOS gets a
/// second one (llama.cpp gives [2, 2, ...] for this text on Gemma 3).
#[test]
fn tokenize_adds_bos_before_a_bos_in_the_text() {
    let engine = gemma3(EngineOptions::default());
    let tok = engine.tokenizer();
    let bos = tok.bos().unwrap();
    assert_eq!(bos, 2);
    let text = "<bos>literal special?";
    let with = tok.encode(text, true, true).unwrap();
    let without = tok.encode(text, false, true).unwrap();
    assert_eq!(&with[..2], &[bos, bos], "{with:?}");
    assert_eq!(&with[1..], &without[..]);
}

/// A template that writes BOS itself (as many models' own templates do)
/// still gives a chat prompt with one BOS: the rendered text tokenized with
/// BOS added has one token more than the prompt the request evaluated.
#[test]
fn chat_with_a_template_that_writes_bos_has_one_bos() {
    let template = "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";
    let engine = gemma3(EngineOptions {
        chat_template: Some(template.to_string()),
        ..Default::default()
    });
    let messages = [Message::new("user", "Hi")];
    let text = engine.apply_chat_template(&messages, true).unwrap();
    assert!(text.starts_with("<bos><start_of_turn>"), "{text:?}");
    let doubled = engine.tokenizer().encode(&text, true, true).unwrap();
    assert_eq!(&doubled[..2], &[2, 2]);
    let options = GenerateOptions {
        max_tokens: 1,
        ..Default::default()
    };
    let done = engine.chat(&messages, &options).unwrap();
    assert_eq!(done.usage.prompt_tokens, doubled.len() - 1);
}

//! A chat template and a conversation from bytes: the template source up to
//! the first NUL, then role and content strings separated by NULs.  Compiling
//! and rendering must give text or an error (syntax, fuel), never a panic or
//! a hang.  Seeds: the built-in templates and the models' own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zeph_llm::chat::ChatTemplate;
use zeph_llm::Message;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let messages: Vec<Message> = rest
        .chunks(2)
        .map(|p| Message::new(p[0], p.get(1).copied().unwrap_or("")))
        .collect();
    if let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") {
        let _ = t.render(&messages, true);
        let _ = t.render(&messages, false);
    }
});

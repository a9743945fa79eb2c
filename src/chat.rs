//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`)
//! rendered with minijinja and the helpers Hugging Face templates expect.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind as JinjaErrorKind};

use crate::error::{Error, ErrorKind, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The rendered conversation as the engine tokenizes it: when the tokenizer
/// adds BOS itself, a BOS the template wrote at the start is left out, so
/// that the prompt does not begin with two (as llama.cpp's chat does).
/// Everywhere else, text that begins with BOS gets a second one when BOS is
/// added, as in llama.cpp.
pub fn without_leading_bos<'t>(text: &'t str, tokenizer: &crate::tokenizer::Tokenizer) -> &'t str {
    match tokenizer.bos().and_then(|b| tokenizer.token_text(b)) {
        Some(bos) if tokenizer.add_bos() && !bos.is_empty() => {
            text.strip_prefix(bos).unwrap_or(text)
        }
        _ => text,
    }
}

/// Built-in templates, for models whose file stores none, by name.  Each is
/// written as one line with explicit "\n" so that trim_blocks and
/// lstrip_blocks cannot change it.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "chatml",
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    ),
    (
        // Gemma has no system turn: a system message is trimmed and put
        // before the next user message; the assistant is called "model".
        "gemma",
        "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] | trim %}{% else %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}{{ '<start_of_turn>' + role + '\n' }}{% if ns.system and role != 'model' %}{{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %}{{ m['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
    ),
    (
        "llama3",
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ),
    (
        // A system message goes inside the first user turn, between <<SYS>> markers.
        "llama2",
        "{% if messages and messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\n' + messages[0]['content'] | trim + '\n<</SYS>>\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (sys if loop.first else '') + m['content'] | trim + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
    ),
    (
        // A system message is put before the first user message.
        "mistral",
        "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] | trim + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{{ bos_token }}{% for m in msgs %}{% if m['role'] == 'user' %}{{ '[INST] ' + (sys if loop.first else '') + m['content'] | trim + '[/INST]' }}{% elif m['role'] == 'assistant' %}{{ m['content'] | trim + eos_token }}{% endif %}{% endfor %}",
    ),
    (
        "phi3",
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    ),
];

/// The source of a built-in template by name.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The built-in template that fits a model storing none: by architecture,
/// then by the turn markers its vocabulary has.
pub fn builtin_for(architecture: &str, has_token: impl Fn(&str) -> bool) -> &'static str {
    if architecture.starts_with("gemma") || has_token("<start_of_turn>") {
        "gemma"
    } else if has_token("<|start_header_id|>") {
        "llama3"
    } else if has_token("<|im_start|>") {
        "chatml"
    } else if has_token("<|assistant|>") && has_token("<|end|>") {
        "phi3"
    } else if has_token("[INST]") {
        "mistral"
    } else if architecture == "llama" {
        "llama2"
    } else {
        "chatml"
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// Steps a template may take to render one conversation.  Real chat
/// templates take a few dozen per message; a template that loops without
/// end (or nearly so) stops here with `ErrorKind::Template`.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

fn template_error(e: JinjaError) -> Error {
    if e.kind() == JinjaErrorKind::OutOfFuel {
        return Error::new(
            ErrorKind::Template,
            format!("chat template: rendering took more than {TEMPLATE_FUEL} steps (the template's fuel limit)"),
        );
    }
    let mut msg = format!("chat template: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::new(ErrorKind::Template, msg)
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the token texts the template
    /// sees as `bos_token` and `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        // As transformers renders templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(JinjaErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        let template = self.env.get_template("chat").map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(template_error)
    }
}

/// `strftime_now(format)`: the current UTC time, for the few formats chat
/// templates use (`%d %b %Y`, `%Y-%m-%d`, ...).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(secs, &format)
}

fn format_utc(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::new(builtin("chatml").unwrap(), "", "").unwrap();
        let text = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_template_errors() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Template);
        assert!(e.message.contains("roles must alternate"), "{}", e.message);
        let e = ChatTemplate::new("{% for %}", "", "").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Template);
    }

    #[test]
    fn a_template_that_runs_too_long_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Template);
        assert!(e.message.contains("fuel"), "{}", e.message);
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
    }

    #[test]
    fn utc_dates_format() {
        // 2024-02-29 13:05:09 UTC
        assert_eq!(
            format_utc(1_709_211_909, "%d %b %Y %H:%M:%S"),
            "29 Feb 2024 13:05:09"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d %B %%"), "1970-01-01 January %");
    }

    fn render(name: &str, messages: &[(&str, &str)], add: bool) -> String {
        let t = ChatTemplate::new(builtin(name).unwrap(), "<s>", "</s>").unwrap();
        let m: Vec<Message> = messages.iter().map(|(r, c)| Message::new(*r, *c)).collect();
        t.render(&m, add).unwrap()
    }

    #[test]
    fn every_builtin_renders_a_conversation() {
        let conv = [
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello."),
            ("user", "Bye"),
        ];
        assert_eq!(
            render("llama2", &conv, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]"
        );
        assert_eq!(
            render("mistral", &conv, true),
            "<s>[INST] Be brief.\n\nHi[/INST]Hello.</s>[INST] Bye[/INST]"
        );
        assert_eq!(
            render("llama3", &conv[1..2], true),
            "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render("phi3", &conv[1..2], true),
            "<|user|>\nHi<|end|>\n<|assistant|>\n"
        );
        for (name, _) in BUILTIN {
            assert!(!render(name, &conv, true).is_empty(), "{name}");
            assert!(render(name, &[], false).len() < 8, "{name}");
        }
    }

    #[test]
    fn builtin_choice_follows_architecture_and_vocabulary() {
        assert_eq!(builtin_for("gemma3", |_| false), "gemma");
        assert_eq!(
            builtin_for("llama", |t| t == "<|start_header_id|>"),
            "llama3"
        );
        assert_eq!(builtin_for("qwen2", |t| t == "<|im_start|>"), "chatml");
        assert_eq!(
            builtin_for("phi3", |t| t == "<|assistant|>" || t == "<|end|>"),
            "phi3"
        );
        assert_eq!(builtin_for("llama", |t| t == "[INST]"), "mistral");
        assert_eq!(builtin_for("llama", |_| false), "llama2");
    }
}

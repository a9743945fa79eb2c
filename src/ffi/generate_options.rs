//! `zeph_generate_options`: the options of one request, and their
//! conversion to the core's `GenerateOptions` (versioned as
//! `zeph_engine_options` is: see there).

use std::ffi::c_char;
use std::time::Duration;

use super::boundary::{
    bounded_str_arg, null_argument, opt_str_arg, read_versioned, slice_arg, Versioned,
};
use super::cancel::zeph_cancel_token;
use super::limits::ZEPH_MAX_STOP_BYTES;
use crate::constraint::ConstraintKind;
use crate::error::{Error, Result};
use crate::options::{GenerateOptions, SamplingOptions};

/// `seed` value that asks for a different seed on every request.
pub const ZEPH_SEED_RANDOM: u64 = u64::MAX;
/// Options of one generation request.  Get the defaults from
/// `zeph_generate_options_default()`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_generate_options {
    /// `sizeof(zeph_generate_options)`, set by `zeph_generate_options_default()`.
    pub struct_size: u32,
    /// Most tokens to generate (>= 1, default 256).
    pub max_tokens: u32,
    /// Sampling temperature (finite, >= 0; 0 = greedy; default 0.8).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off; default 40).
    pub top_k: u32,
    /// Nucleus sampling mass, in (0, 1] (1 = off; default 0.95).
    pub top_p: f32,
    /// Drop tokens below min_p times the top probability, in [0, 1]
    /// (0 = off; default 0.05).
    pub min_p: f32,
    /// Penalty on recently seen tokens (finite, > 0; 1 = off; default 1).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at (default 64).
    pub repeat_last_n: u32,
    /// Seed of the sampler: same seed, options and prompt give the same
    /// text.  `ZEPH_SEED_RANDOM` (default) draws a new seed per request.
    pub seed: u64,
    /// Deadline of the whole request in milliseconds, counted from the
    /// start of the call: rendering the chat template, tokenizing the
    /// prompt (which stops at the deadline) and the queue wait included;
    /// 0 (default) = the engine's `default_timeout_ms`.
    pub timeout_ms: u64,
    /// Stop strings (NULL when `n_stop` is 0): generation stops before the
    /// first occurrence of any of them, which is not part of the text.
    /// At most `ZEPH_MAX_STOP_STRINGS`, each 1 to `ZEPH_MAX_STOP_BYTES`
    /// bytes of UTF-8.  Copied during the call.
    pub stop: *const *const c_char,
    /// Number of entries in `stop`.
    pub n_stop: usize,
    /// A cancel token that stops this request when cancelled from another
    /// thread; NULL (default) = none.  Borrowed: it must outlive the call.
    pub cancel: *const zeph_cancel_token,
    /// Non-zero (default): reuse the part of the prompt that is already in a
    /// KV cache, as a multi-turn conversation's history is; only the rest of
    /// the prompt is evaluated (`zeph_usage.cached_tokens` says how much was
    /// reused).  How requests are placed: each worker runs up to
    /// `n_parallel` sequences, each in a slot with its own cache.  A request
    /// goes to a worker with a free slot whose idle cache it continues (its
    /// prompt shares at least half of that cache, as the next turn of a
    /// conversation shares its history), else to the shared queue.  The
    /// worker that takes it uses the free slot it continues, else an empty
    /// slot, else the free slot sharing the longest prefix with it, else
    /// the least recently used one (whose cache is then rebuilt from the
    /// prompt: same answer, just the full prompt-evaluation time).  0:
    /// evaluate the whole prompt.
    pub cache_prompt: u32,
    /// Non-zero: do not stop at end-of-generation tokens (for benchmarks);
    /// default 0.
    pub ignore_eog: u32,
    /// A JSON Schema (text) the answer must satisfy: the answer is one JSON
    /// value valid under it, written on one line with `", "` and `": "`
    /// between items (unless the schema's top level sets llguidance's
    /// `"x-guidance"` JSON options, e.g. `{"whitespace_flexible": true}`).
    /// Drafts 4 to 2020-12 as llguidance supports them.  NULL (default) =
    /// no constraint.  At most one
    /// of `json_schema`, `regex` and `grammar` may be set.  Copied during
    /// the call.  See "Structured output" at `grammar`.
    pub json_schema: *const c_char,
    /// A regular expression the whole answer must match (Rust `regex`
    /// syntax, implicitly anchored at both ends).  NULL (default) = none.
    pub regex: *const c_char,
    /// A context-free grammar the whole answer must match, in llguidance's
    /// Lark-like syntax (https://github.com/guidance-ai/llguidance, "Lark
    /// syntax"; rules `name: ...`, terminals `NAME: ...`, `start` is the
    /// start rule; `%json {...}` embeds a JSON Schema).  NULL (default) =
    /// none.
    ///
    /// Structured output: the constraint masks every token that cannot
    /// continue a valid answer before sampling (greedy or not), and the
    /// model's end-of-generation token is allowed only where the answer is
    /// complete; so an answer that ends by itself (`ZEPH_FINISH_STOP_TOKEN`)
    /// always satisfies it.  An answer cut by `max_tokens`
    /// (`ZEPH_FINISH_LENGTH`) or by a stop string may be incomplete.  A
    /// schema, regex or grammar that does not compile returns
    /// `ZEPH_STATUS_GRAMMAR` with the compiler's message, before any work.
    pub grammar: *const c_char,
    /// Log-probabilities: how many most likely alternatives to report per
    /// generated token (0..=20); 0 (default) = no log-probabilities.  With
    /// n_logprobs > 0 a blocking call needs a `zeph_usage` (whose `logprobs`
    /// field receives them) and a stream gives them by `zeph_stream_usage`
    /// once it has ended.  See `zeph_logprobs`.
    pub n_logprobs: u32,
    /// Reserved for a later option; must be 0.
    pub reserved: u32,
}
// SAFETY: repr(C), `struct_size` first, no padding (the fields are laid
// out in pairs of 4-byte and 8-byte fields).
unsafe impl Versioned for zeph_generate_options {
    const NAME: &'static str = "zeph_generate_options";
    // The first version ended before the structured-output fields.
    const MIN_SIZE: usize = std::mem::offset_of!(zeph_generate_options, json_schema);
}

/// The default generation options (see each field).
///
/// Threads: any thread.
#[no_mangle]
pub extern "C" fn zeph_generate_options_default() -> zeph_generate_options {
    let d = GenerateOptions::default();
    zeph_generate_options {
        struct_size: std::mem::size_of::<zeph_generate_options>() as u32,
        max_tokens: d.max_tokens as u32,
        temperature: d.sampling.temperature,
        top_k: d.sampling.top_k as u32,
        top_p: d.sampling.top_p,
        min_p: d.sampling.min_p,
        repeat_penalty: d.sampling.repeat_penalty,
        repeat_last_n: d.sampling.repeat_last_n as u32,
        seed: ZEPH_SEED_RANDOM,
        timeout_ms: 0,
        stop: std::ptr::null(),
        n_stop: 0,
        cancel: std::ptr::null(),
        cache_prompt: 1,
        ignore_eog: 0,
        json_schema: std::ptr::null(),
        regex: std::ptr::null(),
        grammar: std::ptr::null(),
        n_logprobs: 0,
        reserved: 0,
    }
}
/// # Safety
/// `ptr` is NULL or points to a valid `zeph_generate_options` whose `stop`
/// array holds `n_stop` valid C strings.
pub(crate) unsafe fn generate_options(
    ptr: *const zeph_generate_options,
) -> Result<GenerateOptions> {
    if ptr.is_null() {
        return Ok(GenerateOptions::default());
    }
    let o = read_versioned(ptr, zeph_generate_options_default())?;
    if o.n_stop > crate::options::MAX_STOP_STRINGS {
        return Err(Error::invalid_argument(format!(
            "n_stop = {} is more than {} stop strings",
            o.n_stop,
            crate::options::MAX_STOP_STRINGS
        )));
    }
    let stop = slice_arg(o.stop, o.n_stop, "options->stop", "n_stop")?
        .iter()
        .enumerate()
        .map(|(i, &ptr)| {
            let name = format!("options->stop[{i}]");
            bounded_str_arg(ptr, &name, ZEPH_MAX_STOP_BYTES)?
                .map(str::to_string)
                .ok_or_else(|| null_argument(&name))
        })
        .collect::<Result<Vec<_>>>()?;
    let options = GenerateOptions {
        max_tokens: o.max_tokens as usize,
        sampling: SamplingOptions {
            temperature: o.temperature,
            top_k: o.top_k as usize,
            top_p: o.top_p,
            min_p: o.min_p,
            repeat_penalty: o.repeat_penalty,
            repeat_last_n: o.repeat_last_n as usize,
        },
        seed: (o.seed != ZEPH_SEED_RANDOM).then_some(o.seed),
        timeout: (o.timeout_ms != 0).then(|| Duration::from_millis(o.timeout_ms)),
        stop,
        cancel: o.cancel.as_ref().map(|t| t.token.clone()),
        cache_prompt: o.cache_prompt != 0,
        ignore_eog: o.ignore_eog != 0,
        n_logprobs: o.n_logprobs as usize,
        constraint: constraint_kind(&o)?,
    };
    if o.reserved != 0 {
        return Err(Error::invalid_argument(
            "zeph_generate_options.reserved must be 0",
        ));
    }
    options.validate()?;
    Ok(options)
}
/// The one structured-output constraint of `o`, if any.
///
/// # Safety
/// As for `generate_options`.
unsafe fn constraint_kind(o: &zeph_generate_options) -> Result<Option<ConstraintKind>> {
    let json_schema = opt_str_arg(o.json_schema, "options->json_schema")?;
    let regex = opt_str_arg(o.regex, "options->regex")?;
    let grammar = opt_str_arg(o.grammar, "options->grammar")?;
    match (json_schema, regex, grammar) {
        (None, None, None) => Ok(None),
        (Some(s), None, None) => Ok(Some(ConstraintKind::JsonSchema(s.to_string()))),
        (None, Some(r), None) => Ok(Some(ConstraintKind::Regex(r.to_string()))),
        (None, None, Some(g)) => Ok(Some(ConstraintKind::Grammar(g.to_string()))),
        _ => Err(Error::invalid_argument(
            "more than one of json_schema, regex and grammar is set; set at most one",
        )),
    }
}

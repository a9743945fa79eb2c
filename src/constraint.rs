//! Structured output: a JSON Schema, a regular expression or a Lark-like
//! grammar that the answer must satisfy, enforced token by token with the
//! `llguidance` crate over our own tokenizer's token bytes.
//!
//! The interface the generation loop uses is narrow: [`Constraint::sample`]
//! (pick a token the constraint allows, masking only when the sampler's
//! first choice is not allowed), or [`Constraint::mask`] then the sampler
//! (every disallowed token at `-inf`), then [`Constraint::commit`] with the
//! token taken.  End-of-generation tokens are allowed exactly where the
//! answer is complete.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::{TokenType, Tokenizer};

/// What the answer must satisfy, as the caller wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKind {
    /// A JSON Schema (text): the answer is one JSON value valid under it.
    JsonSchema(String),
    /// A regular expression (Rust `regex` syntax) the whole answer matches.
    Regex(String),
    /// A grammar in llguidance's Lark-like syntax.
    Grammar(String),
}

/// Compiles constraints for one model's vocabulary.  Building it walks the
/// whole vocabulary once (a token trie), so an engine makes one, the first
/// time a request asks for a constraint, and shares it.
pub struct Grammars {
    factory: ParserFactory,
    /// Ids that end generation (the model's EOS first).
    eog: Vec<u32>,
}

impl Grammars {
    /// `vocab_size` is the model's (the logits' length), which may exceed
    /// the tokenizer's: ids beyond it are never allowed.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self> {
        let eos = tokenizer
            .eos()
            .or_else(|| tokenizer.eog_ids().first().copied())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Grammar,
                    "the model has no end-of-sequence token: structured output needs one",
                )
            })?;
        let n = vocab_size.max(tokenizer.vocab_size());
        // Control tokens are marked as special (0xFF first), so no grammar
        // matches them as text.
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| match tokenizer.token_type(id) {
                Some(TokenType::Control | TokenType::Unknown | TokenType::Unused) | None => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    match tokenizer.token_text(id) {
                        Some(t) if !t.is_empty() => w.extend_from_slice(t.as_bytes()),
                        _ => w.extend_from_slice(format!("[{id}]").as_bytes()),
                    }
                    w
                }
                _ => tokenizer.piece(id).to_vec(),
            })
            .collect();
        let info = TokRxInfo::new(n as u32, eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_error)?;
        // Nothing of llguidance's goes to standard error.
        factory.quiet();
        let mut eog = vec![eos];
        eog.extend(tokenizer.eog_ids().iter().filter(|&&id| id != eos));
        Ok(Self { factory, eog })
    }

    /// Compiles `kind`; a schema, regex or grammar that does not compile is
    /// a `Grammar` error with the compiler's message.
    pub fn compile(&self, kind: &ConstraintKind) -> Result<Constraint> {
        let grammar = match kind {
            ConstraintKind::JsonSchema(s) => {
                let mut value: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                    Error::new(
                        ErrorKind::Grammar,
                        format!("json_schema is not valid JSON: {e}"),
                    )
                })?;
                // One line, ", " and ": " between items, no other
                // whitespace, unless the schema says otherwise: free
                // whitespace lets a model pad its answer without end.
                if let Some(o) = value.as_object_mut() {
                    o.entry("x-guidance").or_insert_with(|| {
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "item_separator": ", ",
                            "key_separator": ": "
                        })
                    });
                }
                TopLevelGrammar::from_json_schema(value)
            }
            ConstraintKind::Regex(r) => TopLevelGrammar::from_regex(r),
            ConstraintKind::Grammar(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            Error::new(
                ErrorKind::Grammar,
                format!("{} does not compile: {e}", kind.option_name()),
            )
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::new(
                ErrorKind::Grammar,
                format!("{} does not compile: {e}", kind.option_name()),
            ));
        }
        Ok(Constraint {
            matcher,
            eog: self.eog.clone(),
        })
    }
}

impl ConstraintKind {
    fn option_name(&self) -> &'static str {
        match self {
            ConstraintKind::JsonSchema(_) => "json_schema",
            ConstraintKind::Regex(_) => "regex",
            ConstraintKind::Grammar(_) => "grammar",
        }
    }
}

/// One request's constraint: where its answer is in the grammar.
pub struct Constraint {
    matcher: Matcher,
    eog: Vec<u32>,
}

impl Constraint {
    /// Whether `token` may come next (an end-of-generation token: whether
    /// the answer is complete).
    pub fn allows(&mut self, token: u32) -> Result<bool> {
        if self.eog.contains(&token) {
            return self.is_accepting();
        }
        let n = self
            .matcher
            .validate_tokens(&[token])
            .map_err(grammar_error)?;
        Ok(n == 1)
    }

    /// Sets every token the constraint does not allow next to `-inf`.  The
    /// end-of-generation tokens are allowed exactly when the answer is
    /// complete.  Costs one mask computation (tens of microseconds).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask: SimpleVob = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
        let eos_allowed = mask.is_allowed(self.eog[0]);
        for (id, l) in logits.iter_mut().enumerate() {
            let allowed = if self.eog.contains(&(id as u32)) {
                eos_allowed
            } else {
                id < mask.len() && mask.is_allowed(id as u32)
            };
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Picks the next token with `choose` (the sampler, on logits it only
    /// reads), masking only when needed: its choice from the unmasked
    /// logits is kept when the constraint allows it, else the logits are
    /// masked and it chooses again.  Greedy, this is exactly the masked
    /// argmax; sampled, the choice has the masked distribution's
    /// probabilities too (a first draw that is allowed is a draw from it;
    /// one that is not is replaced by one), as llama.cpp's grammar sampling
    /// does.  Without a second choice no mask is computed and nothing is
    /// allocated.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        choose: &mut dyn FnMut(&[f32]) -> u32,
    ) -> Result<u32> {
        let first = choose(logits);
        if self.allows(first)? {
            return Ok(first);
        }
        self.mask(logits)?;
        Ok(choose(logits))
    }

    /// Advances past `token`, which the constraint must allow.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(grammar_error)
    }

    /// Whether the answer so far is complete (may end here).
    pub fn is_accepting(&mut self) -> Result<bool> {
        if self.matcher.is_stopped() && !self.matcher.is_error() {
            return Ok(true);
        }
        self.matcher.is_accepting().map_err(grammar_error)
    }
}

fn grammar_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Grammar, format!("structured output: {e}"))
}

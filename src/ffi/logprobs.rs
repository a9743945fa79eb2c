//! `zeph_logprobs`: the log-probabilities of a request's generated tokens.

use std::ffi::c_char;

use super::boundary::{boundary, boundary_or, free_handle, handle_ref, into_handle, opt_out_arg};
use super::status::zeph_status;
use crate::error::Error;
use crate::logprobs::TokenLogprob;

/// The log-probabilities of the tokens one request generated (one entry
/// per token of the answer, end-of-generation token excluded; tokens cut
/// away with a stop string included).  Opaque; read with
/// `zeph_logprobs_count`, `zeph_logprobs_n_top` and `zeph_logprobs_get`.
///
/// A log-probability is natural (ln) and taken under the distribution the
/// sampler drew from: with temperature > 0, the softmax at that
/// temperature over the candidates top-k, top-p and min-p kept (others
/// have probability 0, so fewer than `n_logprobs` alternatives may be
/// listed); when greedy, the softmax of the logits at temperature 1.
/// Both after the repeat penalty and an output constraint's mask.
///
/// Ownership: made by the library for the caller (through
/// `zeph_usage.logprobs`), freed with `zeph_logprobs_free`; the bytes it
/// hands out stay valid until then.  Threads: immutable, so it may be read
/// from any number of threads at once.
pub struct zeph_logprobs {
    tokens: Vec<TokenLogprob>,
}

impl zeph_logprobs {
    /// A new `zeph_logprobs` for the caller.
    pub(crate) fn new_handle(tokens: Vec<TokenLogprob>) -> *mut Self {
        into_handle(Self { tokens })
    }
}

/// Number of tokens `logprobs` describes (0 for NULL).
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_logprobs_count(logprobs: *const zeph_logprobs) -> usize {
    boundary_or(0, || logprobs.as_ref().map_or(0, |l| l.tokens.len()))
}

/// Number of alternatives listed for token `index` (at most the request's
/// `n_logprobs`; 0 for NULL or an index out of range).
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_logprobs_n_top(
    logprobs: *const zeph_logprobs,
    index: usize,
) -> usize {
    boundary_or(0, || {
        logprobs
            .as_ref()
            .and_then(|l| l.tokens.get(index))
            .map_or(0, |t| t.top.len())
    })
}

/// Reads one choice at token `index` (0 .. count-1): `rank` 0 is the
/// generated token, `rank` r >= 1 the r-th most likely alternative (1 ..
/// n_top; the generated token itself is among them when it ranks).
/// Writes its token id, its log-probability (`-INFINITY` for probability
/// 0), and its bytes: `*bytes_out` points to `*n_bytes_out` bytes of the
/// token's text, NOT NUL-terminated and not necessarily whole UTF-8
/// characters (a character may span tokens), owned by `logprobs` and valid
/// until `zeph_logprobs_free`.  Any out-parameter may be NULL to skip it.
/// An index or rank out of range returns `ZEPH_STATUS_INVALID_ARGUMENT`
/// and writes nothing.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_logprobs_get(
    logprobs: *const zeph_logprobs,
    index: usize,
    rank: usize,
    id_out: *mut u32,
    logprob_out: *mut f32,
    bytes_out: *mut *const c_char,
    n_bytes_out: *mut usize,
) -> zeph_status {
    boundary(|| {
        let l = handle_ref(logprobs, "logprobs")?;
        let t = l.tokens.get(index).ok_or_else(|| {
            Error::invalid_argument(format!(
                "index {index} is out of range: {} tokens",
                l.tokens.len()
            ))
        })?;
        let c = match rank {
            0 => &t.token,
            r => t.top.get(r - 1).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "rank {r} is out of range: token {index} has {} alternatives",
                    t.top.len()
                ))
            })?,
        };
        if let Some(out) = opt_out_arg(id_out) {
            out.write(c.id);
        }
        if let Some(out) = opt_out_arg(logprob_out) {
            out.write(c.logprob);
        }
        if let Some(out) = opt_out_arg(bytes_out) {
            out.write(c.bytes.as_ptr() as *const c_char);
        }
        if let Some(out) = opt_out_arg(n_bytes_out) {
            out.write(c.bytes.len());
        }
        Ok(())
    })
}

/// Frees `logprobs`.  NULL is a no-op; must not be called twice.
///
/// Threads: any thread, once no other thread reads it.
#[no_mangle]
pub unsafe extern "C" fn zeph_logprobs_free(logprobs: *mut zeph_logprobs) {
    boundary_or((), || free_handle(logprobs))
}

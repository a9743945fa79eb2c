//! `zeph_pooling`: how `zeph_engine_embed` pools a text's hidden states.

use std::ffi::c_int;

use crate::embed::Pooling;
use crate::error::{Error, Result};

/// How `zeph_engine_embed` turns the hidden states of a text's tokens into
/// one vector.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum zeph_pooling {
    /// The average of every token's final hidden state (BOS included when
    /// the model adds one).
    ZEPH_POOLING_MEAN = 0,
    /// The last token's final hidden state.
    ZEPH_POOLING_LAST = 1,
}

/// A `zeph_pooling` as C passes it: any int.  The header spells it
/// `zeph_pooling` (see cbindgen.toml), so that an out-of-range value is an
/// `INVALID_ARGUMENT`, not undefined behaviour.
#[repr(transparent)]
pub struct zeph_pooling_raw(pub c_int);

impl zeph_pooling_raw {
    /// The core's pooling, or INVALID_ARGUMENT for a number that is not a
    /// `zeph_pooling`.
    pub(crate) fn to_pooling(&self) -> Result<Pooling> {
        match self.0 {
            0 => Ok(Pooling::Mean),
            1 => Ok(Pooling::Last),
            other => Err(Error::invalid_argument(format!(
                "pooling = {other} is not a zeph_pooling value"
            ))),
        }
    }
}

//! Test-only taps on both decoders' intermediate values, to compare them
//! stage by stage (see `compare.rs`).  Nothing of this is compiled outside
//! `cfg(test)`.

// Only `compare.rs` (which needs the reference decoder) reads the taps.
#![cfg_attr(not(feature = "reference"), allow(dead_code))]

use std::cell::RefCell;

/// What one forward pass recorded: each tap's name and values, in order.
pub type Taps = Vec<(String, Vec<f32>)>;

thread_local! {
    static TAPS: RefCell<Option<Taps>> = const { RefCell::new(None) };
}

/// Starts recording on this thread (forgetting what was recorded).
pub fn start() {
    TAPS.with(|t| *t.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded since `start`.
pub fn take() -> Taps {
    TAPS.with(|t| t.borrow_mut().take().unwrap_or_default())
}

pub fn on() -> bool {
    TAPS.with(|t| t.borrow().is_some())
}

/// Records `v` under `name` when recording is on.
pub fn record(name: impl FnOnce() -> String, v: &[f32]) {
    TAPS.with(|t| {
        if let Some(taps) = t.borrow_mut().as_mut() {
            taps.push((name(), v.to_vec()));
        }
    });
}

/// Records a candle tensor (flattened) when recording is on.
#[cfg(feature = "reference")]
pub fn record_tensor(name: impl FnOnce() -> String, t: &candle_core::Tensor) {
    if on() {
        let v = t
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .expect("trace: tensor to vec");
        record(name, &v);
    }
}

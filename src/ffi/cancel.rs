//! `zeph_cancel_token_*`: stopping blocking calls from another thread.

use std::sync::Arc;

use super::boundary::{boundary, boundary_or, free_handle, into_handle, out_arg};
use super::status::zeph_status;
use crate::cancel::CancelToken;

/// A one-shot cancel switch.  Put it in `zeph_generate_options.cancel`;
/// `zeph_cancel_token_cancel` then makes every call carrying it return
/// `ZEPH_STATUS_CANCELLED` promptly: a queued request is dropped unrun, a
/// running one stops before its next token or prompt chunk.  A cancelled
/// token stays cancelled; use a new one for new work.
///
/// Threads: may be shared by any number of threads and requests.
pub struct zeph_cancel_token {
    pub(crate) token: Arc<CancelToken>,
}

/// Creates a cancel token.  On success `*token_out` receives it; free it
/// with `zeph_cancel_token_free`.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_cancel_token_new(
    token_out: *mut *mut zeph_cancel_token,
) -> zeph_status {
    boundary(|| {
        out_arg(token_out, "token_out")?.write(into_handle(zeph_cancel_token {
            token: Arc::new(CancelToken::new()),
        }));
        Ok(())
    })
}

/// Cancels every request that carries `token`, now and later.  NULL is a
/// no-op; calling it again is a no-op.
///
/// Threads: any thread, at any time, typically while another thread is
/// blocked in a call that carries the token.
#[no_mangle]
pub unsafe extern "C" fn zeph_cancel_token_cancel(token: *const zeph_cancel_token) {
    boundary_or((), || {
        if let Some(t) = token.as_ref() {
            t.token.cancel();
        }
    })
}

/// Whether `token` has been cancelled (false for NULL).
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_cancel_token_is_cancelled(token: *const zeph_cancel_token) -> bool {
    boundary_or(false, || {
        token.as_ref().is_some_and(|t| t.token.is_cancelled())
    })
}

/// Frees a token.  NULL is a no-op.  Call it once, after every call that
/// carries the token has returned.
#[no_mangle]
pub unsafe extern "C" fn zeph_cancel_token_free(token: *mut zeph_cancel_token) {
    boundary_or((), || free_handle(token))
}

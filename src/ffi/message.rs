//! `zeph_message`: one message of a conversation, read into the core's
//! `Message`.

use std::ffi::{c_char, CStr};

use super::boundary::{slice_arg, str_arg};
use crate::chat::Message;
use crate::error::Result;

/// One chat message.  Both strings are UTF-8, borrowed for the duration of
/// the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_message {
    /// "system", "user", "assistant", or another role the template knows.
    pub role: *const c_char,
    pub content: *const c_char,
}

/// # Safety
/// `messages` is NULL (with `n == 0`) or points to `n` valid messages.
pub(crate) unsafe fn messages_arg(messages: *const zeph_message, n: usize) -> Result<Vec<Message>> {
    crate::options::check_len("n_messages", n, crate::options::MAX_MESSAGES, "messages")?;
    let messages = slice_arg(messages, n, "messages", "n_messages")?;
    // The sizes first, so that nothing is copied past a limit (a NULL string
    // counts 0 here and is refused by `str_arg` below).
    let len = |p: *const c_char| p.as_ref().map_or(0, |_| CStr::from_ptr(p).to_bytes().len());
    crate::options::check_conversation(n, messages.iter().map(|m| (len(m.role), len(m.content))))?;
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(Message::new(
                str_arg(m.role, &format!("messages[{i}].role"))?,
                str_arg(m.content, &format!("messages[{i}].content"))?,
            ))
        })
        .collect()
}

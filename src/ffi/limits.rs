//! The `ZEPH_MAX_*` limits: upper bounds on the sizes an input sets.  Each
//! is checked before anything is allocated for the input; past it the call
//! returns ZEPH_STATUS_INVALID_ARGUMENT with a message naming the limit.

/// Most bytes of a prompt, of a text to tokenize, and of a conversation's
/// messages together (16 MiB).
pub const ZEPH_MAX_TEXT_BYTES: usize = 16777216;
/// Most messages in a conversation.
pub const ZEPH_MAX_MESSAGES: usize = 65536;
/// Most bytes of a message's role.
pub const ZEPH_MAX_ROLE_BYTES: usize = 256;
/// Most ids one `zeph_engine_detokenize` call takes.
pub const ZEPH_MAX_DETOKENIZE_IDS: usize = 1048576;
/// Largest context length in tokens: the `context_length` option, and the
/// most a model file may claim.
pub const ZEPH_MAX_CONTEXT_LENGTH: u32 = 16777216;
/// Most bytes of the `chat_template` engine option (1 MiB).
pub const ZEPH_MAX_TEMPLATE_BYTES: usize = 1048576;
/// Most bytes of the `tokenizer_path` engine option.
pub const ZEPH_MAX_PATH_BYTES: usize = 4096;
/// Most stop strings of a request.
pub const ZEPH_MAX_STOP_STRINGS: usize = 64;
/// Most bytes of one stop string.
pub const ZEPH_MAX_STOP_BYTES: usize = 1024;

// The header's numbers are the core's.
const _: () = {
    use crate::options as o;
    assert!(ZEPH_MAX_TEXT_BYTES == o::MAX_TEXT_BYTES);
    assert!(ZEPH_MAX_MESSAGES == o::MAX_MESSAGES);
    assert!(ZEPH_MAX_ROLE_BYTES == o::MAX_ROLE_BYTES);
    assert!(ZEPH_MAX_DETOKENIZE_IDS == o::MAX_DETOKENIZE_IDS);
    assert!(ZEPH_MAX_CONTEXT_LENGTH as usize == o::MAX_CONTEXT_LENGTH);
    assert!(ZEPH_MAX_TEMPLATE_BYTES == o::MAX_TEMPLATE_BYTES);
    assert!(ZEPH_MAX_PATH_BYTES == o::MAX_PATH_BYTES);
    assert!(ZEPH_MAX_STOP_STRINGS == o::MAX_STOP_STRINGS);
    assert!(ZEPH_MAX_STOP_BYTES == o::MAX_STOP_LEN);
};

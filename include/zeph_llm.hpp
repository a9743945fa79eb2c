// zeph_llm.hpp: a header-only C++17 wrapper over zeph_llm.h.
//
// RAII owns the engine, streams and strings; failures throw zeph::Error,
// which carries the status and the library's message; text goes in as
// std::string_view and comes out as std::string.  Written by hand (unlike
// zeph_llm.h) and kept beside it in include/, so that an installed library
// ships both headers and a C++ program needs nothing else.
//
// Thread safety is the C API's: an Engine may be used from many threads at
// once; a Stream is read by one thread at a time, cancelled from any.
#ifndef ZEPH_LLM_HPP
#define ZEPH_LLM_HPP

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "zeph_llm.h"

namespace zeph {

/// A failed call: its status code and the library's message.
class Error : public std::runtime_error {
public:
    Error(zeph_status status, const std::string &message)
        : std::runtime_error(std::string(zeph_status_name(status)) + ": " + message),
          status_(status), message_(message) {}
    zeph_status status() const noexcept { return status_; }
    const std::string &message() const noexcept { return message_; }

private:
    zeph_status status_;
    std::string message_;
};

namespace detail {
inline void check(zeph_status s) {
    if (s != ZEPH_STATUS_OK) throw Error(s, zeph_last_error());
}
struct StringFree {
    void operator()(char *p) const noexcept { zeph_string_free(p); }
};
using CString = std::unique_ptr<char, StringFree>;
inline std::string take(char *p) {
    CString owned(p);
    return owned ? std::string(owned.get()) : std::string();
}
/// A NUL-terminated copy of a string_view, for the C API.
inline std::string z(std::string_view s) { return std::string(s); }
}  // namespace detail

/// A token, its natural log-probability under the distribution the
/// sampler drew from, and its bytes (not necessarily whole characters).
struct Choice {
    uint32_t id = 0;
    float logprob = 0;
    std::string bytes;
};

/// A generated token and its most likely alternatives, best first.
struct TokenLogprob {
    Choice token;
    std::vector<Choice> top;
};

/// What a request used.
struct Usage {
    unsigned prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
    zeph_finish_reason finish_reason = ZEPH_FINISH_NONE;
    double queue_ms = 0, prompt_ms = 0, generation_ms = 0;
    /// One per generated token when the request asked for n_logprobs.
    std::vector<TokenLogprob> logprobs;

    /// Reads `u` and takes (frees) the log-probabilities it may hold.
    static Usage from(zeph_usage &u) {
        Usage r{u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.finish_reason,
                u.queue_ms,      u.prompt_ms,         u.generation_ms, {}};
        if (zeph_logprobs *lp = u.logprobs) {
            u.logprobs = nullptr;
            std::unique_ptr<zeph_logprobs, void (*)(zeph_logprobs *)> owned(lp, zeph_logprobs_free);
            auto choice = [lp](size_t i, size_t rank) {
                Choice c;
                const char *b = nullptr;
                size_t n = 0;
                detail::check(zeph_logprobs_get(lp, i, rank, &c.id, &c.logprob, &b, &n));
                c.bytes.assign(b, n);
                return c;
            };
            for (size_t i = 0; i < zeph_logprobs_count(lp); i++) {
                TokenLogprob t{choice(i, 0), {}};
                for (size_t k = 1; k <= zeph_logprobs_n_top(lp, i); k++) t.top.push_back(choice(i, k));
                r.logprobs.push_back(std::move(t));
            }
        }
        return r;
    }
};

struct Message {
    std::string role, content;
};

/// Options of one request; starts from the library's defaults.
struct GenerateOptions {
    zeph_generate_options c = zeph_generate_options_default();
    std::vector<std::string> stop;

    GenerateOptions &max_tokens(uint32_t n) { c.max_tokens = n; return *this; }
    GenerateOptions &temperature(float t) { c.temperature = t; return *this; }
    GenerateOptions &greedy() { c.temperature = 0; return *this; }
    GenerateOptions &seed(uint64_t s) { c.seed = s; return *this; }
    GenerateOptions &timeout(std::chrono::milliseconds t) {
        c.timeout_ms = static_cast<uint64_t>(t.count());
        return *this;
    }
    GenerateOptions &stop_at(std::string s) { stop.push_back(std::move(s)); return *this; }
    /// Structured output (at most one of the three): the answer is one JSON
    /// value valid under `schema`; matches `re` whole; matches `grammar`
    /// (llguidance's Lark-like syntax).  A constraint that does not compile
    /// throws Error with ZEPH_STATUS_GRAMMAR.
    GenerateOptions &json_schema(std::string schema) { schema_ = std::move(schema); return *this; }
    GenerateOptions &regex(std::string re) { regex_ = std::move(re); return *this; }
    GenerateOptions &grammar(std::string g) { grammar_ = std::move(g); return *this; }
    /// Log-probabilities with `n` alternatives per token (0..20), in Usage::logprobs.
    GenerateOptions &logprobs(uint32_t n) { c.n_logprobs = n; return *this; }

private:
    friend class Engine;
    std::optional<std::string> schema_, regex_, grammar_;
    /// The C struct with its pointers into this object (valid while it lives).
    zeph_generate_options build(std::vector<const char *> &ptrs) const {
        zeph_generate_options o = c;
        ptrs.clear();
        for (const auto &s : stop) ptrs.push_back(s.c_str());
        o.stop = ptrs.empty() ? nullptr : ptrs.data();
        o.n_stop = ptrs.size();
        o.json_schema = schema_ ? schema_->c_str() : nullptr;
        o.regex = regex_ ? regex_->c_str() : nullptr;
        o.grammar = grammar_ ? grammar_->c_str() : nullptr;
        return o;
    }
};

/// Text of one request, piece by piece.
class Stream {
public:
    /// The next piece; std::nullopt once the stream has ended.  Throws on
    /// failure (a TIMEOUT here means the request's own deadline passed).
    std::optional<std::string> next() {
        for (;;) {
            char *piece = nullptr;
            zeph_status s = zeph_stream_next(ptr_.get(), 1000, &piece);
            if (s == ZEPH_STATUS_TIMEOUT && usage().finish_reason == ZEPH_FINISH_NONE) continue;
            detail::check(s);
            if (!piece) return std::nullopt;
            return detail::take(piece);
        }
    }
    /// Stops the work; may be called from any thread.
    void cancel() noexcept { zeph_stream_cancel(ptr_.get()); }
    Usage usage() const {
        zeph_usage u{};
        u.struct_size = sizeof u;
        detail::check(zeph_stream_usage(ptr_.get(), &u));
        return Usage::from(u);
    }

private:
    friend class Engine;
    struct Free {
        void operator()(zeph_stream *s) const noexcept { zeph_stream_free(s); }
    };
    explicit Stream(zeph_stream *s) : ptr_(s) {}
    std::unique_ptr<zeph_stream, Free> ptr_;
};

/// Engine options with C++ callbacks: `on_progress` runs on the
/// constructing thread while the model loads (0 to 1; returning false
/// cancels: the constructor throws ZEPH_STATUS_CANCELLED); `on_log`
/// receives the library's messages instead of standard error, on the
/// constructing thread while the model loads, then on the engine's worker
/// threads, several at once, until the engine is destroyed: it must be
/// thread-safe and return promptly.  Exceptions they throw are swallowed
/// (a throwing progress callback cancels the load).  The other options are
/// the C struct's fields in `c`, e.g. `c.n_workers`, or
/// `c.load_into_memory = 1` to read the model file into memory instead of
/// mapping it (the file may then change or go; see zeph_engine_new).
struct EngineOptions {
    zeph_engine_options c = zeph_engine_options_default();
    std::function<bool(float)> on_progress;
    std::function<void(zeph_log_level, std::string_view)> on_log;
};

/// A loaded model and its workers.  Movable, not copyable; frees the engine
/// when destroyed (after shutting it down).
class Engine {
public:
    Engine(std::string_view model_path, const EngineOptions &options) {
        zeph_engine_options o = options.c;
        auto log = hook(o, options);
        zeph_engine *e = nullptr;
        detail::check(zeph_engine_new(detail::z(model_path).c_str(), &o, &e));
        ptr_.reset(e);
        log_ = std::move(log);
    }

    explicit Engine(std::string_view model_path,
                    const zeph_engine_options &options = zeph_engine_options_default()) {
        zeph_engine *e = nullptr;
        detail::check(zeph_engine_new(detail::z(model_path).c_str(), &options, &e));
        ptr_.reset(e);
    }

    /// Loads a model from memory; the bytes are copied during the call.
    static Engine from_memory(const void *data, size_t len,
                              const zeph_engine_options &options = zeph_engine_options_default()) {
        zeph_engine *e = nullptr;
        detail::check(zeph_engine_new_from_memory(data, len, &options, &e));
        return Engine(e);
    }

    /// The L2-normalized embedding of `text` (the model's final hidden
    /// states, pooled).
    std::vector<float> embed(std::string_view text, zeph_pooling pooling = ZEPH_POOLING_MEAN) const {
        std::string t = detail::z(text);
        size_t n = 0;
        zeph_status s = zeph_engine_embed(ptr_.get(), t.c_str(), pooling, nullptr, 0, &n);
        if (s != ZEPH_STATUS_INVALID_ARGUMENT || n == 0) detail::check(s);
        std::vector<float> v(n);
        detail::check(zeph_engine_embed(ptr_.get(), t.c_str(), pooling, v.data(), v.size(), &n));
        return v;
    }

    std::string complete(std::string_view prompt, const GenerateOptions &options = {},
                         Usage *usage = nullptr) const {
        std::vector<const char *> stops;
        zeph_generate_options o = options.build(stops);
        zeph_usage u{};
        u.struct_size = sizeof u;
        char *text = nullptr;
        detail::check(zeph_engine_complete(ptr_.get(), detail::z(prompt).c_str(), &o, &text, &u));
        if (usage) *usage = Usage::from(u);
        return detail::take(text);
    }

    std::string chat(const std::vector<Message> &messages, const GenerateOptions &options = {},
                     Usage *usage = nullptr) const {
        std::vector<zeph_message> cm = c_messages(messages);
        std::vector<const char *> stops;
        zeph_generate_options o = options.build(stops);
        zeph_usage u{};
        u.struct_size = sizeof u;
        char *text = nullptr;
        detail::check(zeph_engine_chat(ptr_.get(), cm.data(), cm.size(), &o, &text, &u));
        if (usage) *usage = Usage::from(u);
        return detail::take(text);
    }

    Stream stream(std::string_view prompt, const GenerateOptions &options = {}) const {
        std::vector<const char *> stops;
        zeph_generate_options o = options.build(stops);
        zeph_stream *s = nullptr;
        detail::check(zeph_engine_stream_complete(ptr_.get(), detail::z(prompt).c_str(), &o, &s));
        return Stream(s);
    }

    std::vector<uint32_t> tokenize(std::string_view text, bool add_special = true,
                                   bool parse_special = true) const {
        std::string t = detail::z(text);
        size_t n = 0;
        zeph_status s = zeph_engine_tokenize(ptr_.get(), t.c_str(), add_special, parse_special,
                                             nullptr, 0, &n);
        if (s != ZEPH_STATUS_OK && s != ZEPH_STATUS_INVALID_ARGUMENT) detail::check(s);
        std::vector<uint32_t> ids(n);
        detail::check(zeph_engine_tokenize(ptr_.get(), t.c_str(), add_special, parse_special,
                                           ids.data(), ids.size(), &n));
        return ids;
    }

    std::string detokenize(const std::vector<uint32_t> &ids, bool remove_special = false) const {
        char *text = nullptr;
        detail::check(zeph_engine_detokenize(ptr_.get(), ids.data(), ids.size(), remove_special, &text));
        return detail::take(text);
    }

    uint32_t context_length() const noexcept { return zeph_engine_context_length(ptr_.get()); }

    /// Makes waiting and later calls fail with ZEPH_STATUS_SHUTDOWN.
    void shutdown() noexcept { zeph_engine_shutdown(ptr_.get()); }

    zeph_engine *get() const noexcept { return ptr_.get(); }

private:
    using LogFn = std::function<void(zeph_log_level, std::string_view)>;
    /// Points the C callbacks of `o` at the C++ ones of `options`; returns
    /// the log callback's copy, which the engine keeps.
    static std::shared_ptr<LogFn> hook(zeph_engine_options &o, const EngineOptions &options) {
        if (options.on_progress) {
            o.progress = [](void *user, float p) -> bool {
                try {
                    return (*static_cast<const std::function<bool(float)> *>(user))(p);
                } catch (...) {
                    return false;
                }
            };
            o.progress_user_data = const_cast<std::function<bool(float)> *>(&options.on_progress);
        }
        std::shared_ptr<LogFn> log;
        if (options.on_log) {
            log = std::make_shared<LogFn>(options.on_log);
            o.log = [](void *user, zeph_log_level level, const char *message) {
                try {
                    (*static_cast<LogFn *>(user))(level, message);
                } catch (...) {
                }
            };
            o.log_user_data = log.get();
        }
        return log;
    }
    explicit Engine(zeph_engine *e) : ptr_(e) {}
    static std::vector<zeph_message> c_messages(const std::vector<Message> &messages) {
        std::vector<zeph_message> cm;
        cm.reserve(messages.size());
        for (const auto &m : messages) cm.push_back({m.role.c_str(), m.content.c_str()});
        return cm;
    }
    struct Free {
        void operator()(zeph_engine *e) const noexcept {
            zeph_engine_shutdown(e);
            zeph_engine_free(e);
        }
    };
    std::shared_ptr<LogFn> log_;  // declared first: freed after the engine
    std::unique_ptr<zeph_engine, Free> ptr_;
};

}  // namespace zeph

#endif  // ZEPH_LLM_HPP

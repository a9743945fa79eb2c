// ZephLLM: local GGUF language models from Swift, over libzeph_llm's C API.
// An Engine is safe to share between tasks; cancelling the Swift Task that
// awaits a call cancels the work in the engine.
import CZephLLM
import Foundation

/// A failed call, one case per zeph_status, with the library's message.
public enum ZephError: Error, Equatable, CustomStringConvertible {
    case nullArgument(String)
    case invalidArgument(String)
    case invalidUTF8(String)
    case io(String)
    case model(String)
    case tokenizer(String)
    case template(String)
    case contextOverflow(String)
    case queueFull(String)
    case timeout(String)
    case cancelled(String)
    case shutdown(String)
    case inference(String)
    case panic(String)
    case grammar(String)
    case unknown(Int32, String)

    init(status: zeph_status, message: String) {
        switch status {
        case ZEPH_STATUS_NULL_ARGUMENT: self = .nullArgument(message)
        case ZEPH_STATUS_INVALID_ARGUMENT: self = .invalidArgument(message)
        case ZEPH_STATUS_INVALID_UTF8: self = .invalidUTF8(message)
        case ZEPH_STATUS_IO: self = .io(message)
        case ZEPH_STATUS_MODEL: self = .model(message)
        case ZEPH_STATUS_TOKENIZER: self = .tokenizer(message)
        case ZEPH_STATUS_TEMPLATE: self = .template(message)
        case ZEPH_STATUS_CONTEXT_OVERFLOW: self = .contextOverflow(message)
        case ZEPH_STATUS_QUEUE_FULL: self = .queueFull(message)
        case ZEPH_STATUS_TIMEOUT: self = .timeout(message)
        case ZEPH_STATUS_CANCELLED: self = .cancelled(message)
        case ZEPH_STATUS_SHUTDOWN: self = .shutdown(message)
        case ZEPH_STATUS_INFERENCE: self = .inference(message)
        case ZEPH_STATUS_PANIC: self = .panic(message)
        case ZEPH_STATUS_GRAMMAR: self = .grammar(message)
        default: self = .unknown(Int32(status.rawValue), message)
        }
    }

    public var description: String {
        switch self {
        case let .nullArgument(m), let .invalidArgument(m), let .invalidUTF8(m), let .io(m),
             let .model(m), let .tokenizer(m), let .template(m), let .contextOverflow(m),
             let .queueFull(m), let .timeout(m), let .cancelled(m), let .shutdown(m),
             let .inference(m), let .panic(m), let .grammar(m), let .unknown(_, m):
            return m
        }
    }
}

/// Throws the status as a ZephError, with this thread's message.  Must run
/// on the thread that made the call (the message is per thread).
func check(_ status: zeph_status) throws {
    if status != ZEPH_STATUS_OK {
        throw ZephError(status: status, message: String(cString: zeph_last_error()))
    }
}

public struct Message: Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Options of one request; the defaults are the library's.
public struct GenerateOptions: Sendable {
    public var maxTokens: UInt32
    public var temperature: Float
    public var seed: UInt64
    public var timeout: Duration?
    public var stop: [String] = []
    /// Structured output, at most one: the answer is one JSON value valid
    /// under `jsonSchema`, matches `regex` whole, or matches `grammar`
    /// (llguidance's Lark-like syntax).
    public var jsonSchema: String?
    public var regex: String?
    public var grammar: String?
    /// Log-probabilities with this many alternatives per token (0...20;
    /// 0 = none), in `Completion.logprobs`.
    public var logprobs: UInt32 = 0

    public init() {
        let d = zeph_generate_options_default()
        maxTokens = d.max_tokens
        temperature = d.temperature
        seed = d.seed
    }

    public static func greedy(maxTokens: UInt32) -> GenerateOptions {
        var o = GenerateOptions()
        o.temperature = 0
        o.maxTokens = maxTokens
        return o
    }
}

/// The C side of one request: options, stop strings and a cancel token, all
/// owned here and freed in deinit.
final class Request: @unchecked Sendable {
    var options = zeph_generate_options_default()
    let token: OpaquePointer
    private var stops: [UnsafeMutablePointer<CChar>]
    private let stopArray: UnsafeMutablePointer<UnsafePointer<CChar>?>
    private var strings: [UnsafeMutablePointer<CChar>] = []

    init(_ o: GenerateOptions) throws {
        var token: OpaquePointer?
        try check(zeph_cancel_token_new(&token))
        self.token = token!
        stops = o.stop.map { strdup($0)! }
        stopArray = .allocate(capacity: max(stops.count, 1))
        for (i, s) in stops.enumerated() { stopArray[i] = UnsafePointer(s) }
        options.max_tokens = o.maxTokens
        options.temperature = o.temperature
        options.seed = o.seed
        if let t = o.timeout {
            let ms = t.components.seconds * 1000 + t.components.attoseconds / 1_000_000_000_000_000
            options.timeout_ms = UInt64(max(ms, 1))
        }
        options.stop = UnsafePointer(stopArray)
        options.n_stop = stops.count
        options.cancel = self.token
        options.n_logprobs = o.logprobs
        options.json_schema = own(o.jsonSchema)
        options.regex = own(o.regex)
        options.grammar = own(o.grammar)
    }

    private func own(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s else { return nil }
        let p = strdup(s)!
        strings.append(p)
        return UnsafePointer(p)
    }

    func cancel() { zeph_cancel_token_cancel(token) }

    deinit {
        zeph_cancel_token_free(token)
        stops.forEach { free($0) }
        strings.forEach { free($0) }
        stopArray.deallocate()
    }
}

/// A token with its natural log-probability (under the distribution the
/// sampler drew from) and its bytes (not necessarily whole characters).
public struct Choice: Sendable, Equatable {
    public var id: UInt32
    public var logprob: Float
    public var bytes: [UInt8]
}

/// A generated token and its most likely alternatives, best first.
public struct TokenLogprob: Sendable, Equatable {
    public var token: Choice
    public var top: [Choice]
}

/// A finished request: its text, why it ended, and the log-probabilities
/// when they were asked for.
public struct Completion: Sendable {
    public var text: String
    public var finishReason: zeph_finish_reason
    public var completionTokens: UInt32
    public var logprobs: [TokenLogprob]
}

/// How `embed` pools a text's token states.
public enum Pooling: Sendable {
    case mean, last
    var c: zeph_pooling { self == .mean ? ZEPH_POOLING_MEAN : ZEPH_POOLING_LAST }
}

/// Reads and frees the log-probabilities a usage holds.
func takeLogprobs(_ usage: inout zeph_usage) -> [TokenLogprob] {
    guard let lp = usage.logprobs else { return [] }
    usage.logprobs = nil
    defer { zeph_logprobs_free(lp) }
    func choice(_ i: Int, _ rank: Int) -> Choice {
        var id: UInt32 = 0
        var l: Float = 0
        var b: UnsafePointer<CChar>?
        var n = 0
        zeph_logprobs_get(lp, i, rank, &id, &l, &b, &n)
        let bytes = b.map { p in p.withMemoryRebound(to: UInt8.self, capacity: n) { Array(UnsafeBufferPointer(start: $0, count: n)) } } ?? []
        return Choice(id: id, logprob: l, bytes: bytes)
    }
    return (0..<zeph_logprobs_count(lp)).map { i in
        TokenLogprob(token: choice(i, 0), top: (0..<zeph_logprobs_n_top(lp, i)).map { choice(i, $0 + 1) })
    }
}

/// Runs a blocking C call on a thread of its own, so that no Swift
/// concurrency thread waits on inference.
func offload<T>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}

/// A zeph_stream handed to the thread that reads it (the C API allows
/// reading from any one thread at a time).
struct StreamHandle: @unchecked Sendable {
    let ptr: OpaquePointer
    init(_ ptr: OpaquePointer) { self.ptr = ptr }
}

/// The log callback, kept alive (and retained by the C side's user_data)
/// as long as its engine.
final class LogBox: @unchecked Sendable {
    let f: @Sendable (zeph_log_level, String) -> Void
    init(_ f: @escaping @Sendable (zeph_log_level, String) -> Void) { self.f = f }
}

final class ProgressBox {
    let f: (Float) -> Bool
    init(_ f: @escaping (Float) -> Bool) { self.f = f }
}

/// A loaded model and its workers.
public final class Engine: @unchecked Sendable {
    let ptr: OpaquePointer
    private var logBox: LogBox?

    /// Loads the model at `modelPath`.  `progress` runs on the calling
    /// thread while it loads (0 to 1; returning false cancels: the
    /// initializer throws `.cancelled`); `log` receives the library's
    /// messages instead of standard error: on the calling thread while it
    /// loads, then on the engine's worker threads, several at once, until
    /// the engine is freed (so it is `@Sendable`, and must return promptly).
    /// `parallel`: sequences each worker runs together (0 = the library's
    /// default, 4).  `loadIntoMemory`: read the whole file into memory
    /// instead of memory-mapping it, so that it may be truncated, rewritten
    /// or deleted afterwards without harm (a mapped file that shrinks kills
    /// the process with SIGBUS); it costs a private copy of the file in
    /// memory.
    public init(modelPath: String, workers: UInt32 = 1, parallel: UInt32 = 0,
                loadIntoMemory: Bool = false,
                progress: ((Float) -> Bool)? = nil,
                log: (@Sendable (zeph_log_level, String) -> Void)? = nil) throws {
        var options = zeph_engine_options_default()
        options.n_workers = workers
        options.n_parallel = parallel
        options.load_into_memory = loadIntoMemory ? 1 : 0
        let progressBox = progress.map(ProgressBox.init)
        if let box = progressBox {
            options.progress = { user, p in
                Unmanaged<ProgressBox>.fromOpaque(user!).takeUnretainedValue().f(p)
            }
            options.progress_user_data = Unmanaged.passUnretained(box).toOpaque()
        }
        let logBox = log.map(LogBox.init)
        if let box = logBox {
            options.log = { user, level, message in
                Unmanaged<LogBox>.fromOpaque(user!).takeUnretainedValue().f(level, String(cString: message!))
            }
            options.log_user_data = Unmanaged.passUnretained(box).toOpaque()
        }
        var engine: OpaquePointer?
        try withExtendedLifetime(progressBox) {
            try check(zeph_engine_new(modelPath, &options, &engine))
        }
        ptr = engine!
        self.logBox = logBox
    }

    /// Loads a model from memory (an app bundle's resource, a download);
    /// the bytes are copied during the call.
    public init(modelData: Data, workers: UInt32 = 1) throws {
        var options = zeph_engine_options_default()
        options.n_workers = workers
        var engine: OpaquePointer?
        try modelData.withUnsafeBytes { raw in
            try check(zeph_engine_new_from_memory(raw.baseAddress, raw.count, &options, &engine))
        }
        ptr = engine!
    }

    deinit {
        zeph_engine_shutdown(ptr)
        zeph_engine_free(ptr)
    }

    public var contextLength: UInt32 { zeph_engine_context_length(ptr) }

    /// Continues `prompt`.  Cancelling the awaiting Task cancels the work.
    public func complete(_ prompt: String, options: GenerateOptions = GenerateOptions()) async throws -> String {
        let request = try Request(options)
        let engine = self
        return try await withTaskCancellationHandler {
            try await offload {
                var text: UnsafeMutablePointer<CChar>?
                try check(zeph_engine_complete(engine.ptr, prompt, &request.options, &text, nil))
                defer { zeph_string_free(text) }
                return String(cString: text!)
            }
        } onCancel: {
            request.cancel()
        }
    }

    /// Renders `messages` with the model's chat template and generates the reply.
    public func chat(_ messages: [Message], options: GenerateOptions = GenerateOptions()) async throws -> String {
        let request = try Request(options)
        let engine = self
        return try await withTaskCancellationHandler {
            try await offload {
                let roles = messages.map { strdup($0.role)! }
                let contents = messages.map { strdup($0.content)! }
                defer {
                    roles.forEach { free($0) }
                    contents.forEach { free($0) }
                }
                var cm = zip(roles, contents).map { zeph_message(role: UnsafePointer($0), content: UnsafePointer($1)) }
                var text: UnsafeMutablePointer<CChar>?
                try check(zeph_engine_chat(engine.ptr, &cm, cm.count, &request.options, &text, nil))
                defer { zeph_string_free(text) }
                return String(cString: text!)
            }
        } onCancel: {
            request.cancel()
        }
    }

    /// Continues `prompt`, with why it ended and, when
    /// `options.logprobs` > 0, the log-probabilities.
    public func completion(_ prompt: String, options: GenerateOptions = GenerateOptions()) async throws -> Completion {
        let request = try Request(options)
        let engine = self
        return try await withTaskCancellationHandler {
            try await offload {
                var text: UnsafeMutablePointer<CChar>?
                var usage = zeph_usage()
                usage.struct_size = UInt32(MemoryLayout<zeph_usage>.size)
                try check(zeph_engine_complete(engine.ptr, prompt, &request.options, &text, &usage))
                defer { zeph_string_free(text) }
                return Completion(text: String(cString: text!), finishReason: usage.finish_reason,
                                  completionTokens: usage.completion_tokens, logprobs: takeLogprobs(&usage))
            }
        } onCancel: {
            request.cancel()
        }
    }

    /// The L2-normalized embedding of `text` (the model's final hidden
    /// states, pooled), computed on the engine's workers.
    public func embed(_ text: String, pooling: Pooling = .mean) async throws -> [Float] {
        let engine = self
        return try await offload {
            var n = 0
            let status = zeph_engine_embed(engine.ptr, text, pooling.c, nil, 0, &n)
            if status != ZEPH_STATUS_INVALID_ARGUMENT || n == 0 { try check(status) }
            var v = [Float](repeating: 0, count: n)
            try v.withUnsafeMutableBufferPointer { buf in
                try check(zeph_engine_embed(engine.ptr, text, pooling.c, buf.baseAddress, buf.count, &n))
            }
            return v
        }
    }

    /// The text of `prompt`'s continuation as it is generated, pulled on
    /// demand: a piece is taken from the library only when the consumer asks
    /// for the next one, so a slow consumer holds the generation back (the C
    /// stream's bounded buffer) instead of piling pieces up in memory.
    /// Ending the iteration early, or cancelling the consuming Task, cancels
    /// the work.
    public func stream(_ prompt: String, options: GenerateOptions = GenerateOptions()) -> AsyncThrowingStream<String, Error> {
        let source: PullStream
        do {
            let request = try Request(options)
            var stream: OpaquePointer?
            try check(zeph_engine_stream_complete(ptr, prompt, &request.options, &stream))
            source = PullStream(stream!, request: request, engine: self)
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
        return AsyncThrowingStream(unfolding: {
            try await withTaskCancellationHandler {
                try await source.next()
            } onCancel: {
                source.request.cancel()
            }
        })
    }
}

/// The C stream behind `Engine.stream`, freed (and its work cancelled) when
/// the Swift stream that pulls from it goes away.
final class PullStream: @unchecked Sendable {
    let handle: StreamHandle
    let request: Request
    let engine: Engine  // the engine outlives its stream

    init(_ ptr: OpaquePointer, request: Request, engine: Engine) {
        handle = StreamHandle(ptr)
        self.request = request
        self.engine = engine
    }

    /// The next piece, nil at the end; waits on a thread of its own.
    func next() async throws -> String? {
        let s = handle
        return try await offload {
            while true {
                var piece: UnsafeMutablePointer<CChar>?
                let status = zeph_stream_next(s.ptr, 100, &piece)
                if status == ZEPH_STATUS_TIMEOUT {
                    var usage = zeph_usage()
                    usage.struct_size = UInt32(MemoryLayout<zeph_usage>.size)
                    zeph_stream_usage(s.ptr, &usage)
                    if let lp = usage.logprobs { zeph_logprobs_free(lp) }
                    if usage.finish_reason == ZEPH_FINISH_NONE { continue }
                }
                try check(status)
                guard let p = piece else { return nil }
                defer { zeph_string_free(p) }
                return String(cString: p)
            }
        }
    }

    deinit { zeph_stream_free(handle.ptr) }
}

import Foundation
import XCTest

@testable import ZephLLM

/// The test model, found as the project's other tests find it: ZEPH_MODEL,
/// or the fetch script.
func modelPath() throws -> String {
    if let p = ProcessInfo.processInfo.environment["ZEPH_MODEL"], !p.isEmpty { return p }
    let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/fetch-models.sh").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script, "--path", "smollm2"]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    process.waitUntilExit()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return out.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// llama.cpp's greedy continuation (8 tokens), tests/data/llamacpp-tokens-and-greedy.json.
let reference = " Paris.\n\nThe United States has"

final class ZephLLMTests: XCTestCase {
    func testGreedyAnswerMatchesLlamaCpp() async throws {
        let engine = try Engine(modelPath: try modelPath())
        let text = try await engine.complete("The capital of France is", options: .greedy(maxTokens: 8))
        XCTAssertEqual(text, reference)
    }

    func testChat() async throws {
        let engine = try Engine(modelPath: try modelPath())
        let text = try await engine.chat([Message(role: "user", content: "What is 2+2?")], options: .greedy(maxTokens: 12))
        XCTAssertFalse(text.isEmpty)
    }

    func testStreamAddsUpToComplete() async throws {
        let engine = try Engine(modelPath: try modelPath())
        var pieces: [String] = []
        for try await piece in engine.stream("The capital of France is", options: .greedy(maxTokens: 8)) {
            pieces.append(piece)
        }
        XCTAssertGreaterThan(pieces.count, 1)
        XCTAssertEqual(pieces.joined(), reference)
    }

    /// A consumer that stops reading holds the generation back: pieces are
    /// pulled on demand, not buffered without bound.  With one worker
    /// running one sequence at a time, a stream read once and then left
    /// alone keeps its slot (its C buffer full), so a second request waits
    /// and times out; were the pieces
    /// buffered in Swift, the stream's 60 tokens would end in a few seconds
    /// and the second request would be answered.
    func testAStreamThatIsNotReadHoldsTheGenerationBack() async throws {
        let engine = try Engine(modelPath: try modelPath(), parallel: 1)
        let stream = engine.stream("Once upon a time", options: .greedy(maxTokens: 60))
        var iterator = stream.makeAsyncIterator()
        let first = try await iterator.next()
        XCTAssertNotNil(first)
        var other = GenerateOptions.greedy(maxTokens: 2)
        other.timeout = .seconds(10)
        do {
            _ = try await engine.complete("Hi", options: other)
            XCTFail("the second request ran: the unread stream did not hold its worker")
        } catch let error as ZephError {
            guard case .timeout = error else { return XCTFail("\(error)") }
        }
        // Reading on, the stream ends normally.
        var n = 1
        while try await iterator.next() != nil { n += 1 }
        XCTAssertGreaterThan(n, 1)
    }

    func testCancellingTheTaskCancelsTheWork() async throws {
        let engine = try Engine(modelPath: try modelPath())
        let task = Task { try await engine.complete("Once upon a time", options: .greedy(maxTokens: 2000)) }
        try await Task.sleep(nanoseconds: 300_000_000)
        let start = Date()
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("the task finished 2,000 tokens")
        } catch let error as ZephError {
            guard case .cancelled = error else { return XCTFail("\(error)") }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        // The worker is free again.
        let next = try await engine.complete("Hi", options: .greedy(maxTokens: 2))
        XCTAssertFalse(next.isEmpty)
    }

    func testErrorsMirrorTheStatus() async throws {
        XCTAssertThrowsError(try Engine(modelPath: "/nonexistent/model.gguf")) { error in
            guard case let .io(message) = error as? ZephError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("model.gguf"))
        }
        let engine = try Engine(modelPath: try modelPath())
        var options = GenerateOptions.greedy(maxTokens: 8)
        options.temperature = -1
        do {
            _ = try await engine.complete("x", options: options)
            XCTFail("accepted a negative temperature")
        } catch let error as ZephError {
            guard case let .invalidArgument(message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("temperature"))
        }
    }

    func testJSONSchemaShapesTheAnswer() async throws {
        let engine = try Engine(modelPath: try modelPath())
        var options = GenerateOptions.greedy(maxTokens: 96)
        options.jsonSchema = #"{"type":"object","properties":{"name":{"type":"string","maxLength":20},"age":{"type":"integer"}},"required":["name","age"],"additionalProperties":false}"#
        let text = try await engine.chat([Message(role: "user", content: "Describe a person as JSON.")], options: options)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        XCTAssertNotNil(object?["name"] as? String, text)
        XCTAssertNotNil(object?["age"] as? Int, text)
        XCTAssertEqual(Set(object?.keys.map { $0 } ?? []).subtracting(["name", "age"]), [])
        var bad = GenerateOptions.greedy(maxTokens: 8)
        bad.regex = "(unclosed"
        do {
            _ = try await engine.complete("x", options: bad)
            XCTFail("accepted a regex that does not compile")
        } catch let error as ZephError {
            guard case .grammar = error else { return XCTFail("\(error)") }
        }
    }

    func testLogprobsEmbeddingsAndLoadingFromMemory() async throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: try modelPath()))
        let engine = try Engine(modelData: data)
        var options = GenerateOptions.greedy(maxTokens: 8)
        options.logprobs = 2
        let c = try await engine.completion("The capital of France is", options: options)
        XCTAssertEqual(c.text, reference)
        XCTAssertEqual(c.logprobs.count, 8)
        XCTAssertEqual(String(decoding: c.logprobs.flatMap { $0.token.bytes }, as: UTF8.self), c.text)
        for t in c.logprobs {
            XCTAssertLessThanOrEqual(t.token.logprob, 0)
            XCTAssertEqual(t.top.count, 2)
            XCTAssertEqual(t.top.first?.id, t.token.id)
        }
        let mean = try await engine.embed("A cat sat on the mat.")
        let last = try await engine.embed("A cat sat on the mat.", pooling: .last)
        XCTAssertEqual(mean.count, 576)
        let norm = mean.reduce(0) { $0 + Double($1) * Double($1) }
        XCTAssertEqual(norm, 1, accuracy: 1e-4)
        let dot = zip(mean, last).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        XCTAssertLessThan(dot, 0.999)
    }

    func testProgressCanCancelAndLogHearsTheLoad() throws {
        final class Heard: @unchecked Sendable { var lines: [String] = [] }
        let heard = Heard()
        var seen: [Float] = []
        _ = try Engine(modelPath: try modelPath(), progress: { seen.append($0); return true },
                       log: { _, message in heard.lines.append(message) })
        XCTAssertEqual(seen.first, 0)
        XCTAssertEqual(seen.last, 1)
        XCTAssertTrue(heard.lines.contains { $0.contains("loaded") }, "\(heard.lines)")
        XCTAssertThrowsError(try Engine(modelPath: try modelPath(), progress: { $0 < 0.5 })) { error in
            guard case .cancelled = error as? ZephError else { return XCTFail("\(error)") }
        }
    }

    /// With `loadIntoMemory` the engine no longer needs its file: truncated
    /// and rewritten (which would kill a process that maps it with SIGBUS),
    /// the model still answers as before.
    func testLoadIntoMemoryOutlivesTheFile() async throws {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("zeph-swift-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("model.gguf")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: try modelPath()), to: copy)
        let engine = try Engine(modelPath: copy.path, loadIntoMemory: true)
        let file = try FileHandle(forWritingTo: copy)
        try file.truncate(atOffset: 0)
        try file.close()
        try Data("not a model any more".utf8).write(to: copy)  // in place, not atomic
        let text = try await engine.complete("The capital of France is", options: .greedy(maxTokens: 8))
        XCTAssertEqual(text, reference)
    }
}

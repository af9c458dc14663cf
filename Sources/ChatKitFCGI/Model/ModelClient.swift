import Glibc

/// Why a model call did not produce a complete answer.
public enum ModelError: Error, Equatable, CustomStringConvertible {
    /// Could not reach the model server, or it stalled.
    case unreachable(String)
    case timedOut(String)
    /// The server answered with a non-2xx status.
    case http(status: Int, message: String, retryAfter: String?)
    /// An in-band error record, or a stream that ended early or made no sense.
    case streamError(String)
    /// Our client went away (or we are shutting down), so the transfer was stopped.
    case cancelled

    /// A failure a second try may not meet (OpenAI's SDKs retry the same ones): a connection
    /// that failed or broke before an answer, a timeout, rate limiting, a server error. Never a
    /// request the server refused as it stands (400, 401, 403, 404, 422).
    public var isRetryable: Bool {
        switch self {
        case .unreachable, .timedOut, .streamError: true
        case .http(let status, _, _): status == 408 || status == 409 || status == 429 || status >= 500
        case .cancelled: false
        }
    }

    public var description: String {
        switch self {
        case .unreachable(let why): "model server unreachable: \(why)"
        case .timedOut(let why): "model server timed out: \(why)"
        case .http(let status, let message, _): "model server returned HTTP \(status): \(message)"
        case .streamError(let why): "model stream failed: \(why)"
        case .cancelled: "cancelled"
        }
    }
}

/// One streamed model answer, accumulated. When `failure` is set, the rest is what arrived
/// before it, which the caller keeps.
public struct ModelTurn {
    public var failure: ModelError?
    public var text = ""
    public var refusal = ""
    public var toolCalls: [ToolCall] = []
    public var finishReason: String?
    public var usage = ChatCompletionChunk.Usage()
    /// How many times the call was sent again after failing before any output.
    public var retries = 0
}

/// What the model client reports while a stream runs. Every method is called on the transfer
/// loop's thread while the request that started the call waits for it, so an observer is never
/// used by two threads at once; it must never block, or every stream of the process would wait.
public protocol ModelStreamObserver: AnyObject {
    /// A chunk as the server sent it (`payload` is the SSE data) plus what we parsed from it.
    /// Returns false when the chunk cannot be delivered (client gone).
    func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool
    /// Called about every 100 ms while waiting; false stops the transfer. A keepalive may be
    /// written only when `canWrite` (otherwise our client's socket is full), which is asked
    /// only then: finding out may take a system call, and thousands of streams tick.
    func idle(canWrite: @autoclosure () -> Bool) -> Bool
    /// Our client's socket, polled while waiting so a disconnect stops the transfer quickly.
    var clientDescriptor: Int32? { get }
    /// Whether a chunk delivered now can be written without blocking (see `ResponseWriter.hasRoom`).
    var outputHasRoom: Bool { get }
}

/// Something that answers a conversation in streamed chunks: the real client, or a scripted
/// model in unit tests.
public protocol ChatModel {
    func stream(messages: [ChatMessage], tools: ToolDefinitions, observer: ModelStreamObserver) async -> ModelTurn
}

/// The `tools` list of a chat completions request, encoded once per process: every request
/// offers the same tools, and encoding their schemas was most of encoding a request.
public struct ToolDefinitions: Sendable {
    public let definitions: [JSON]
    public let encoded: [UInt8]

    public static let none = ToolDefinitions([])

    public init(_ definitions: [JSON]) {
        self.definitions = definitions
        encoded = JSON.array(definitions).serializedBytes
    }
}

/// Streams chat completions from an OpenAI-compatible server over libcurl.
public final class ModelClient: ChatModel {
    public struct Settings: Sendable {
        public var baseURL: String
        public var apiKey: String?
        public var model: String
        /// The model `transcribe` asks.
        public var transcribeModel = "gpt-4o-mini-transcribe"
        public var connectTimeoutMilliseconds: Int
        public var stallTimeoutSeconds: Int
        /// Sendings again of a call that failed before any output reached our client.
        public var retries: Int
        /// The first backoff; each next one doubles, up to `maximumBackoffMilliseconds`.
        public var initialBackoffMilliseconds = 500.0
        public var maximumBackoffMilliseconds = 8_000.0
        /// A server's `Retry-After` is honoured up to this.
        public var maximumRetryAfterMilliseconds = 20_000.0

        /// The defaults and the limits are `Config`'s.
        public init(baseURL: String, apiKey: String?, model: String,
                    connectTimeoutMilliseconds: Int, stallTimeoutSeconds: Int, retries: Int) {
            self.baseURL = baseURL
            self.apiKey = apiKey
            self.model = model
            self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
            self.stallTimeoutSeconds = stallTimeoutSeconds
            self.retries = retries
        }
    }

    private let settings: Settings
    private let http: HTTPClient
    private let metrics: ServerMetrics?
    private let metricSeries: ServerMetrics.ModelCallSeries?
    /// The largest error body we keep from a failing server.
    static let errorBodyLimit = 64 << 10
    /// The most stream data one answer may carry; a server that sends more is broken.
    static let answerByteLimit = 32 << 20

    public init(settings: Settings, http: HTTPClient, metrics: ServerMetrics? = nil) {
        self.settings = settings
        self.http = http
        self.metrics = metrics
        metricSeries = metrics?.modelCallSeries(model: settings.model)
    }

    public func requestBody(messages: [ChatMessage], tools: ToolDefinitions) -> [UInt8] {
        var body = JSON.object([
            ("model", .string(settings.model)),
            ("stream", true),
            ("stream_options", ["include_usage": true]),
            ("messages", .array(messages.map(\.json))),
        ]).serializedBytes
        if !tools.definitions.isEmpty {
            body.removeLast()  // the closing brace: the encoded list goes in as the last member
            body += #","tools":"#.utf8
            body += tools.encoded
            body.append(UInt8(ascii: "}"))
        }
        return body
    }

    /// One call, sent again (as the official OpenAI SDKs do) when it failed in a way a second
    /// try may not, and nothing of it reached our client yet: never after output began.
    public func stream(messages: [ChatMessage], tools: ToolDefinitions, observer: ModelStreamObserver) async -> ModelTurn {
        let body = HTTPClient.Body(requestBody(messages: messages, tools: tools))
        var retries = 0
        while true {
            let started = Clock.monotonicMilliseconds()
            var turn = ModelTurn()
            let reader = AnswerReader(observer: observer)
            do throws(ModelError) {
                try await stream(body, reader: reader, into: &turn)
            } catch {
                turn.failure = error
            }
            if turn.usage == ChatCompletionChunk.Usage(), reader.answered {
                // Cut off before the usage record: a token is about four bytes, in and out.
                let produced = turn.text.utf8.count + turn.refusal.utf8.count + reader.accumulator.finish()
                    .reduce(0) { $0 + $1.arguments.utf8.count }
                turn.usage = ChatCompletionChunk.Usage(promptTokens: body.count / 4, completionTokens: (produced + 3) / 4)
            }
            if let metrics, let metricSeries {
                metrics.recordModelCall(
                    metricSeries, model: settings.model, seconds: (Clock.monotonicMilliseconds() - started) / 1000,
                    firstChunkAfter: reader.firstChunkAt.map { ($0 - started) / 1000 }, usage: turn.usage, failure: turn.failure)
            }
            guard let failure = turn.failure, failure.isRetryable, !reader.deliveredOutput, retries < settings.retries,
                await waitBeforeRetry(retries + 1, after: failure, observer: observer)
            else {
                turn.retries = retries
                return turn
            }
            retries += 1
            metrics?.upstreamRetries.add()
        }
    }

    /// Exponentially with jitter, or as long as the server's `Retry-After` asks (capped).
    private func backoffMilliseconds(before attempt: Int, after failure: ModelError) -> Double {
        if case .http(_, _, let retryAfter?) = failure, let seconds = Double(retryAfter.trimmed()), seconds >= 0 {
            return min(seconds * 1000, settings.maximumRetryAfterMilliseconds)
        }
        return min(settings.initialBackoffMilliseconds * Double(1 << min(attempt - 1, 16)), settings.maximumBackoffMilliseconds)
            * Double.random(in: 0.75...1.25)
    }

    /// Backs off before sending again. Waits in slices, holding no thread, so keepalives go out
    /// and a client gone or a shutdown ends the wait; false when it did.
    private func waitBeforeRetry(_ attempt: Int, after failure: ModelError, observer: ModelStreamObserver) async -> Bool {
        let deadline = Clock.monotonicMilliseconds() + backoffMilliseconds(before: attempt, after: failure)
        while true {
            let left = deadline - Clock.monotonicMilliseconds()
            guard left > 0 else { return true }
            await TransferLoop.shared.sleep(milliseconds: min(left, 100))
            guard observer.idle(canWrite: observer.outputHasRoom) else { return false }
        }
    }

    private func stream(_ body: HTTPClient.Body, reader: AnswerReader, into turn: inout ModelTurn) async throws(ModelError) {
        var request = HTTPClient.Request(url: settings.baseURL + "/chat/completions")
        request.method = "POST"
        request.headers = ["Content-Type: application/json", "Accept: text/event-stream"]
        if let key = settings.apiKey { request.headers.append("Authorization: Bearer \(key)") }
        request.body = body
        request.connectTimeoutMilliseconds = settings.connectTimeoutMilliseconds
        request.stallTimeoutSeconds = settings.stallTimeoutSeconds

        let head: HTTPResponseHead
        do throws(TransferError) {
            head = try await http.perform(request, into: reader)
        } catch {
            turn = reader.turn
            if let failure = reader.failure { throw failure }
            // A complete answer stays complete whatever happens to the connection afterwards.
            if reader.isComplete, error != .watchedDescriptorReady {
                turn.toolCalls = reader.accumulator.finish()
                return
            }
            switch error {
            case .watchedDescriptorReady, .stopped: throw .cancelled
            case .timedOut(let message): throw .timedOut(message)
            case .transport(let message): throw .unreachable(message)
            }
        }
        turn = reader.turn
        guard (200..<300).contains(head.status) else {
            throw .http(status: head.status, message: Self.errorMessage(reader.errorBody), retryAfter: head.headers["retry-after"])
        }
        if let failure = reader.failure { throw failure }
        guard reader.isComplete else { throw .streamError("the stream ended before the answer was finished") }
        turn.toolCalls = reader.accumulator.finish()
    }

    /// A dictated clip's text, from `{base}/audio/transcriptions` (a multipart form, as OpenAI's
    /// endpoint takes it). Sent again as a chat call is, when it failed in a way a second try
    /// may not.
    public func transcribe(_ clip: AudioClip) async throws(ModelError) -> String {
        var request = HTTPClient.Request(url: settings.baseURL + "/audio/transcriptions")
        request.method = "POST"
        // No "Expect: 100-continue" round trip before a large clip: the server reads it anyway.
        request.headers = ["Accept: application/json", "Expect:"]
        if let key = settings.apiKey { request.headers.append("Authorization: Bearer \(key)") }
        request.form = [
            .init(name: "file", bytes: clip.bytes, filename: clip.filename, contentType: clip.mediaType),
            .init(name: "model", bytes: Array(settings.transcribeModel.utf8)),
            .init(name: "response_format", bytes: Array("json".utf8)),
        ]
        request.connectTimeoutMilliseconds = settings.connectTimeoutMilliseconds
        request.stallTimeoutSeconds = settings.stallTimeoutSeconds
        var retries = 0
        while true {
            do throws(ModelError) {
                return try await transcription(request)
            } catch {
                guard error.isRetryable, retries < settings.retries else { throw error }
                retries += 1
                metrics?.upstreamRetries.add()
                await TransferLoop.shared.sleep(milliseconds: backoffMilliseconds(before: retries, after: error))
            }
        }
    }

    private func transcription(_ request: HTTPClient.Request) async throws(ModelError) -> String {
        let answer = CollectedBody(limit: Self.errorBodyLimit)
        let head: HTTPResponseHead
        do throws(TransferError) {
            head = try await http.perform(request, into: answer)
        } catch {
            switch error {
            case .stopped where answer.exceededLimit: throw .streamError("the transcription is larger than \(answer.limit) bytes")
            case .watchedDescriptorReady, .stopped: throw .cancelled
            case .timedOut(let message): throw .timedOut(message)
            case .transport(let message): throw .unreachable(message)
            }
        }
        guard (200..<300).contains(head.status) else {
            throw .http(status: head.status, message: Self.errorMessage(answer.bytes), retryAfter: head.headers["retry-after"])
        }
        guard let text = (try? JSON.parse(answer.bytes))?["text"]?.stringValue else {
            throw .streamError("the transcription answer has no text")
        }
        return text
    }

    private static func errorMessage(_ body: [UInt8]) -> String {
        if let json = try? JSON.parse(body), let message = ChatCompletionChunk.message(of: json["error"] ?? json) {
            return message
        }
        return body.isEmpty ? "no body" : String(decoding: body.prefix(200), as: UTF8.self)
    }
}

/// Reads one streamed answer as libcurl delivers it: decodes the SSE records, accumulates the
/// turn, and relays each chunk to the observer. Runs on the transfer loop's thread while the
/// request that asked for the answer waits, which then reads what it gathered.
final class AnswerReader: TransferConsumer {
    private let observer: ModelStreamObserver
    private(set) var turn = ModelTurn()
    private(set) var accumulator = ToolCallAccumulator()
    /// Set when reading stopped for a reason of our own (a broken chunk, a client gone).
    private(set) var failure: ModelError?
    private(set) var errorBody: [UInt8] = []
    /// A chunk was handed on to our client: from then on the call is never sent again.
    private(set) var deliveredOutput = false
    /// When the first body byte arrived (monotonic milliseconds).
    private(set) var firstChunkAt: Double?
    private var decoder = SSEDecoder()
    private var sawDone = false
    private var answerBytes = 0
    private var status = 0

    init(observer: ModelStreamObserver) {
        self.observer = observer
    }

    /// The server answered 2xx: whatever came, the model worked on it.
    var answered: Bool { (200..<300).contains(status) }

    /// The server said the answer is finished.
    var isComplete: Bool { sawDone || turn.finishReason != nil }

    var watchedDescriptor: Int32? { observer.clientDescriptor }
    var outputHasRoom: Bool { observer.outputHasRoom }
    func tick(outputHasRoom: @autoclosure () -> Bool) -> Bool { observer.idle(canWrite: outputHasRoom()) }
    func head(_ head: HTTPResponseHead) { status = head.status }

    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if firstChunkAt == nil { firstChunkAt = Clock.monotonicMilliseconds() }
        guard (200..<300).contains(status) else {
            errorBody.append(contentsOf: bytes.prefix(ModelClient.errorBodyLimit - errorBody.count))
            return true
        }
        var keepGoing = true
        decoder.feed(bytes) { event in
            if keepGoing { keepGoing = handle(event) }
        }
        if decoder.pendingBytes > ModelClient.answerByteLimit {
            failure = .streamError("a stream record is larger than we accept")
            return false
        }
        return keepGoing
    }

    private func handle(_ event: SSEEvent) -> Bool {
        // Read to the end after [DONE], so the connection stays reusable for the next request.
        if sawDone { return true }
        if event.dataBytes.withUnsafeBytes({ $0.starts(with: "[DONE]") }) {
            sawDone = true
            return true
        }
        do throws(ModelError) {
            let chunk = try event.dataBytes.withUnsafeBufferPointer { bytes throws(ModelError) in
                try ChatCompletionChunk(bytes: bytes)
            }
            turn.text += chunk.content ?? ""
            turn.refusal += chunk.refusal ?? ""
            answerBytes += event.dataBytes.count
            guard answerBytes <= ModelClient.answerByteLimit else { throw .streamError("the answer is larger than we accept") }
            accumulator.add(chunk.toolCalls)
            if let reason = chunk.finishReason { turn.finishReason = reason }
            if let usage = chunk.usage { turn.usage = usage }
            // A payload spread over several data lines is re-encoded onto one line for our client
            // (the chunk was read, so it parses).
            let payload = event.spansLines ? ((try? JSON.parse(event.dataBytes))?.serializedBytes ?? []) : event.dataBytes
            deliveredOutput = true
            if !observer.modelChunk(payload: payload, parsed: chunk) {
                failure = .cancelled
                return false
            }
            return true
        } catch {
            failure = error
            return false
        }
    }
}

/// The body of `POST /api/chat`.
public struct ChatRequest: Equatable {
    public var message: String
    public var conversationID: Int64?

    /// Only the last message is new input: history always comes from our store, so a client
    /// cannot put words in the assistant's mouth. Earlier entries are still checked for shape.
    public init(body: [UInt8]) throws(APIError) {
        let json: JSON
        do throws(JSONParseError) {
            json = try JSON.parse(body)
        } catch {
            throw .badRequest("body is not valid JSON: \(error)")
        }
        guard case .object = json else { throw .invalidBody("body must be a JSON object") }
        guard let messages = json["messages"]?.arrayValue else {
            throw .invalidBody("messages must be an array of {role, content} objects")
        }
        guard let last = messages.last else { throw .invalidBody("messages must not be empty") }
        for (index, message) in messages.enumerated() {
            guard case .object = message, let role = message["role"]?.stringValue,
                ["user", "assistant", "system", "tool"].contains(role)
            else { throw .invalidBody("messages[\(index)].role must be user, assistant, system or tool") }
            if let content = message["content"], Self.text(of: content) == nil, content != .null {
                throw .invalidBody("messages[\(index)].content must be a string or a list of text parts")
            }
        }
        guard last["role"]?.stringValue == "user" else { throw .invalidBody("the last message must have role user") }
        guard let text = last["content"].flatMap(Self.text(of:)), !text.trimmed().isEmpty else {
            throw .invalidBody("the last message must have non-empty text content")
        }
        message = text
        switch json["conversation_id"] {
        case nil, .null?: conversationID = nil
        case .int(let id)? where id > 0: conversationID = Int64(id)
        default: throw .invalidBody("conversation_id must be a positive integer or null")
        }
    }

    /// A string, or an array of `{"type":"text","text":...}` parts as the chat API allows.
    static func text(of content: JSON) -> String? {
        if let string = content.stringValue { return string }
        guard let parts = content.arrayValue else { return nil }
        var text = ""
        for part in parts {
            guard part["type"]?.stringValue == "text", let piece = part["text"]?.stringValue else { return nil }
            text += piece
        }
        return text
    }
}

/// `POST /api/chat`: one user turn, answered as a Server-Sent Events stream.
struct ChatEndpoint: Endpoint {
    let worker: Worker

    var face: String { "chat" }
    var allowedMethods: [String] { ["POST"] }

    /// After the stream started: an error record, then the end of the stream.
    func reportInBand(_ error: APIError, to sse: SSEWriter) {
        sse.send(["type": "error", "code": "internal_error", "detail": .string(error.detail)])
        sse.done()
    }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) async throws {
        let user = try worker.admit(request, writer: writer)
        guard request.hasJSONBody else { throw APIError.unsupportedMediaType }
        let chat = try ChatRequest(body: request.body)
        let store = try worker.store()
        let owned = try chat.conversationID.map { id in
            guard let owned = try store.conversation(id: id, userID: user) else { throw APIError.notFound("conversation not found") }
            return owned
        }
        try worker.beginModelUse(by: user, store: store, writer: writer)
        var usage = ChatCompletionChunk.Usage()
        defer { worker.endModelUse(by: user, store: store, usage: usage) }
        let conversation: Conversation
        let history: [ChatMessage]
        if let owned {
            conversation = owned
            try store.append([.user(chat.message)], to: owned.id)
            history = try store.recentMessages(conversationID: owned.id, limit: worker.app.config.historyLimit)
        } else {
            // The conversation and its first message in one write.
            conversation = try store.createConversation(
                userID: user, title: Titles.truncate(chat.message), first: [ConversationEntry(.user(chat.message))])
            history = [.user(chat.message)]  // just written: no need to read it back
        }

        let stream = ChatStream(conversationID: conversation.id, writer: writer, app: worker.app)
        let summary = try await worker.chatAgent.run(
            history: history, context: worker.toolContext(for: user, store: store), observer: stream
        ) { messages in try store.append(messages, to: conversation.id) }
        usage = summary.usage
        log.rounds = summary.rounds
        log.retries = summary.retries
        log.usage = summary.usage
        stream.finish(summary.end, log: &log)
    }
}

/// Turns agent events into the /api/chat record stream. The head is written lazily, so a model
/// failure before any output can still be an HTTP status with a JSON body.
final class ChatStream: TurnStream {
    private let conversationID: Int64
    let writer: ResponseWriter
    let sse: SSEWriter
    let app: Application

    init(conversationID: Int64, writer: ResponseWriter, app: Application) {
        self.conversationID = conversationID
        self.writer = writer
        self.sse = SSEWriter(writer: writer)
        self.app = app
    }

    func startIfNeeded() {
        guard !sse.started else { return }
        sse.start(extraHeaders: [("X-Conversation-Id", String(conversationID))])
        // Every caller sends a record next: both leave in one write.
        sse.send(["type": "conversation", "conversation_id": .int(Int(conversationID))], flush: false)
    }

    func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool {
        startIfNeeded()
        return sse.send(payload: payload)
    }

    func toolFinished(call: ToolCall, result: Result<JSON, ToolError>) {
        startIfNeeded()
        var record: [(String, JSON)] = [
            ("type", "tool_result"), ("name", .string(call.name)), ("tool_call_id", .string(call.id)),
        ]
        switch result {
        case .success(let json): record += [("result", json), ("is_error", false)]
        case .failure(let error): record += [("result", ["error": .string(error.message)]), ("is_error", true)]
        }
        sse.send(.object(record))
    }

    func finish(_ end: TurnEnd, log: inout RequestLog) {
        switch ending(of: end, log: &log) {
        case .answered:  // this face offers the model no client tools
            startIfNeeded()
            sse.done()
        case .roundLimitReached(let rounds):
            startIfNeeded()
            sse.send(["type": "error", "code": "max_tool_rounds",
                      "detail": .string("stopped after \(rounds) model rounds without a final answer")])
            sse.done()
        case .serverShutdown:
            startIfNeeded()
            sse.send(["type": "error", "code": "server_shutdown", "detail": "the server is restarting; ask again"])
            sse.done()
        case .clientGone:
            break
        case .failed(let error):
            let apiError = APIError.model(error)
            if sse.started {
                sse.send(["type": "error", "code": "upstream_error", "detail": .string(apiError.detail)])
                sse.done()
            } else {
                apiError.write(
                    to: writer, extra: [("conversation_id", .int(Int(conversationID)))],
                    headers: [("X-Conversation-Id", String(conversationID))])
            }
        }
    }
}

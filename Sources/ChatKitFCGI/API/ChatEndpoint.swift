/// The body of `POST /api/chat`.
public struct ChatRequest: Equatable {
    public var message: String
    /// The image and file parts of the message, decoded: the endpoint checks and stores them.
    public var files: [UploadedFile]
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
            switch message["content"] {
            case nil, .null?, .string?: break
            case .array(let parts)? where parts.allSatisfy({ $0["type"]?.stringValue != nil }): break
            default: throw .invalidBody("messages[\(index)].content must be a string or a list of content parts")
            }
        }
        guard last["role"]?.stringValue == "user" else { throw .invalidBody("the last message must have role user") }
        (message, files) = try Self.content(of: last["content"])
        guard !message.trimmed().isEmpty || !files.isEmpty else {
            throw .invalidBody("the last message must have non-empty text content")
        }
        switch json["conversation_id"] {
        case nil, .null?: conversationID = nil
        case .int(let id)? where id > 0: conversationID = Int64(id)
        default: throw .invalidBody("conversation_id must be a positive integer or null")
        }
    }

    /// A string, or a list of parts as the chat completions API takes them: `text`, `image_url`
    /// with a data URL, `file` with a filename and a data URL.
    static func content(of content: JSON?) throws(APIError) -> (text: String, files: [UploadedFile]) {
        if let string = content?.stringValue { return (string, []) }
        guard let parts = content?.arrayValue else {
            throw .invalidBody("the last message's content must be a string or a list of text, image_url and file parts")
        }
        var text = ""
        var files: [UploadedFile] = []
        for part in parts {
            switch part["type"]?.stringValue {
            case "text":
                guard let piece = part["text"]?.stringValue else { throw .invalidBody("a text part needs a text string") }
                text += piece
            case "image_url":
                guard let url = part["image_url"]?["url"]?.stringValue, let (mimeType, bytes) = dataURL(url) else {
                    throw .invalidBody("an image_url part needs image_url.url, a base64 data: URL")
                }
                let fileExtension = mimeType.split(separator: "/").last.map { "." + $0 } ?? ""
                files.append(UploadedFile(name: "image-\(files.count + 1)\(fileExtension)", mimeType: mimeType, bytes: bytes))
            case "file":
                guard let name = part["file"]?["filename"]?.stringValue, let url = part["file"]?["file_data"]?.stringValue,
                    let (mimeType, bytes) = dataURL(url)
                else { throw .invalidBody("a file part needs file.filename and file.file_data, a base64 data: URL") }
                files.append(UploadedFile(name: name, mimeType: mimeType, bytes: bytes))
            default:
                throw .invalidBody("content parts must be text, image_url or file")
            }
        }
        return (text, files)
    }

    /// `data:TYPE[;PARAMETER…];base64,DATA`: the type without its parameters, and the bytes.
    public static func dataURL(_ url: String) -> (mimeType: String, bytes: [UInt8])? {
        guard url.hasPrefix("data:"), let comma = url.firstIndex(of: ",") else { return nil }
        let header = url[url.index(url.startIndex, offsetBy: 5)..<comma].split(separator: ";", omittingEmptySubsequences: false)
        guard header.count >= 2, header.last == "base64", let mimeType = header.first, !mimeType.isEmpty,
            let bytes = Base64.decode(url[url.index(after: comma)...])
        else { return nil }
        return (mimeType.lowercased(), bytes)
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
        let turn = try begin(request, writer: writer)
        var usage = ChatCompletionChunk.Usage()
        defer { worker.endModelUse(by: turn.user, store: turn.store, usage: usage) }
        let stream = ChatStream(conversationID: turn.conversation.id, writer: writer, app: worker.app)
        let summary = try await worker.chatAgent.run(
            history: turn.history, context: worker.toolContext(for: turn.user, store: turn.store), observer: stream
        ) { messages in try turn.store.append(messages, to: turn.conversation.id) }
        usage = summary.usage
        log.rounds = summary.rounds
        log.retries = summary.retries
        log.usage = summary.usage
        stream.finish(summary.end, log: &log)
    }

    /// A turn whose message is stored, holding one of its user's stream places.
    private struct Turn {
        let user: String
        let store: any Store
        let conversation: Conversation
        let history: [ChatMessage]
    }

    /// Everything before the model call: the request read and checked, a stream place taken
    /// (`endModelUse` gives it back), the message stored. Not inlined into `handle`: an async
    /// function's frame keeps room for its temporaries for as long as the stream lasts.
    @inline(never)
    private func begin(_ request: HTTPRequest, writer: ResponseWriter) throws -> Turn {
        let user = try worker.admit(request, writer: writer)
        guard request.hasJSONBody else { throw APIError.unsupportedMediaType }
        let chat = try ChatRequest(body: request.body)
        let store = try worker.store()
        let owned = try chat.conversationID.map { id in
            guard let owned = try store.conversation(id: id, userID: user) else { throw APIError.notFound("conversation not found") }
            return owned
        }
        let attachments = UserAttachments(store: store, user: user, rules: worker.app.config.attachments,
                                          links: worker.attachmentLinks(for: request, user: user))
        try attachments.rules.check(count: chat.files.count)
        // Every file checked before any is stored; stored, they are removed again if the message is not.
        let message = ChatMessage.user(chat.message, attachments: try chat.files.map(attachments.checked))
        try worker.beginModelUse(by: user, store: store, writer: writer)
        do {
            if let owned {
                try attachments.registering(message.attachments) { try store.append([message], to: owned.id) }
                let history = try attachments.loadingData(
                    into: store.recentMessages(conversationID: owned.id, limit: worker.app.config.historyLimit))
                return Turn(user: user, store: store, conversation: owned, history: history)
            }
            // The conversation and its first message in one write.
            let title = Titles.truncate(Titles.source(of: message))
            let conversation = try attachments.registering(message.attachments) {
                try store.createConversation(userID: user, title: title, first: [ConversationEntry(message)])
            }
            // Just written, its files' bytes in hand: no need to read it back.
            return Turn(user: user, store: store, conversation: conversation, history: [message])
        } catch {
            worker.endModelUse(by: user, store: store, usage: ChatCompletionChunk.Usage())
            throw error
        }
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

/// `POST /api/chatkit`: the ChatKit custom-backend protocol. One URL, a typed envelope
/// `{type, params, metadata}`; streaming types answer with SSE, the others with JSON.
struct ChatKitEndpoint: Endpoint {
    let worker: Worker

    var face: String { "chatkit" }
    var allowedMethods: [String] { ["POST"] }

    /// After the stream started: an `error` event the UI shows in its own words.
    func reportInBand(_ error: APIError, to sse: SSEWriter) {
        sse.send(["type": "error", "code": "stream.error", "allow_retry": true])
    }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) async throws {
        let user = try worker.admit(request, writer: writer)
        try await ChatKitRequests(worker: worker, user: user, store: try worker.store(),
                                  links: worker.attachmentLinks(for: request, user: user)).handle(request, writer: writer, log: &log)
    }
}

/// One user's ChatKit requests. Every lookup is scoped to the token's user, and everything that
/// can fail before the stream starts is checked first, so it gets a 4xx JSON answer instead of
/// a dropped connection.
struct ChatKitRequests {
    let worker: Worker
    let user: String
    let store: any Store
    let links: AttachmentLinks

    private var attachments: UserAttachments {
        UserAttachments(store: store, user: user, rules: worker.app.config.attachments, links: links)
    }

    /// The requests that call the model (a turn, or dictation): each takes one of the user's
    /// stream places and is charged the tokens it used.
    static let callsTheModel: Set<String> = [
        "threads.create", "threads.add_user_message", "threads.retry_after_item", "threads.add_client_tool_output",
        "input.transcribe",
    ]

    static let defaultPageSize = 20
    static let maximumPageSize = 100
    /// Feedback is given on items the client shows: at most a page of them.
    static let maximumFeedbackItems = maximumPageSize

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) async throws {
        // The official server reads the body whatever its label, and which one the ChatKit client
        // sends is not documented: text (fetch's label for a string body) and none are read too.
        guard request.contentType == nil || ["application/json", "text/plain"].contains(request.mediaType) else {
            throw APIError.unsupportedMediaType
        }
        let envelope: JSON
        do throws(JSONParseError) {
            envelope = try JSON.parse(request.body)
        } catch {
            throw APIError.badRequest("body is not valid JSON: \(error)")
        }
        guard case .object = envelope, let type = envelope["type"]?.stringValue else {
            throw APIError.invalidBody(#"body must be an object with a string type, e.g. {"type":"threads.list","params":{}}"#)
        }
        // Required on every request, as the SDK's models require it, even where all of its
        // members are optional.
        guard let params = envelope["params"], case .object = params else {
            throw APIError.invalidBody(#"params must be an object; \#(type) takes {"type":"\#(type)","params":{\#(Self.parameterHint(type))}}"#)
        }
        if Self.callsTheModel.contains(type) {
            try worker.beginModelUse(by: user, store: store, writer: writer)
        }
        defer { if Self.callsTheModel.contains(type) { worker.endModelUse(by: user, store: store, usage: log.usage) } }
        switch type {
        case "threads.create": try await create(params, writer: writer, log: &log)
        case "threads.add_user_message": try await addUserMessage(params, writer: writer, log: &log)
        case "threads.retry_after_item": try await retry(params, writer: writer, log: &log)
        case "threads.add_client_tool_output": try await addClientToolOutput(params, writer: writer, log: &log)
        case "threads.custom_action": try customAction(params, writer: writer)
        case "threads.get_by_id": writer.writeJSON(status: 200, try threadWithItems(params))
        case "threads.list": writer.writeJSON(status: 200, try listThreads(params))
        case "items.list": writer.writeJSON(status: 200, try listItems(params))
        case "threads.update": writer.writeJSON(status: 200, try updateThread(params))
        case "threads.delete":
            try store.delete(conversationID: try conversation(params).id)
            writer.writeJSON(status: 200, [:])
        case "items.feedback": writer.writeJSON(status: 200, try feedback(params))
        case "input.transcribe":
            let clip = try audioClip(params)
            do {
                writer.writeJSON(status: 200, ["text": .string(try await worker.modelClient.transcribe(clip))])
            } catch {
                throw APIError.model(error)
            }
        case "attachments.create":
            guard case .int(let size)? = params["size"] else { throw APIError.invalidBody("params.size must be an integer") }
            writer.writeJSON(status: 200, try attachments.create(name: try string(params, "name"), size: size,
                                                                 mimeType: try string(params, "mime_type")))
        case "attachments.delete":
            try attachments.delete(try string(params, "attachment_id"))
            writer.writeJSON(status: 200, [:])
        case "threads.add_structured_input", "threads.sync_custom_action":
            throw APIError.badRequest("\(type) is not supported by this server")
        default:
            throw APIError.badRequest("unknown request type \(type)")
        }
    }

    /// What a request type's params hold, for an error message that shows the way.
    static func parameterHint(_ type: String) -> String {
        switch type {
        case "threads.create": #""input":{"content":[{"type":"input_text","text":"hello"}],"attachments":[],"inference_options":{}}"#
        case "threads.add_user_message": #""thread_id":"thr_…","input":{…}"#
        case "threads.list": ""
        case "threads.get_by_id", "threads.delete": #""thread_id":"thr_…""#
        case "items.list": #""thread_id":"thr_…","limit":20,"order":"asc","after":null"#
        case "threads.update": #""thread_id":"thr_…","title":"…""#
        case "input.transcribe": #""audio_base64":"…","mime_type":"audio/webm;codecs=opus""#
        case "attachments.create": #""name":"photo.png","size":1234,"mime_type":"image/png""#
        case "attachments.delete": #""attachment_id":"atc_…""#
        default: "…"
        }
    }

    // MARK: Parameters

    private func string(_ params: JSON, _ name: String) throws -> String {
        guard let value = params[name]?.stringValue, !value.isEmpty else {
            throw APIError.invalidBody("params.\(name) must be a non-empty string")
        }
        return value
    }

    /// Dictated audio: base64 of a type the transcription endpoint takes.
    private func audioClip(_ params: JSON) throws -> AudioClip {
        guard let bytes = Base64.decode(try string(params, "audio_base64")), !bytes.isEmpty else {
            throw APIError.invalidBody("params.audio_base64 must be the audio in base64")
        }
        guard let clip = AudioClip(bytes: bytes, mimeType: try string(params, "mime_type")) else {
            throw APIError.invalidBody("params.mime_type must be an audio type: \(AudioClip.mediaTypes.joined(separator: ", "))")
        }
        return clip
    }

    /// Another user's thread gets exactly the answer a missing one gets.
    private func conversation(_ params: JSON) throws -> Conversation {
        guard let found = try store.conversation(publicID: try string(params, "thread_id"), userID: user) else {
            throw APIError.notFound("thread not found")
        }
        return found
    }

    private struct Paging {
        var limit = ChatKitRequests.defaultPageSize
        var order = SortOrder.desc
        var after: String?
    }

    private func paging(_ params: JSON) throws -> Paging {
        var paging = Paging()
        switch params["limit"] {
        case nil, .null?, .int(0)?: break
        case .int(let limit)? where limit > 0: paging.limit = min(limit, Self.maximumPageSize)
        default: throw APIError.invalidBody("params.limit must be a positive integer")
        }
        switch params["order"] {
        case nil, .null?: break
        case .string(let order)?:
            guard let parsed = SortOrder(rawValue: order) else { throw APIError.invalidBody("params.order must be asc or desc") }
            paging.order = parsed
        default: throw APIError.invalidBody("params.order must be asc or desc")
        }
        switch params["after"] {
        case nil, .null?: break
        case .string(let after)?: paging.after = after
        default: throw APIError.invalidBody("params.after must be a string")
        }
        return paging
    }

    // MARK: JSON requests

    private func itemsPage(_ conversation: Conversation, _ paging: Paging) throws -> JSON {
        guard let page = try store.entries(conversationID: conversation.id, limit: paging.limit, after: paging.after,
                                           order: paging.order)
        else { throw APIError.notFound("no item \(paging.after ?? "") in this thread") }
        return ChatKitItems.page(page.data.compactMap { ChatKitItems.item($0, threadID: conversation.publicID, links: links) },
                                 hasMore: page.hasMore)
    }

    /// With the oldest items first, as the official server embeds them.
    private func threadWithItems(_ params: JSON) throws -> JSON {
        let found = try conversation(params)
        return ChatKitItems.thread(found, items: try itemsPage(found, Paging(order: .asc)))
    }

    private func listThreads(_ params: JSON) throws -> JSON {
        let paging = try paging(params)
        guard let page = try store.conversations(userID: user, limit: paging.limit, after: paging.after, order: paging.order)
        else { throw APIError.notFound("no thread \(paging.after ?? "")") }
        return ChatKitItems.page(page.data.map { ChatKitItems.thread($0) }, hasMore: page.hasMore)
    }

    private func listItems(_ params: JSON) throws -> JSON {
        try itemsPage(try conversation(params), try paging(params))
    }

    private func updateThread(_ params: JSON) throws -> JSON {
        var found = try conversation(params)
        guard let title = params["title"]?.stringValue else { throw APIError.invalidBody("params.title must be a string") }
        found.title = String(Titles.prefix(title.trimmed(), characters: 200).0)
        try store.rename(conversationID: found.id, title: found.title)
        return ChatKitItems.thread(found)
    }

    private func feedback(_ params: JSON) throws -> JSON {
        let found = try conversation(params)
        guard let ids = params["item_ids"]?.arrayValue, !ids.isEmpty, ids.allSatisfy({ $0.stringValue != nil }) else {
            throw APIError.invalidBody("params.item_ids must be a non-empty list of item ids")
        }
        // Each id is looked up inside the one write every user's commits wait for.
        let distinctIDs = Array(Set(ids.compactMap(\.stringValue)))
        guard distinctIDs.count <= Self.maximumFeedbackItems else {
            throw APIError.invalidBody("params.item_ids may name at most \(Self.maximumFeedbackItems) items")
        }
        guard let kind = params["kind"]?.stringValue, kind == "positive" || kind == "negative" else {
            throw APIError.invalidBody("params.kind must be positive or negative")
        }
        let marked = try store.setFeedback(conversationID: found.id, itemIDs: distinctIDs, positive: kind == "positive")
        guard marked > 0 else { throw APIError.notFound("no such item in this thread") }
        return [:]
    }

    // MARK: Streaming requests

    private func create(_ params: JSON, writer: ResponseWriter, log: inout RequestLog) async throws {
        let input = try UserInput(params["input"])
        let message = try userEntry(input)
        let created = try store.createConversation(userID: user, title: "", first: [message])
        let sse = SSEWriter(writer: writer)
        sse.start()
        // thread.created, the user's message and stream_options leave in one write (runAgent).
        sse.send(["type": "thread.created", "thread": ChatKitItems.thread(created)], flush: false)
        sendDone(message, in: created, sse: sse)
        // Just written: no need to read the history back.
        try await runAgent(in: created, history: [message.message], sse: sse, writer: writer, log: &log,
                           titleSource: Titles.source(of: message.message))
    }

    private func addUserMessage(_ params: JSON, writer: ResponseWriter, log: inout RequestLog) async throws {
        let found = try conversation(params)
        let input = try UserInput(params["input"])
        let message = try userEntry(input)
        try store.append([message], to: found.id)
        let sse = SSEWriter(writer: writer)
        sse.start()
        sendDone(message, in: found, sse: sse)
        try await runAgent(in: found, sse: sse, writer: writer, log: &log, titleSource: Titles.source(of: message.message))
    }

    private func userEntry(_ input: UserInput) throws -> ConversationEntry {
        let files = try attachments.forMessage(input.attachmentIDs)
        var entry = ConversationEntry(.user(input.text, attachments: files), item: .object(input.itemBody))
        entry.createdAt = Clock.unixMilliseconds()
        return entry
    }

    private func sendDone(_ entry: ConversationEntry, in conversation: Conversation, sse: SSEWriter) {
        if let item = ChatKitItems.item(entry, threadID: conversation.publicID, links: links) {
            sse.send(["type": "thread.item.done", "item": item], flush: false)  // runAgent's stream_options follows
        }
    }

    private func retry(_ params: JSON, writer: ResponseWriter, log: inout RequestLog) async throws {
        let found = try conversation(params)
        let itemID = try string(params, "item_id")
        guard let entry = try store.entry(conversationID: found.id, itemID: itemID), entry.audience != .model else {
            throw APIError.notFound("item not found")
        }
        guard entry.message.role == .user else { throw APIError.badRequest("only a user message can be answered again") }
        try store.deleteEntries(conversationID: found.id, after: itemID)
        let sse = SSEWriter(writer: writer)
        sse.start()
        try await runAgent(in: found, sse: sse, writer: writer, log: &log, titleSource: Titles.source(of: entry.message))
    }

    private func addClientToolOutput(_ params: JSON, writer: ResponseWriter, log: inout RequestLog) async throws {
        let found = try conversation(params)
        guard let result = params["result"] else { throw APIError.invalidBody("params.result is required") }
        guard let latest = try store.latestVisibleEntry(conversationID: found.id), latest.awaitingResult,
            let body = latest.item, let callID = body["call_id"]?.stringValue, let name = body["name"]?.stringValue
        else { throw APIError.badRequest("there is no pending client tool call in this thread") }
        let call = ToolCall(id: callID, name: name, arguments: body["arguments"]?.serialized ?? "{}")
        let completed = try store.resolve(
            awaitingEntry: latest.itemID, in: found.id,
            item: ChatKitStream.clientToolCallBody(call, status: "completed", output: result),
            result: ConversationEntry(ChatMessage(role: .tool, content: result.serialized, toolCallID: callID)))
        guard completed else { throw APIError.badRequest("this client tool call was already answered") }
        let sse = SSEWriter(writer: writer)
        sse.start()
        try await runAgent(in: found, sse: sse, writer: writer, log: &log, titleSource: nil)
    }

    private func customAction(_ params: JSON, writer: ResponseWriter) throws {
        _ = try conversation(params)
        guard params["action"]?["type"]?.stringValue != nil else { throw APIError.invalidBody("params.action.type is required") }
        let sse = SSEWriter(writer: writer)
        sse.start()
        sse.send(["type": "error", "code": "custom", "message": "This assistant has no widgets, so it has no actions to run.",
                  "allow_retry": false])
    }

    private func runAgent(in conversation: Conversation, history knownHistory: [ChatMessage]? = nil, sse: SSEWriter,
                          writer: ResponseWriter, log: inout RequestLog, titleSource: String?) async throws {
        // A new thread's title: a truncation is known now and rides along with the first items.
        let titleSourceIfUntitled = conversation.title.isEmpty ? titleSource : nil
        let truncatedTitle = worker.app.config.titleStyle == .truncate ? titleSourceIfUntitled.map { Titles.truncate($0) } : nil
        let (stream, history) = try startRun(in: conversation, history: knownHistory, sse: sse, writer: writer,
                                             title: truncatedTitle)
        let summary = try await worker.chatKitAgent.run(history: history, context: worker.toolContext(for: user, store: store),
                                                  observer: stream, record: stream.record)
        log.rounds = summary.rounds
        log.retries = summary.retries
        log.usage = summary.usage
        try stream.finish(summary.end, log: &log)
        if let titleSourceIfUntitled, !sse.clientGone {
            var titled = conversation
            if let truncatedTitle, stream.titleToStore == nil {
                titled.title = truncatedTitle
            } else {
                titled.title = await Titles.make(for: titleSourceIfUntitled, style: worker.app.config.titleStyle,
                                           model: worker.chatKitAgent.model)
                try store.rename(conversationID: titled.id, title: titled.title)
            }
            sse.send(["type": "thread.updated", "thread": ChatKitItems.thread(titled)])
        }
    }

    /// The stream's options sent, its observer made, the history the model reads. Not inlined
    /// into `runAgent`: an async function's frame keeps room for its temporaries for as long as
    /// the stream lasts.
    @inline(never)
    private func startRun(in conversation: Conversation, history knownHistory: [ChatMessage]?, sse: SSEWriter,
                          writer: ResponseWriter, title: String?) throws -> (ChatKitStream, [ChatMessage]) {
        sse.send(["type": "stream_options", "stream_options": ["allow_cancel": true]])
        let stream = ChatKitStream(conversation: conversation, store: store, sse: sse, writer: writer, app: worker.app)
        stream.titleToStore = title
        let history = try attachments.loadingData(into: knownHistory
            ?? store.recentMessages(conversationID: conversation.id, limit: worker.app.config.historyLimit))
        return (stream, history)
    }
}

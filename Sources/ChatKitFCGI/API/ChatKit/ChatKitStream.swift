/// Turns one agent run into ChatKit stream events and stored thread items, in the order the
/// official server emits them: the assistant message opens with its first text delta, tool runs
/// show as a `progress_update` plus a workflow with one task per call, and each item is stored
/// when its `thread.item.done` goes out.
final class ChatKitStream: TurnStream {
    private struct OpenMessage {
        let id: String
        /// Sent with `thread.item.added` and stored with the item, so both say the same.
        let createdAt = Clock.unixMilliseconds()
        /// A text delta's event up to the delta itself, encoded once: it goes out per token.
        let deltaEventHead: [UInt8]

        init(id: String) {
            self.id = id
            var head = Array(#"{"type":"thread.item.updated","item_id":"#.utf8)
            JSON.writeString(id, to: &head)
            head += #","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"#.utf8
            deltaEventHead = head
        }
    }

    private struct OpenWorkflow {
        let id: String
        let createdAt = Clock.unixMilliseconds()
        let startedMilliseconds = Clock.monotonicMilliseconds()
        var tasks: [JSON] = []
        var taskIndexByCall: [String: Int] = [:]
    }

    static let cancelledNote = "The user cancelled the stream. Stop responding to the prior request."

    private let conversation: Conversation
    private let store: any Store
    let sse: SSEWriter
    let writer: ResponseWriter
    let app: Application
    private var assistant: OpenMessage?
    private var workflow: OpenWorkflow?
    /// A new thread's title, stored with the turn's first items rather than by a write of its
    /// own; nil again once stored.
    var titleToStore: String?

    init(conversation: Conversation, store: any Store, sse: SSEWriter, writer: ResponseWriter, app: Application) {
        self.conversation = conversation
        self.store = store
        self.sse = sse
        self.writer = writer
        self.app = app
    }

    private var threadID: String { conversation.publicID }

    private func send(_ type: String, _ members: [(String, JSON)], flush: Bool = true) {
        sse.send(.object([("type", .string(type))] + members), flush: flush)
    }

    private func itemEvent(_ type: String, _ entry: ConversationEntry, flush: Bool = true) {
        guard let item = ChatKitItems.item(entry, threadID: threadID) else { return }
        send(type, [("item", item)], flush: flush)
    }

    private func update(_ itemID: String, _ update: JSON, flush: Bool = true) {
        send("thread.item.updated", [("item_id", .string(itemID)), ("update", update)], flush: flush)
    }

    // MARK: Model and tool events

    func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool {
        guard let delta = parsed.content ?? parsed.refusal, !delta.isEmpty else { return !sse.clientGone }
        if assistant == nil {
            let opened = OpenMessage(id: PublicID.make(.message))
            assistant = opened
            var entry = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: opened.id, audience: .client,
                                          item: .object([("type", "assistant_message"), ("content", [])]))
            entry.createdAt = opened.createdAt
            // The message opens with its first delta: the three events leave in one write.
            itemEvent("thread.item.added", entry, flush: false)
            update(opened.id, ["type": "assistant_message.content_part.added", "content_index": 0,
                               "content": ChatKitItems.outputText("")], flush: false)
        }
        let head = assistant!.deltaEventHead
        return sse.send { event in
            event += head
            JSON.writeString(delta, to: &event)
            event += "}}".utf8
        }
    }

    func toolStarted(call: ToolCall) {
        let title = app.toolbox.tool(named: call.name)?.title ?? call.name
        send("progress_update", [("icon", "bolt"), ("text", .string("\(title)…"))])
        let task: JSON = ["type": "custom", "title": .string(title), "icon": "bolt", "status_indicator": "loading"]
        if workflow == nil {
            var opened = OpenWorkflow(id: PublicID.make(.workflow))
            opened.tasks = [task]
            opened.taskIndexByCall[call.id] = 0
            workflow = opened
            var entry = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: opened.id, audience: .client,
                                          item: workflowBody(opened, summary: nil))
            entry.createdAt = opened.createdAt
            itemEvent("thread.item.added", entry)
        } else {
            workflow!.tasks.append(task)
            workflow!.taskIndexByCall[call.id] = workflow!.tasks.count - 1
            update(workflow!.id, ["type": "workflow.task.added", "task_index": .int(workflow!.tasks.count - 1), "task": task])
        }
    }

    func toolFinished(call: ToolCall, result: Result<JSON, ToolError>) {
        guard let index = workflow?.taskIndexByCall[call.id] else { return }
        let title = app.toolbox.tool(named: call.name)?.title ?? call.name
        let task: JSON
        switch result {
        case .success(let json):
            task = ["type": "custom", "title": .string(title), "content": .string(Self.describe(json)), "icon": "check",
                    "status_indicator": "complete"]
        case .failure(let error):
            task = ["type": "custom", "title": .string(title), "content": .string(error.message), "icon": "info",
                    "status_indicator": "complete"]
        }
        workflow!.tasks[index] = task
        update(workflow!.id, ["type": "workflow.task.updated", "task_index": .int(index), "task": task])
    }

    /// One line a person can read: the task title, or how many tasks a listing found.
    /// A list cut short for the model (`Agent.bounded`) is described by what it kept.
    private static func describe(_ result: JSON) -> String {
        if let title = result["title"]?.stringValue { return title }
        if let tasks = result.arrayValue ?? result["items"]?.arrayValue {
            let text = tasks.isEmpty ? "No tasks" : tasks.compactMap { $0["title"]?.stringValue }.joined(separator: ", ")
            return String(Titles.prefix(Substring(text), characters: 500).0)
        }
        return String(Titles.prefix(Substring(result.serialized), characters: 500).0)
    }

    private func workflowBody(_ workflow: OpenWorkflow, summary: JSON?) -> JSON {
        var inner: [(String, JSON)] = [("type", "custom"), ("tasks", .array(workflow.tasks))]
        if let summary { inner.append(("summary", summary)) }
        inner.append(("expanded", false))
        return .object([("type", "workflow"), ("workflow", .object(inner))])
    }

    // MARK: Storing what the agent produced

    /// The text before tool calls is finished before they run, as the official server finishes
    /// it: stored and `done` now, not left streaming while the tools work. The model sees text
    /// and calls as one message; ChatKit shows the text as an item of its own.
    func toolCallsArrived(after text: String) throws {
        let streamed = assistant
        assistant = nil
        guard streamed != nil || !text.isEmpty else { return }
        var shown = ConversationEntry(ChatMessage(role: .assistant, content: text), itemID: streamed?.id, audience: .client)
        shown.createdAt = streamed?.createdAt ?? Clock.unixMilliseconds()
        if let streamed { finishText(of: streamed, text) }
        try save([shown])
        itemEvent("thread.item.done", shown)
    }

    /// Called by the agent once per round. Decorates the messages with ChatKit items, stores them
    /// and sends the `done` events for what was open.
    func record(_ messages: [ChatMessage]) throws {
        var entries: [ConversationEntry] = []
        var doneEvents: [ConversationEntry] = []
        var clientCallItem: ConversationEntry?
        let now = Clock.unixMilliseconds()
        for message in messages {
            guard message.role == .assistant else {
                entries.append(ConversationEntry(message))
                continue
            }
            guard message.toolCalls.isEmpty else {
                entries.append(ConversationEntry(message, audience: .model))  // its text is shown already
                if let call = message.toolCalls.first(where: { call in app.config.clientTools.contains { $0.name == call.name } }) {
                    var item = ConversationEntry(
                        ChatMessage(role: .assistant, content: nil), itemID: PublicID.make(.clientToolCall), audience: .client,
                        item: Self.clientToolCallBody(call, status: "pending", output: nil))
                    item.awaitingResult = true
                    item.createdAt = now
                    clientCallItem = item
                }
                continue
            }
            let text = message.content ?? ""
            let streamed = assistant
            assistant = nil
            var entry = ConversationEntry(message, itemID: streamed?.id)
            entry.createdAt = streamed?.createdAt ?? now
            entries.append(entry)
            if let streamed { finishText(of: streamed, text) }
            if streamed != nil || !text.isEmpty { doneEvents.append(entry) }
        }
        if let open = workflow {
            let seconds = Int((Clock.monotonicMilliseconds() - open.startedMilliseconds) / 1000)
            var entry = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: open.id, audience: .client,
                                          item: workflowBody(open, summary: ["duration": .int(seconds)]))
            entry.createdAt = open.createdAt
            entries.append(entry)
            doneEvents.append(entry)
            workflow = nil
        }
        if let clientCallItem {
            entries.append(clientCallItem)
            doneEvents.append(clientCallItem)
        }
        try save(entries)
        for entry in doneEvents { itemEvent("thread.item.done", entry) }
    }

    private func finishText(of message: OpenMessage, _ text: String) {
        update(message.id, ["type": "assistant_message.content_part.done", "content_index": 0,
                            "content": ChatKitItems.outputText(text)])
    }

    /// A new thread's title goes with the first items stored.
    private func save(_ entries: [ConversationEntry]) throws {
        try store.append(entries, to: conversation.id, title: titleToStore)
        titleToStore = nil
    }

    /// The arguments sit one level down in the stored item, which must read back within the
    /// parser's depth limit; `output: null` is omitted, as the SDK omits nulls.
    static func clientToolCallBody(_ call: ToolCall, status: String, output: JSON?) -> JSON {
        let arguments = (try? JSON.parse(call.arguments, maximumDepth: JSON.maximumDepth - 1))
            .flatMap { $0.objectValue.map(JSON.object) } ?? [:]
        var body: [(String, JSON)] = [
            ("type", "client_tool_call"), ("status", .string(status)), ("call_id", .string(call.id)),
            ("name", .string(call.name)), ("arguments", arguments),
        ]
        if let output, output != .null { body.append(("output", output)) }
        return .object(body)
    }

    /// Ends the stream for how the turn ended. Errors are `error` events: `stream.error` lets
    /// the UI show its own words, `custom` shows ours.
    func finish(_ end: TurnEnd, log: inout RequestLog) throws {
        switch ending(of: end, log: &log) {
        case .answered:
            break
        case .roundLimitReached(let rounds):
            send("error", [("code", "custom"), ("message", .string("I stopped after \(rounds) steps without an answer. Please try again.")),
                           ("allow_retry", true)])
        case .serverShutdown, .failed:
            // A shutdown is the server's doing, not the user's: the request still stands, so no
            // cancel note.
            send("error", [("code", "stream.error"), ("allow_retry", true)])
        case .clientGone:
            // As the official server does: the next turn must not pick up the abandoned answer.
            try store.append([ConversationEntry(ChatMessage(role: .system, content: Self.cancelledNote),
                                                itemID: PublicID.make(.hiddenNote), audience: .model)], to: conversation.id)
        }
    }
}

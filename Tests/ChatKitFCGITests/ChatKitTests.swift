@testable import ChatKitFCGI
import Testing

@Suite struct ThreadItemMappingTests {
    func entry(_ message: ChatMessage, audience: ConversationEntry.Audience? = nil, item: JSON? = nil) -> ConversationEntry {
        var entry = ConversationEntry(message, itemID: "msg_1", audience: audience, item: item)
        entry.createdAt = 1_736_936_625_123
        return entry
    }

    @Test func userAndAssistantMessagesBecomeMessageItems() async {
        #expect(ChatKitItems.item(entry(.user("hi")), threadID: "thr_1") == [
            "id": "msg_1", "thread_id": "thr_1", "created_at": "2025-01-15T10:23:45.123Z", "type": "user_message",
            "content": [["type": "input_text", "text": "hi"]], "attachments": [], "inference_options": [:],
        ])
        #expect(ChatKitItems.item(entry(ChatMessage(role: .assistant, content: "Done.")), threadID: "thr_1")?["content"]
            == [["type": "output_text", "text": "Done.", "annotations": []]])
    }

    @Test func timestampsAreUTCWithMillisecondsAsJavaScriptWritesThem() async {
        #expect(ChatKitItems.timestamp(0) == "1970-01-01T00:00:00.000Z")
        #expect(ChatKitItems.timestamp(1_700_000_000_007) == "2023-11-14T22:13:20.007Z")
        #expect(ChatKitItems.timestamp(4_102_444_799_999) == "2099-12-31T23:59:59.999Z")
    }

    @Test func rowsForTheModelOnlyAreNeverShown() async {
        let call = ChatMessage(role: .assistant, content: nil, toolCalls: [ToolCall(id: "c", name: "list_tasks", arguments: "{}")])
        #expect(ConversationEntry(call).audience == .model)
        #expect(ConversationEntry(ChatMessage(role: .tool, content: "[]", toolCallID: "c")).audience == .model)
        #expect(ConversationEntry(ChatMessage(role: .system, content: ChatKitStream.cancelledNote)).audience == .model)
        #expect(ChatKitItems.item(ConversationEntry(call), threadID: "thr_1") == nil)
    }

    @Test func storedItemBodiesWinOverTheMessageShape() async {
        let workflow: JSON = ["type": "workflow", "workflow": ["type": "custom", "tasks": [], "expanded": false]]
        let item = ChatKitItems.item(entry(ChatMessage(role: .assistant, content: nil), audience: .client, item: workflow),
                                     threadID: "thr_1")
        #expect(item?["type"] == "workflow")
        #expect(item?["id"] == "msg_1" && item?["thread_id"] == "thr_1")
    }

    @Test func threadsOmitAMissingTitleAndAlwaysCarryItems() async {
        let untitled = Conversation(id: 1, publicID: "thr_1", userID: "u", title: "", createdAt: 0, updatedAt: 0)
        let json = ChatKitItems.thread(untitled)
        #expect(json["title"] == nil)
        #expect(json["items"] == ["data": [], "has_more": false])
        #expect(json["metadata"] == [:])
    }

    @Test func pagesNameTheirLastElementOnlyWhenThereIsMore() async {
        #expect(ChatKitItems.page([["id": "a"], ["id": "b"]], hasMore: true)["after"] == "b")
        #expect(ChatKitItems.page([["id": "a"]], hasMore: false)["after"] == nil)
    }

    @Test func userInputKeepsTagsAndQuotesForTheItemAndTextForTheModel() async throws {
        let input = try UserInput([
            "content": [["type": "input_text", "text": "Remind me to "],
                        ["type": "input_tag", "id": "t7", "text": "Buy milk", "data": [:], "interactive": false]],
            "attachments": [], "quoted_text": "earlier", "inference_options": [:],
        ])
        #expect(input.text == "> earlier\n\nRemind me to Buy milk")
        #expect(JSON.object(input.itemBody)["content"]?.arrayValue?.count == 2)
        #expect(JSON.object(input.itemBody)["quoted_text"] == "earlier")
        #expect(throws: APIError.self) { try UserInput(["content": []]) }
        #expect(throws: APIError.self) { try UserInput(["content": [["type": "input_image"]]]) }
    }

    @Test func storedEntriesReadBackAsTheyWereWritten() async throws {
        let database = TemporaryDatabase()
        let store = try database.store()
        let conversation = try store.createConversation(userID: "u", title: "")
        #expect(conversation.publicID.hasPrefix("thr_"))
        let workflow = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: "wf_1", audience: .client,
                                         item: ["type": "workflow", "workflow": ["type": "custom", "tasks": []]])
        try store.append([ConversationEntry(.user("hi"), itemID: "msg_u"), workflow], to: conversation.id)
        let page = try #require(try store.entries(conversationID: conversation.id, limit: 10, after: nil, order: .asc))
        #expect(page.data.map(\.itemID) == ["msg_u", "wf_1"])
        #expect(page.data[1].item == workflow.item)
        // The model never sees what was only for ChatKit.
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10) == [.user("hi")])
    }
}

@Suite struct ClientToolTests {
    @Test func unansweredCallsGetAResultBeforeTheNextMessage() async {
        let call = ToolCall(id: "c1", name: "get_selection", arguments: "{}")
        let history: [ChatMessage] = [
            .user("use it"), ChatMessage(role: .assistant, content: nil, toolCalls: [call]), .user("never mind"),
        ]
        let repaired = Agent.answeringEveryCall(history)
        #expect(repaired.map(\.role) == [.user, .assistant, .tool, .user])
        #expect(repaired[2].toolCallID == "c1")
        let answered = [history[0], history[1], ChatMessage(role: .tool, content: "{}", toolCallID: "c1"), history[2]]
        #expect(Agent.answeringEveryCall(answered) == answered)
        // A second result for the same call (a double submit) would make the API refuse the history.
        let duplicated = [history[0], history[1], answered[2], answered[2], history[2]]
        #expect(Agent.answeringEveryCall(duplicated) == answered)
    }

    @Test func aClientToolCallEndsTheTurnAfterTheServerToolsRan() async throws {
        let database = TemporaryDatabase()
        let store = try database.store()
        var turn = ModelTurn()
        turn.toolCalls = [ToolCall(id: "s", name: "add_task", arguments: #"{"title":"x"}"#),
                          ToolCall(id: "c", name: "get_selection", arguments: "{}"),
                          ToolCall(id: "c2", name: "get_selection", arguments: "{}")]
        turn.finishReason = "tool_calls"
        let agent = Agent(model: ScriptedModel([turn]), toolbox: TaskTools.toolbox, systemPrompt: "", maxRounds: 4,
                          clientTools: [ClientTool(name: "get_selection", description: "", parameters: ["type": "object"])])
        var stored: [ChatMessage] = []
        let summary = try await agent.run(history: [.user("go")], context: ToolContext(userID: "u", store: store),
                                    observer: RecordingObserver()) { stored += $0 }
        #expect(summary.end == .awaitingClientTool(turn.toolCalls[1]))
        #expect(stored.compactMap(\.toolCallID).sorted() == ["c2", "s"])
        #expect(try store.tasks(userID: "u", filter: .all).count == 1)
    }

    @Test func operatorsConfigureClientToolsAsJSON() async throws {
        let taken: Set<String> = ["add_task"]
        let tools = try ClientTool.parseList(#"[{"name":"get_selection","description":"d","parameters":{"type":"object"}}]"#,
                                             takenNames: taken).get()
        #expect(tools.map(\.name) == ["get_selection"])
        for bad in ["{}", #"[{"name":"add_task"}]"#, #"[{"name":"has space"}]"#, #"[{"name":"x","parameters":{"type":"string"}}]"#,
                    #"[{"name":"x"},{"name":"x"}]"#] {
            #expect(throws: ToolError.self) { try ClientTool.parseList(bad, takenNames: taken).get() }
        }
    }
}

@Suite struct ClientToolCompletionTests {
    @Test func aClientToolCallItemAlwaysReadsBack() async throws {
        func nested(_ levels: Int) -> String { String(repeating: #"{"a":"#, count: levels) + "1" + String(repeating: "}", count: levels) }
        _ = try JSON.parse(nested(63))  // arguments this deep parse on their own
        let deep = ChatKitStream.clientToolCallBody(ToolCall(id: "c", name: "n", arguments: nested(63)), status: "pending", output: .null)
        #expect(try JSON.parse(deep.serialized) == deep)
        #expect(deep["arguments"] == [:] && deep["output"] == nil)
        let shallow = ChatKitStream.clientToolCallBody(ToolCall(id: "c", name: "n", arguments: nested(62)), status: "completed", output: 1)
        #expect(try JSON.parse(shallow.serialized) == shallow)
        #expect(shallow["arguments"] == (try JSON.parse(nested(62))) && shallow["output"] == 1)
    }

    @Test func aPendingCallIsCompletedOnceEvenIfAnsweredTwice() async throws {
        let database = TemporaryDatabase()
        let store = try database.store()
        let call = ToolCall(id: "call_1", name: "get_selection", arguments: "{}")
        let conversation = try store.createConversation(userID: "u", title: "")
        // As the ChatKit stream stores it: the call for the model, then its item for the UI.
        var pending = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: "tc_1", audience: .client,
                                        item: ChatKitStream.clientToolCallBody(call, status: "pending", output: nil))
        pending.awaitingResult = true
        try store.append([ConversationEntry(ChatMessage(role: .assistant, content: nil, toolCalls: [call])), pending],
                         to: conversation.id)
        #expect(try store.latestVisibleEntry(conversationID: conversation.id)?.awaitingResult == true)
        func answer() throws -> Bool {
            try store.resolve(
                awaitingEntry: "tc_1", in: conversation.id,
                item: ChatKitStream.clientToolCallBody(call, status: "completed", output: ["n": 1]),
                result: ConversationEntry(ChatMessage(role: .tool, content: #"{"n":1}"#, toolCallID: "call_1")))
        }
        #expect(try answer())
        #expect(try !answer())
        let results = try store.recentMessages(conversationID: conversation.id, limit: 10).filter { $0.role == .tool }
        #expect(results.count == 1)
        let answered = try store.entry(conversationID: conversation.id, itemID: "tc_1")
        #expect(answered?.item?["status"] == "completed" && answered?.awaitingResult == false)
    }
}

@Suite struct ChatKitStreamTests {
    let database = TemporaryDatabase()

    /// A stream on a new thread, and its events so far, each parsed back.
    final class Recorded {
        let store: SQLiteStore
        let conversation: Conversation
        let writer = SSEWriterTests.RecordingWriter()
        let stream: ChatKitStream

        init(_ database: TemporaryDatabase) throws {
            store = try database.store()
            conversation = try store.createConversation(userID: "alice", title: "")
            let app = Application(config: Config(), verifier: JWTVerifier(hmacKey: nil, keySource: nil, issuer: nil, audience: nil),
                                  database: SQLiteDatabase(path: database.path))
            stream = ChatKitStream(conversation: conversation, store: store, sse: SSEWriter(writer: writer), writer: writer, app: app)
        }

        func events() throws -> [JSON] {
            try writer.writes.joined().split(separator: "\n\n").map { record in
                #expect(record.hasPrefix("data: "))
                return try JSON.parse(Array(record.dropFirst(6).utf8))
            }
        }
    }

    /// The events a streamed answer produces.
    func events(forDeltas deltas: [String]) throws -> [JSON] {
        let recorded = try Recorded(database)
        for delta in deltas {
            _ = recorded.stream.modelChunk(payload: [], parsed: try ChatCompletionChunk(["choices": [["index": 0, "delta": ["content": .string(delta)]]]]))
        }
        try recorded.stream.record([ChatMessage(role: .assistant, content: deltas.joined())])
        return try recorded.events()
    }

    /// What the UI shows: each event's type, or its update's type.
    static func kinds(_ events: [JSON]) -> [String] {
        events.map { event in (event["type"] == "thread.item.updated" ? event["update"]?["type"] : event["type"])?.stringValue ?? "" }
    }

    @Test func textThatWasNeverStreamedIsStillShownDone() async throws {
        let recorded = try Recorded(database)
        try recorded.stream.toolCallsArrived(after: "Calling a tool.")
        try recorded.stream.record([ChatMessage(role: .assistant, content: "Answer.")])
        let done = try recorded.events().filter { $0["type"] == "thread.item.done" }
        #expect(done.compactMap { $0["item"]?["content"]?.arrayValue?.first?["text"]?.stringValue } == ["Calling a tool.", "Answer."])
    }

    @Test func textBeforeToolCallsIsDoneBeforeTheToolsRun() async throws {
        let recorded = try Recorded(database)
        var calling = ModelTurn()
        calling.text = "Adding milk."
        calling.toolCalls = [ToolCall(id: "call_1", name: "add_task", arguments: #"{"title":"milk"}"#)]
        var answering = ModelTurn()
        answering.text = "Done."
        let agent = Agent(model: ScriptedModel([calling, answering]), toolbox: TaskTools.toolbox, systemPrompt: "", maxRounds: 4)
        let summary = try await agent.run(history: [.user("add milk")], context: ToolContext(userID: "alice", store: recorded.store),
                                    observer: recorded.stream, record: recorded.stream.record)
        #expect(summary.end == .answered)
        let events = try recorded.events()
        #expect(Self.kinds(events) == [
            "thread.item.added", "assistant_message.content_part.added", "assistant_message.content_part.text_delta",
            "assistant_message.content_part.text_delta", "assistant_message.content_part.done", "thread.item.done",
            "progress_update", "thread.item.added", "workflow.task.updated",
            "thread.item.done",  // the workflow, stored with the call and its result
            "thread.item.added", "assistant_message.content_part.added", "assistant_message.content_part.text_delta",
            "assistant_message.content_part.done", "thread.item.done",
        ])
        #expect(events[5]["item"]?["content"]?.arrayValue?.first?["text"] == "Adding milk.")
        // Each item is stored as its done event shows it, and the model reads text and call as one message.
        let stored = try #require(try recorded.store.entries(conversationID: recorded.conversation.id, limit: 10, after: nil, order: .asc))
        let doneItems = events.filter { $0["type"] == "thread.item.done" }.compactMap { $0["item"] }
        #expect(stored.data.compactMap { ChatKitItems.item($0, threadID: recorded.conversation.publicID) } == doneItems)
        let history = try recorded.store.recentMessages(conversationID: recorded.conversation.id, limit: 10)
        #expect(history.map(\.role) == [.assistant, .tool, .assistant])
        #expect(history[0] == ChatMessage(role: .assistant, content: "Adding milk.", toolCalls: calling.toolCalls))
    }

    @Test func aStreamedAnswerOpensWithItsFirstDeltaAndEndsDone() async throws {
        let deltas = ["Hello", " \"quoted\" \\ line\nbreak\u{1}", " ✓"]
        let events = try events(forDeltas: deltas)
        #expect(events.map { $0["type"]?.stringValue ?? "" } == ["thread.item.added", "thread.item.updated", "thread.item.updated",
            "thread.item.updated", "thread.item.updated", "thread.item.updated", "thread.item.done"])
        let itemID = try #require(events[0]["item"]?["id"]?.stringValue)
        #expect(itemID.hasPrefix("msg_"))
        // Text deltas are encoded from a prepared head; they must read as the protocol's event.
        for (event, delta) in zip(events[2...4], deltas) {
            #expect(event == ["type": "thread.item.updated", "item_id": .string(itemID),
                              "update": ["type": "assistant_message.content_part.text_delta", "content_index": 0,
                                         "delta": .string(delta)]])
        }
        #expect(events[5]["update"]?["content"]?["text"]?.stringValue == deltas.joined())
        #expect(events[6]["item"]?["id"]?.stringValue == itemID)
    }
}

@Suite struct LogTests {
    @Test func aLogLineIsOneLineAndBounded() async {
        let line = Log.line("info", "forged\r\nchatkit-fcgi error: fake\u{1B}[2J" + String(repeating: "x", count: 5000))
        #expect(line.last == 0x0A)
        #expect(line.dropLast().allSatisfy { $0 >= 0x20 && $0 != 0x7F })
        #expect(line.count <= Log.maximumLineBytes + 64)
    }
}

@Suite struct DictationTests {
    @Test func standardBase64IsReadWithOrWithoutPadding() {
        #expect(Base64.decode("aGVsbG8=") == Array("hello".utf8))
        #expect(Base64.decode("aGVsbG8") == Array("hello".utf8))
        #expect(Base64.decode("+/8=") == [0xFB, 0xFF])
        #expect(Base64.decode("") == [])
    }

    @Test func anythingElseIsNotBase64() {
        for text in ["aGVsbG8=\n", "aGVs bG8=", "-_8=", "abcde", "a===", "aGVsbG8==", "%%%%"] {
            #expect(Base64.decode(text) == nil, "\(text)")
        }
    }

    @Test func theClipGoesByItsMediaTypeWithoutParameters() throws {
        let clip = try #require(AudioClip(bytes: [1, 2], mimeType: "Audio/WebM; codecs=opus"))
        #expect(clip.mediaType == "audio/webm" && clip.filename == "audio.webm")
        #expect(AudioClip(bytes: [1], mimeType: "audio/mp4")?.filename == "audio.mp4")
        #expect(AudioClip(bytes: [1], mimeType: "audio/ogg;codecs=opus")?.filename == "audio.ogg")
    }

    @Test func otherTypesAreNotAudioTheEndpointTakes() {
        for type in ["video/mp4", "text/plain", "", ";codecs=opus", "audio/", "audio/webm2"] {
            #expect(AudioClip(bytes: [1], mimeType: type) == nil, "\(type)")
        }
    }
}

@testable import ChatKitFCGI
import Glibc
import Testing

/// What every `Store` promises, asked of each implementation alike: the same ids, the same
/// order, the same answers, the same scoping to the user.
@Suite struct StoreContractTests {
    @Test(arguments: StoreKind.available)
    func migrationsAreVersionedAndIdempotent(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        #expect(try store.schemaVersion == store.latestSchemaVersion)
        try store.migrate()
        #expect(try store.schemaVersion == store.latestSchemaVersion)
    }

    @Test(arguments: StoreKind.available)
    func conversationsBelongToTheirUser(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "hello")
        #expect(conversation.id == 1, "ids start at 1 on every store")
        #expect(try store.conversation(id: conversation.id, userID: "alice") == conversation)
        #expect(try store.conversation(publicID: conversation.publicID, userID: "alice") == conversation)
        #expect(try store.conversation(id: conversation.id, userID: "bob") == nil)
        #expect(try store.conversation(publicID: conversation.publicID, userID: "bob") == nil)
        #expect(try store.conversation(id: conversation.id + 1, userID: "alice") == nil)
    }

    @Test(arguments: StoreKind.available)
    func historyReplaysToolCallsAndResultsExactly(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(.user("add milk"))])
        let turn: [ChatMessage] = [
            ChatMessage(role: .assistant, content: nil, toolCalls: [
                ToolCall(id: "call_1", name: "add_task", arguments: "{\"title\": \"milk\"}"),
                ToolCall(id: "call_2", name: "list_tasks", arguments: "{}"),
            ]),
            ChatMessage(role: .tool, content: "{\"task_id\":1}", toolCallID: "call_1"),
            ChatMessage(role: .tool, content: "[]", toolCallID: "call_2"),
            ChatMessage(role: .assistant, content: "Added milk. ✓ \\ \"quoted\"\n"),
        ]
        try store.append(turn, to: conversation.id)
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 50) == [.user("add milk")] + turn)
    }

    @Test(arguments: StoreKind.available)
    func theHistoryWindowNeverStartsBetweenACallAndItsResult(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        try store.append([
            .user("one"),
            ChatMessage(role: .assistant, content: nil, toolCalls: [ToolCall(id: "c1", name: "list_tasks", arguments: "{}"),
                                                                     ToolCall(id: "c2", name: "list_tasks", arguments: "{}")]),
            ChatMessage(role: .tool, content: "[]", toolCallID: "c1"),
            ChatMessage(role: .tool, content: "[]", toolCallID: "c2"),
            ChatMessage(role: .assistant, content: "none"),
            .user("two"),
        ], to: conversation.id)
        // The newest 4 would start with tool results whose call is outside the window.
        let window = try store.recentMessages(conversationID: conversation.id, limit: 4)
        #expect(window.map(\.role) == [.assistant, .user])
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 5).first?.toolCalls.count == 2)
    }

    @Test(arguments: StoreKind.available)
    func aTitleIsStoredWithTheItemsItCameWith(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "")
        try store.append([ConversationEntry(ChatMessage(role: .assistant, content: "hi"))], to: conversation.id, title: "Greetings")
        #expect(try store.conversation(id: conversation.id, userID: "alice")?.title == "Greetings")
        // Items without a title leave it alone; a title without items is still stored.
        try store.append([ConversationEntry(ChatMessage(role: .assistant, content: "again"))], to: conversation.id, title: nil)
        #expect(try store.conversation(id: conversation.id, userID: "alice")?.title == "Greetings")
        try store.append([], to: conversation.id, title: "Renamed")
        #expect(try store.conversation(id: conversation.id, userID: "alice")?.title == "Renamed")
        try store.rename(conversationID: conversation.id, title: "By hand")
        #expect(try store.conversation(id: conversation.id, userID: "alice")?.title == "By hand")
    }

    @Test(arguments: StoreKind.available)
    func addingToADeletedConversationFailsAsSuchAndStoresNothing(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(.user("hi"))])
        try store.delete(conversationID: conversation.id)
        #expect(throws: StoreError.conversationDeleted) { try store.append([.user("late")], to: conversation.id) }
        #expect(throws: StoreError.conversationDeleted) { try store.append([], to: conversation.id, title: "late") }
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10).isEmpty)
        #expect(try store.conversation(id: conversation.id, userID: "alice") == nil)
    }

    @Test(arguments: StoreKind.available)
    func anEntryKeepsItsTimeItsAudienceAndItsItem(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        var shown = ConversationEntry(ChatMessage(role: .assistant, content: "hi"), itemID: "msg_shown")
        shown.createdAt = 1_736_936_625_123
        var call = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: "tc_1", audience: .client,
                                     item: ["type": "client_tool_call", "arguments": ["n": 1.5, "s": "x"]])
        call.awaitingResult = true
        call.createdAt = 1_736_936_625_124
        try store.append([shown, ConversationEntry(.user("unstamped")), call], to: conversation.id)
        let stored = try #require(try store.entries(conversationID: conversation.id, limit: 5, after: nil, order: .asc)).data
        #expect(stored.first == shown)
        #expect(stored[1].createdAt >= conversation.createdAt, "no time given: the time of the write")
        #expect(stored.last == call)
        #expect(try store.entry(conversationID: conversation.id, itemID: "tc_1") == call)
        #expect(try store.latestVisibleEntry(conversationID: conversation.id) == call)
    }

    @Test(arguments: StoreKind.available)
    func textIsStoredWholeButForANulCharacter(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t\u{0}")
        #expect(conversation.title == "t\u{FFFD}")
        try store.append([.user("before\u{0}after ✓ 🇫🇷")], to: conversation.id)
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 1).first?.content == "before\u{FFFD}after ✓ 🇫🇷")
        let task = try #require(try store.addTask(userID: "alice", title: "a\u{0}b", description: nil, limit: 10))
        #expect(task.title == "a\u{FFFD}b")
        #expect(try store.tasks(userID: "alice", filter: .all) == [task])
    }

    @Test(arguments: StoreKind.available)
    func conversationsArePagedByIdInEitherOrder(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let created = try (1...5).map { try store.createConversation(userID: "alice", title: "t\($0)") }
        _ = try store.createConversation(userID: "bob", title: "not alice's")
        let newest = try #require(try store.conversations(userID: "alice", limit: 2, after: nil, order: .desc))
        #expect(newest.data.map(\.title) == ["t5", "t4"] && newest.hasMore)
        let next = try #require(try store.conversations(userID: "alice", limit: 2, after: created[3].publicID, order: .desc))
        #expect(next.data.map(\.title) == ["t3", "t2"] && next.hasMore)
        let last = try #require(try store.conversations(userID: "alice", limit: 2, after: created[1].publicID, order: .desc))
        #expect(last.data.map(\.title) == ["t1"] && !last.hasMore)
        let oldest = try #require(try store.conversations(userID: "alice", limit: 10, after: created[2].publicID, order: .asc))
        #expect(oldest.data.map(\.title) == ["t4", "t5"] && !oldest.hasMore)
        #expect(try store.conversations(userID: "alice", limit: 2, after: "thr_unknown", order: .desc) == nil)
        let bobs = try #require(try store.conversations(userID: "bob", limit: 10, after: nil, order: .desc))
        #expect(try store.conversations(userID: "alice", limit: 2, after: bobs.data[0].publicID, order: .desc) == nil,
                "another user's thread is no cursor")
    }

    @Test(arguments: StoreKind.available)
    func entriesArePagedWithoutWhatIsForTheModelOnly(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        let entries = [
            ConversationEntry(.user("one"), itemID: "msg_1"),
            ConversationEntry(ChatMessage(role: .assistant, content: nil, toolCalls: [ToolCall(id: "c", name: "n", arguments: "{}")]),
                              itemID: "msg_call"),
            ConversationEntry(ChatMessage(role: .tool, content: "[]", toolCallID: "c"), itemID: "msg_result"),
            ConversationEntry(ChatMessage(role: .assistant, content: "two"), itemID: "msg_2"),
            ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: "wf_1", audience: .client, item: ["type": "workflow"]),
            ConversationEntry(.user("three"), itemID: "msg_3"),
        ]
        try store.append(entries, to: conversation.id)
        let first = try #require(try store.entries(conversationID: conversation.id, limit: 2, after: nil, order: .asc))
        #expect(first.data.map(\.itemID) == ["msg_1", "msg_2"] && first.hasMore)
        let rest = try #require(try store.entries(conversationID: conversation.id, limit: 5, after: "msg_2", order: .asc))
        #expect(rest.data.map(\.itemID) == ["wf_1", "msg_3"] && !rest.hasMore)
        let newest = try #require(try store.entries(conversationID: conversation.id, limit: 1, after: nil, order: .desc))
        #expect(newest.data.map(\.itemID) == ["msg_3"] && newest.hasMore)
        #expect(try store.entries(conversationID: conversation.id, limit: 5, after: "msg_missing", order: .asc) == nil)
        // The model sees every row but the client's.
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10).count == 5)
        #expect(try store.latestVisibleEntry(conversationID: conversation.id)?.itemID == "msg_3")
        try store.deleteEntries(conversationID: conversation.id, after: "msg_1")
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10) == [.user("one")])
        try store.deleteEntries(conversationID: conversation.id, after: "msg_missing")
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10) == [.user("one")])
    }

    @Test(arguments: StoreKind.available)
    func anAwaitedResultLandsOnceEvenWhenAnsweredTwiceAtOnce(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        let call = ChatMessage(role: .assistant, content: nil, toolCalls: [ToolCall(id: "c", name: "pick", arguments: "{}")])
        var pending = ConversationEntry(ChatMessage(role: .assistant, content: nil), itemID: "tc_1", audience: .client,
                                        item: ["status": "pending"])
        pending.awaitingResult = true
        try store.append([ConversationEntry(call), pending], to: conversation.id)

        final class Answers: @unchecked Sendable {
            let lock = Lock()
            var landed = 0
            var failures: [String] = []
        }
        let answers = Answers()
        let finished = Semaphore()
        let storeDatabase = database.database
        for index in 0..<4 {
            DetachedThread.start(stackBytes: 512 << 10) {
                do {
                    let landed = try storeDatabase.makeStore().resolve(
                        awaitingEntry: "tc_1", in: conversation.id, item: ["status": "completed", "by": .int(index)],
                        result: ConversationEntry(ChatMessage(role: .tool, content: "\(index)", toolCallID: "c")))
                    answers.lock.withLock { if landed { answers.landed += 1 } }
                } catch {
                    answers.lock.withLock { answers.failures.append("\(error)") }
                }
                finished.signal()
            }
        }
        for _ in 0..<4 { #expect(finished.wait(seconds: 10)) }
        #expect(answers.failures.isEmpty && answers.landed == 1)
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10).filter { $0.role == .tool }.count == 1)
        let resolved = try #require(try store.entry(conversationID: conversation.id, itemID: "tc_1"))
        #expect(!resolved.awaitingResult && resolved.item?["status"] == "completed")
    }

    @Test(arguments: StoreKind.available)
    func feedbackMarksOnlyThisConversationsItems(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let mine = try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(.user("a"), itemID: "msg_a")])
        _ = try store.createConversation(userID: "alice", title: "u", first: [ConversationEntry(.user("b"), itemID: "msg_b")])
        #expect(try store.setFeedback(conversationID: mine.id, itemIDs: ["msg_a", "msg_b", "msg_x"], positive: true) == 1)
        #expect(try store.setFeedback(conversationID: mine.id, itemIDs: ["msg_a"], positive: false) == 1, "changed, not added")
    }

    @Test(arguments: StoreKind.available)
    func tasksBelongToTheirUser(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let milk = try #require(try store.addTask(userID: "alice", title: "milk", description: nil, limit: 2))
        let bread = try #require(try store.addTask(userID: "alice", title: "bread", description: "brown", limit: 2))
        #expect(try store.addTask(userID: "alice", title: "one too many", description: nil, limit: 2) == nil)
        let other = try #require(try store.addTask(userID: "bob", title: "bob's", description: nil, limit: 2))
        #expect([milk.id, bread.id] == [1, 2] && other.id > bread.id)
        #expect(try store.completeTask(id: milk.id, userID: "alice")?.completed == true)
        #expect(try store.completeTask(id: other.id, userID: "alice") == nil)
        #expect(try store.tasks(userID: "alice", filter: .completed).map(\.title) == ["milk"])
        #expect(try store.tasks(userID: "alice", filter: .pending).map(\.title) == ["bread"])
        #expect(try store.tasks(userID: "alice", filter: .all).map(\.title) == ["milk", "bread"])
        let renamed = try store.updateTask(id: bread.id, userID: "alice", title: "rye", description: nil)
        #expect(renamed?.title == "rye" && renamed?.description == "brown")
        #expect(try store.updateTask(id: other.id, userID: "alice", title: "mine now", description: nil) == nil)
        #expect(try store.deleteTask(id: other.id, userID: "alice") == nil)
        #expect(try store.deleteTask(id: milk.id, userID: "alice")?.title == "milk")
        #expect(try store.tasks(userID: "alice", filter: .all).map(\.title) == ["rye"])
        #expect(try store.tasks(userID: "bob", filter: .all).map(\.title) == ["bob's"])
    }

    @Test(arguments: StoreKind.available)
    func tokensAreChargedPerUserPerDay(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        #expect(try store.tokensUsed(userID: "alice", day: "2026-12-07") == 0)
        try store.chargeTokens(userID: "alice", day: "2026-12-07", tokens: 120)
        try store.chargeTokens(userID: "alice", day: "2026-12-07", tokens: 30)
        try store.chargeTokens(userID: "alice", day: "2026-12-08", tokens: 5)
        try store.chargeTokens(userID: "bob", day: "2026-12-07", tokens: 7)
        #expect(try store.tokensUsed(userID: "alice", day: "2026-12-07") == 150)
        #expect(try store.tokensUsed(userID: "alice", day: "2026-12-08") == 5)
        #expect(try store.tokensUsed(userID: "bob", day: "2026-12-07") == 7)
    }

    /// Every byte value, and more than one page of a database.
    static let fileBytes: [UInt8] = Array((0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })

    @Test(arguments: StoreKind.available)
    func attachmentsKeepTheirBytesAndBelongToTheirUser(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let declared = ChatKitFCGI.Attachment(name: "a.bin", mimeType: "image/png", size: Self.fileBytes.count)
        #expect(try store.createAttachment(declared, userID: "alice", userMaxBytes: 1 << 20, staleBefore: 0))
        let waiting = try store.attachment(id: declared.id, userID: "alice", includingData: true)
        #expect(waiting == StoredAttachment(attachment: declared, uploaded: false, attached: false))
        #expect(try store.attachmentOwner(id: declared.id) == "alice")
        #expect(try store.attachment(id: declared.id, userID: "bob", includingData: false) == nil)
        #expect(try !store.upload(attachmentID: declared.id, userID: "bob", data: [1]))
        #expect(try store.upload(attachmentID: declared.id, userID: "alice", data: Self.fileBytes))
        #expect(try !store.upload(attachmentID: declared.id, userID: "alice", data: [1]), "bytes are stored once")
        #expect(try store.attachment(id: declared.id, userID: "alice", includingData: true)?.attachment.data == Self.fileBytes)
        #expect(try store.attachmentData(ids: [declared.id, "atc_missing"], userID: "alice") == [declared.id: Self.fileBytes])
        #expect(try store.attachmentData(ids: [declared.id], userID: "bob").isEmpty)
        #expect(try !store.deleteAttachment(id: declared.id, userID: "bob"))
        #expect(try store.deleteAttachment(id: declared.id, userID: "alice"))
        #expect(try store.attachmentOwner(id: declared.id) == nil)
    }

    @Test(arguments: StoreKind.available)
    func aUsersAttachmentsStayWithinTheirTotal(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let first = ChatKitFCGI.Attachment(name: "a.txt", mimeType: "text/plain", size: 600, data: Array(repeating: 0x61, count: 600))
        #expect(try store.createAttachment(first, userID: "alice", userMaxBytes: 1000, staleBefore: 0))
        #expect(try !store.createAttachment(ChatKitFCGI.Attachment(name: "b.txt", mimeType: "text/plain", size: 401), userID: "alice",
                                            userMaxBytes: 1000, staleBefore: 0))
        #expect(try store.createAttachment(ChatKitFCGI.Attachment(name: "c.txt", mimeType: "text/plain", size: 400), userID: "alice",
                                           userMaxBytes: 1000, staleBefore: 0))
        #expect(try store.createAttachment(ChatKitFCGI.Attachment(name: "d.txt", mimeType: "text/plain", size: 900), userID: "bob",
                                           userMaxBytes: 1000, staleBefore: 0), "the total is each user's own")
        #expect(try store.attachment(id: first.id, userID: "alice", includingData: false)?.uploaded == true)
    }

    @Test(arguments: StoreKind.available)
    func aMessageCarriesItsAttachmentsAndTakesThemAlongWhenDeleted(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let image = ChatKitFCGI.Attachment(name: "photo.png", mimeType: "image/png", size: 3, data: [1, 2, 3])
        let others = ChatKitFCGI.Attachment(name: "x.png", mimeType: "image/png", size: 1, data: [9])
        try #require(try store.createAttachment(image, userID: "alice", userMaxBytes: 1 << 20, staleBefore: 0))
        try #require(try store.createAttachment(others, userID: "bob", userMaxBytes: 1 << 20, staleBefore: 0))
        var described = image
        described.data = nil
        var bobs = others
        bobs.data = nil
        // Another user's attachment never joins a message: the whole message is refused.
        #expect(throws: StoreError.attachmentUnavailable) {
            try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(.user("look", attachments: [described, bobs]))])
        }
        #expect(try store.conversations(userID: "alice", limit: 10, after: nil, order: .desc)?.data.isEmpty == true)
        #expect(try store.attachment(id: image.id, userID: "alice", includingData: false)?.attached == false)

        let message = ChatMessage.user("look", attachments: [described])
        let conversation = try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(message)])
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10) == [message], "replayed as described")
        #expect(try store.attachment(id: image.id, userID: "alice", includingData: false)?.attached == true)
        // An attachment is part of one message only.
        #expect(throws: StoreError.attachmentUnavailable) {
            try store.append([ConversationEntry(.user("again", attachments: [described]))], to: conversation.id)
        }
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 10) == [message])
        try store.delete(conversationID: conversation.id)
        #expect(try store.attachmentOwner(id: image.id) == nil)
        #expect(try store.attachmentOwner(id: others.id) == "bob")
    }

    @Test(arguments: StoreKind.available)
    func attachmentsNeverSentWithAMessageAreRemovedOnceStale(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind)
        let store = try database.store()
        let stale = ChatKitFCGI.Attachment(name: "old.txt", mimeType: "text/plain", size: 1)
        let sent = ChatKitFCGI.Attachment(name: "sent.txt", mimeType: "text/plain", size: 1, data: [0x61])
        try #require(try store.createAttachment(stale, userID: "alice", userMaxBytes: 100, staleBefore: 0))
        try #require(try store.createAttachment(sent, userID: "alice", userMaxBytes: 100, staleBefore: 0))
        _ = try store.createConversation(userID: "alice", title: "t", first: [ConversationEntry(.user("", attachments: [sent]))])
        let later = Clock.unixMilliseconds() + 1000
        try #require(try store.createAttachment(ChatKitFCGI.Attachment(name: "new.txt", mimeType: "text/plain", size: 1), userID: "bob",
                                                userMaxBytes: 100, staleBefore: later))
        #expect(try store.attachmentOwner(id: stale.id) == nil)
        #expect(try store.attachmentOwner(id: sent.id) == "alice")
    }

    @Test(arguments: StoreKind.available)
    func processesThatMigrateTogetherMigrateOnce(_ kind: StoreKind) throws {
        let database = try TestDatabase(kind, migrated: false)
        #expect(try database.store().schemaVersion == 0)
        let finished = Semaphore()
        let failures = Locked<[String]>([])
        let storeDatabase = database.database
        for _ in 0..<4 {
            DetachedThread.start(stackBytes: 512 << 10) {
                do { try storeDatabase.makeStore().migrate() } catch { failures.withLock { $0.append("\(error)") } }
                finished.signal()
            }
        }
        for _ in 0..<4 { #expect(finished.wait(seconds: 20)) }
        #expect(failures.withLock { $0 } == [])
        #expect(try database.store().schemaVersion == database.store().latestSchemaVersion)
    }
}

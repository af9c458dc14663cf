@testable import ChatKitFCGI
import Testing

@Suite struct SQLiteStoreTests {
    let database = TemporaryDatabase()

    @Test func migrationsAreVersionedAndIdempotent() throws {
        let store = try database.store()
        #expect(store.schemaVersion == SQLiteStore.migrations.count)
        try store.migrate()
        #expect(store.schemaVersion == SQLiteStore.migrations.count)
    }

    @Test func conversationsBelongToTheirUser() throws {
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "hello")
        #expect(try store.conversation(id: conversation.id, userID: "alice")?.title == "hello")
        #expect(try store.conversation(id: conversation.id, userID: "bob") == nil)
        #expect(try store.conversation(id: conversation.id + 1, userID: "alice") == nil)
    }

    @Test func historyReplaysToolCallsAndResultsExactly() throws {
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        let turn: [ChatMessage] = [
            .user("add milk"),
            ChatMessage(role: .assistant, content: nil, toolCalls: [
                ToolCall(id: "call_1", name: "add_task", arguments: "{\"title\": \"milk\"}"),
                ToolCall(id: "call_2", name: "list_tasks", arguments: "{}"),
            ]),
            ChatMessage(role: .tool, content: "{\"task_id\":1}", toolCallID: "call_1"),
            ChatMessage(role: .tool, content: "[]", toolCallID: "call_2"),
            ChatMessage(role: .assistant, content: "Added milk."),
        ]
        try store.append(turn, to: conversation.id)
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 50) == turn)
        #expect(turn[1].json.serialized == #"{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"add_task","arguments":"{\"title\": \"milk\"}"}},{"id":"call_2","type":"function","function":{"name":"list_tasks","arguments":"{}"}}]}"#)
    }

    @Test func textIsStoredWholeEvenWithANulCharacter() throws {
        let store = try database.store()
        let conversation = try store.createConversation(userID: "alice", title: "t")
        try store.append([.user("before\u{0}after ✓")], to: conversation.id)
        #expect(try store.recentMessages(conversationID: conversation.id, limit: 1).first?.content == "before\u{0}after ✓")
    }

    @Test func theHistoryWindowNeverStartsBetweenACallAndItsResult() throws {
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
}

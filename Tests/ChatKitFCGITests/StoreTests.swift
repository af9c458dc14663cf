@testable import ChatKitFCGI
import Glibc
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

@Suite struct WALCheckpointTests {
    /// Hands a connection to the thread that ends its read transaction.
    final class Reader: @unchecked Sendable {
        let connection: SQLiteConnection
        init(_ connection: SQLiteConnection) { self.connection = connection }
    }

    @Test func aCheckpointLetsTheNextCommitStartTheWALOver() throws {
        let file = TemporaryDatabase()
        let database = SQLiteDatabase(path: file.path)
        let writer = try SQLiteConnection(path: file.path)
        try writer.execute("CREATE TABLE t (x INTEGER)")
        for value in 0..<100 { try writer.run("INSERT INTO t VALUES (?)", [.integer(Int64(value))]) }
        // A reader inside its snapshot while one more commit lands: the state a busy server is
        // always in, where a PASSIVE checkpoint cannot copy the newest frame.
        let reader = Reader(try SQLiteConnection(path: file.path))
        try reader.connection.execute("BEGIN")
        #expect(try reader.connection.query("SELECT count(*) FROM t") { $0.integer(0) } == [100])
        try writer.run("INSERT INTO t VALUES (100)")
        DetachedThread.start(stackBytes: 256 << 10) {
            usleep(50_000)
            try? reader.connection.execute("COMMIT")
        }

        try WALCheckpointer(database: database, restartFrames: 50).checkpoint()
        try writer.run("INSERT INTO t VALUES (101)")

        let observer = try SQLiteConnection(path: file.path)
        #expect(try observer.checkpoint(.passive).walFrames <= 2, "the commit after the checkpoint appended to the old WAL")
        #expect(try observer.query("SELECT count(*) FROM t") { $0.integer(0) } == [102])
    }
}

@Suite struct GroupCommitTests {
    /// What one writing thread got back.
    final class Outcome: @unchecked Sendable {
        var error: (any Error)?
        let done = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        init() { sem_init(done, 0, 0) }
        deinit { sem_destroy(done); done.deallocate() }
    }

    final class Shared: @unchecked Sendable {
        let writer: SQLiteWriter
        init(_ writer: SQLiteWriter) { self.writer = writer }
    }

    @Test func writesCommittedTogetherFailAlone() throws {
        let file = TemporaryDatabase()
        let setup = try SQLiteConnection(path: file.path)
        try setup.execute("CREATE TABLE t (name TEXT NOT NULL CHECK (name != 'bad'))")
        let shared = Shared(try SQLiteWriter(database: SQLiteDatabase(path: file.path)))
        // Three writes queue up while no writer thread runs, so they go out as one batch; the
        // second one stores a row and then breaks a constraint.
        let writes: [[String]] = [["a"], ["b1", "bad"], ["c"]]
        let outcomes = writes.map { _ in Outcome() }
        for (names, outcome) in zip(writes, outcomes) {
            DetachedThread.start(stackBytes: 512 << 10) {
                do {
                    try shared.writer.perform { db in
                        for name in names { try db.run("INSERT INTO t VALUES (?)", [.text(name)]) }
                    }
                } catch {
                    outcome.error = error
                }
                sem_post(outcome.done)
            }
        }
        while shared.writer.waitingWrites < 3 { usleep(1000) }
        shared.writer.commitWaitingWrites()
        for outcome in outcomes { sem_wait(outcome.done) }

        #expect(outcomes[0].error == nil && outcomes[2].error == nil)
        #expect(String(describing: outcomes[1].error ?? SQLiteError.transactionRolledBack).contains("CHECK constraint failed"))
        #expect(try setup.query("SELECT name FROM t ORDER BY name") { $0.text(0) } == ["a", "c"])
    }
}

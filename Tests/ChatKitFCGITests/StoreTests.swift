@testable import ChatKitFCGI
import Glibc
import Testing

@Suite struct SQLiteStoreTests {
    let database = TemporaryDatabase()

    @Test func aVersion2DatabaseMigratesWithItsData() throws {
        let file = TemporaryDatabase()
        let setup = try SQLiteConnection(path: file.path)
        for step in SQLiteStore.migrations.prefix(2) { try setup.execute(step) }
        try setup.execute("PRAGMA user_version = 2")
        try setup.execute("INSERT INTO conversations (public_id, user_id, title, created_at, updated_at) VALUES ('thr_x', 'alice', 't', 1, 1)")
        // A client tool call still waiting for the browser's answer, and one answered.
        for (id, status) in [("tc_open", "pending"), ("tc_done", "completed")] {
            try setup.execute("""
                INSERT INTO messages (conversation_id, public_id, audience, role, item, created_at)
                VALUES (1, '\(id)', 'client', 'assistant', '{"type":"client_tool_call","status":"\(status)","call_id":"c","name":"n","arguments":{}}', 1)
                """)
        }
        let store = SQLiteStore(path: file.path)
        try store.migrate()
        #expect(try store.schemaVersion == SQLiteStore.migrations.count)
        #expect(try store.conversation(publicID: "thr_x", userID: "alice")?.title == "t")
        #expect(try store.entry(conversationID: 1, itemID: "tc_open")?.awaitingResult == true)
        #expect(try store.entry(conversationID: 1, itemID: "tc_done")?.awaitingResult == false)
        let indexes = try setup.query("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'") { $0.text(0) ?? "" }
        #expect(Set(indexes) == ["conversations_by_user", "conversations_by_public_id", "messages_by_conversation", "tasks_by_user",
                                 "attachments_by_user", "attachments_by_message", "attachments_unattached"])
    }

    /// Listing a user's threads, or a thread's items, walks an index in order: no sort, however
    /// many rows. Asked of the very queries the store runs.
    @Test(arguments: [SortOrder.asc, .desc])
    func pagesAreReadInIndexOrder(_ order: SortOrder) throws {
        let store = try database.store()
        _ = try store.createConversation(userID: "alice", title: "t")
        let connection = try SQLiteConnection(path: database.path)
        func plan(_ sql: String, _ arguments: [SQLValue]) throws -> [String] {
            try connection.query("EXPLAIN QUERY PLAN " + sql, arguments) { $0.text(3) ?? "" }
        }
        let threads = try plan(SQLiteStore.conversationsPage(order), ["alice", 1, 1, 5])
        #expect(threads.contains { $0.contains("conversations_by_user") } && !threads.contains { $0.contains("TEMP B-TREE") },
                "\(threads)")
        let items = try plan(SQLiteStore.entriesPage(order), [1, 1, 1, 5])
        #expect(items.contains { $0.contains("messages_by_conversation") } && !items.contains { $0.contains("TEMP B-TREE") },
                "\(items)")
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
        // Not a synchronisation: whether the reader leaves before the RESTART or while it waits
        // (the usual case), the next commit must start the WAL over.
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
        let done = Semaphore()

        /// False when the write did not come back within 10 s (a lost hand-over).
        func wait() -> Bool { done.wait(seconds: 10) }
    }

    /// Each thread writes `names` through the group commit; `before` runs inside the write,
    /// `after` once the rows are in (and may fail the write).
    static func write(_ names: [String], to database: SQLiteDatabase, before: @escaping @Sendable () -> Void = {},
                      after: @escaping @Sendable (SQLiteConnection) throws -> Void = { _ in }) -> Outcome {
        let outcome = Outcome()
        DetachedThread.start(stackBytes: 512 << 10) {
            do {
                try database.write { db in
                    before()
                    for name in names { try db.run("INSERT INTO t VALUES (?)", [.text(name)]) }
                    try after(db)
                }
            } catch {
                outcome.error = error
            }
            outcome.done.signal()
        }
        return outcome
    }

    /// Starts a write that commits alone and holds its commit until `waiting` more writes have
    /// queued behind it, so that those go out as one group.
    static func holdFirstCommit(of database: SQLiteDatabase, until waiting: Int) -> Outcome {
        let firstIsCommitting = Outcome()
        let first = write(["a"], to: database) {
            firstIsCommitting.done.signal()
            while database.waitingWrites < waiting { usleep(1000) }
        }
        precondition(firstIsCommitting.wait(), "the first write never started")
        return first
    }

    @Test func writesCommittedTogetherFailAlone() throws {
        let file = TemporaryDatabase()
        let setup = try SQLiteConnection(path: file.path)
        try setup.execute("CREATE TABLE t (name TEXT NOT NULL CHECK (name != 'bad'))")
        let database = SQLiteDatabase(path: file.path)
        // The second write stores a row and then breaks a constraint, in the group of the third.
        let first = Self.holdFirstCommit(of: database, until: 2)
        let failing = Self.write(["b1", "bad"], to: database)
        let last = Self.write(["c"], to: database)

        #expect(first.wait() && failing.wait() && last.wait())
        #expect(first.error == nil && last.error == nil)
        #expect(String(describing: failing.error ?? SQLiteError.transactionRolledBack).contains("CHECK constraint failed"))
        #expect(try setup.query("SELECT name FROM t ORDER BY name") { $0.text(0) } == ["a", "c"])
    }

    /// A write whose changes cannot be undone on their own must not be committed with its
    /// group: the whole group fails, and every write in it is told so.
    @Test func aWriteThatCannotBeUndoneAloneFailsItsGroup() throws {
        let file = TemporaryDatabase()
        let setup = try SQLiteConnection(path: file.path)
        try setup.execute("CREATE TABLE t (name TEXT NOT NULL)")
        let database = SQLiteDatabase(path: file.path)
        struct Refused: Error {}
        let first = Self.holdFirstCommit(of: database, until: 2)
        // Releasing its own savepoint makes `ROLLBACK TO` fail with the row already merged
        // into the group's transaction.
        let breaking = Self.write(["half"], to: database, after: { db in
            try db.run("RELEASE one_write")
            throw Refused()
        })
        let bystander = Self.write(["innocent"], to: database)

        #expect(first.wait() && breaking.wait() && bystander.wait())
        #expect(first.error == nil)
        #expect(breaking.error != nil && bystander.error != nil, "a write of a rolled-back group was reported done")
        #expect(try setup.query("SELECT name FROM t") { $0.text(0) } == ["a"])
    }
}

@Suite struct PublicIDTests {
    @Test func idsAreHexAfterTheirPrefixAndSortByTime() {
        let first = PublicID.make(.message)
        let firstMilliseconds = Int64(first.dropFirst(4).prefix(12), radix: 16) ?? 0
        while Clock.unixMilliseconds() <= firstMilliseconds {}  // the next id falls in a later millisecond
        let second = PublicID.make(.message)
        for id in [first, second] {
            #expect(id.hasPrefix("msg_") && id.count == 4 + 28)
            #expect(id.dropFirst(4).allSatisfy { "0123456789abcdef".contains($0) })
        }
        #expect(first < second, "a later id must sort after an earlier one")
        let stamp = Int64(first.dropFirst(4).prefix(12), radix: 16) ?? 0
        #expect(abs(stamp - Int64(Clock.unixTime() * 1000)) < 1000, "the first 12 digits are the milliseconds")
        #expect(Set((0..<1000).map { _ in PublicID.make(.conversation) }).count == 1000)
    }
}

/// The embedded store. One instance (one connection) per worker thread.
public final class SQLiteStore: Store {
    private let db: SQLiteConnection

    public init(path: String) throws {
        db = try SQLiteConnection(path: path)
    }

    /// Versioned schema steps; `PRAGMA user_version` records how many have run.
    static let migrations: [String] = [
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX conversations_by_user ON conversations (user_id, updated_at);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
            content TEXT,
            tool_calls TEXT,
            tool_call_id TEXT,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            title TEXT NOT NULL,
            description TEXT,
            completed INTEGER NOT NULL DEFAULT 0 CHECK (completed IN (0, 1)),
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX tasks_by_user ON tasks (user_id, id);
        """
    ]

    public var schemaVersion: Int {
        (try? db.query("PRAGMA user_version") { Int($0.integer(0)) }.first) ?? 0
    }

    public func migrate() throws {
        try db.transaction {
            // Re-read inside the write lock: another responder may have migrated meanwhile.
            let current = schemaVersion
            guard current <= Self.migrations.count else {
                throw SQLiteError(code: 1, message: "database schema \(current) is newer than this binary", sql: nil)
            }
            for (index, step) in Self.migrations.enumerated().dropFirst(current) {
                try db.execute(step)
                try db.execute("PRAGMA user_version = \(index + 1)")
            }
        }
    }

    // MARK: Conversations and messages

    public func createConversation(userID: String, title: String) throws -> Conversation {
        let now = Self.now()
        try db.run(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
            [.text(userID), .text(title), .integer(now), .integer(now)])
        return Conversation(id: db.lastInsertRowID, userID: userID, title: title, createdAt: now, updatedAt: now)
    }

    public func conversation(id: Int64, userID: String) throws -> Conversation? {
        try db.query(
            "SELECT id, user_id, title, created_at, updated_at FROM conversations WHERE id = ? AND user_id = ?",
            [.integer(id), .text(userID)]
        ) { row in
            Conversation(
                id: row.integer(0), userID: row.text(1) ?? "", title: row.text(2) ?? "",
                createdAt: row.integer(3), updatedAt: row.integer(4))
        }.first
    }

    public func append(_ messages: [ChatMessage], to conversationID: Int64) throws {
        guard !messages.isEmpty else { return }
        let now = Self.now()
        try db.transaction {
            for message in messages {
                try db.run(
                    """
                    INSERT INTO messages (conversation_id, role, content, tool_calls, tool_call_id, created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                    [.integer(conversationID), .text(message.role.rawValue), SQLValue(message.content),
                     SQLValue(Self.encode(message.toolCalls)), SQLValue(message.toolCallID), .integer(now)])
            }
            try db.run("UPDATE conversations SET updated_at = ? WHERE id = ?", [.integer(now), .integer(conversationID)])
        }
    }

    public func recentMessages(conversationID: Int64, limit: Int) throws -> [ChatMessage] {
        let newestFirst = try db.query(
            """
            SELECT role, content, tool_calls, tool_call_id FROM messages
            WHERE conversation_id = ? ORDER BY id DESC LIMIT ?
            """,
            [.integer(conversationID), .integer(Int64(limit))]
        ) { row in
            ChatMessage(
                role: ChatMessage.Role(rawValue: row.text(0) ?? "") ?? .user, content: row.text(1),
                toolCalls: Self.decode(row.text(2)), toolCallID: row.text(3))
        }
        return Array(Array(newestFirst.reversed()).trimmedToWholeToolTurns())
    }

    private static func encode(_ calls: [ToolCall]) -> String? {
        guard !calls.isEmpty else { return nil }
        return JSON.array(calls.map { ["id": .string($0.id), "name": .string($0.name), "arguments": .string($0.arguments)] })
            .serialized
    }

    private static func decode(_ text: String?) -> [ToolCall] {
        guard let text, let calls = try? JSON.parse(text).arrayValue else { return [] }
        return calls.compactMap { call in
            guard let id = call["id"]?.stringValue, let name = call["name"]?.stringValue,
                let arguments = call["arguments"]?.stringValue
            else { return nil }
            return ToolCall(id: id, name: name, arguments: arguments)
        }
    }

    // MARK: Tasks

    private static let taskColumns = "id, title, description, completed, created_at"

    private static func task(_ row: SQLiteRow) -> TodoTask {
        TodoTask(
            id: row.integer(0), title: row.text(1) ?? "", description: row.text(2), completed: row.integer(3) != 0,
            createdAt: row.integer(4))
    }

    public func addTask(userID: String, title: String, description: String?) throws -> TodoTask {
        let now = Self.now()
        try db.run(
            "INSERT INTO tasks (user_id, title, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [.text(userID), .text(title), SQLValue(description), .integer(now), .integer(now)])
        return TodoTask(id: db.lastInsertRowID, title: title, description: description, completed: false, createdAt: now)
    }

    public func tasks(userID: String, filter: TaskFilter) throws -> [TodoTask] {
        let condition = switch filter {
        case .all: ""
        case .pending: " AND completed = 0"
        case .completed: " AND completed = 1"
        }
        return try db.query(
            "SELECT \(Self.taskColumns) FROM tasks WHERE user_id = ?\(condition) ORDER BY id", [.text(userID)],
            row: Self.task)
    }

    private func task(id: Int64, userID: String) throws -> TodoTask? {
        try db.query(
            "SELECT \(Self.taskColumns) FROM tasks WHERE id = ? AND user_id = ?", [.integer(id), .text(userID)],
            row: Self.task
        ).first
    }

    public func completeTask(id: Int64, userID: String) throws -> TodoTask? {
        let changed = try db.run(
            "UPDATE tasks SET completed = 1, updated_at = ? WHERE id = ? AND user_id = ?",
            [.integer(Self.now()), .integer(id), .text(userID)])
        return changed == 0 ? nil : try task(id: id, userID: userID)
    }

    public func deleteTask(id: Int64, userID: String) throws -> TodoTask? {
        try db.transaction {
            guard let existing = try task(id: id, userID: userID) else { return nil }
            try db.run("DELETE FROM tasks WHERE id = ? AND user_id = ?", [.integer(id), .text(userID)])
            return existing
        }
    }

    public func updateTask(id: Int64, userID: String, title: String?, description: String?) throws -> TodoTask? {
        let changed = try db.run(
            """
            UPDATE tasks SET title = coalesce(?, title), description = coalesce(?, description), updated_at = ?
            WHERE id = ? AND user_id = ?
            """,
            [SQLValue(title), SQLValue(description), .integer(Self.now()), .integer(id), .text(userID)])
        return changed == 0 ? nil : try task(id: id, userID: userID)
    }

    private static func now() -> Int64 { Int64(Clock.unixTime() * 1000) }
}

/// The shared store: one PostgreSQL database behind any number of hosts. Each call is one
/// transaction in one round trip (`PostgresDatabase.transaction`), on a connection borrowed from
/// the process's pool for that call only. Rows read back exactly as `SQLiteStore`'s do: the
/// same ids, the same order, the same columns (`StoredRow`).
public final class PostgresStore: Store {
    private let database: PostgresDatabase

    public init(database: PostgresDatabase) {
        self.database = database
    }

    /// Versioned schema steps; `chatkit_schema.version` records how many have run.
    static let migrations: [String] = [
        """
        CREATE TABLE conversations (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX conversations_by_user ON conversations (user_id, id);
        CREATE TABLE messages (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            public_id TEXT NOT NULL,
            audience TEXT NOT NULL CHECK (audience IN ('everyone', 'model', 'client')),
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
            content TEXT,
            tool_calls TEXT,
            tool_call_id TEXT,
            item TEXT,
            awaiting_result BOOLEAN NOT NULL DEFAULT false,
            created_at BIGINT NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
        CREATE INDEX messages_by_public_id ON messages (conversation_id, public_id);
        CREATE TABLE feedback (
            message_id BIGINT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('positive', 'negative')),
            created_at BIGINT NOT NULL
        );
        CREATE TABLE tasks (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id TEXT NOT NULL,
            title TEXT NOT NULL,
            description TEXT,
            completed BOOLEAN NOT NULL DEFAULT false,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX tasks_by_user ON tasks (user_id, id);
        """,
        // Model tokens charged to each user per UTC day, for CHATKIT_USER_TOKENS_PER_DAY.
        """
        CREATE TABLE token_usage (
            user_id TEXT NOT NULL,
            day TEXT NOT NULL,
            tokens BIGINT NOT NULL,
            PRIMARY KEY (user_id, day)
        );
        """,
        // Attachments: each row describes a file and holds its bytes. A message lists what it
        // carries; its rows go when it goes.
        """
        ALTER TABLE messages ADD COLUMN attachments TEXT;
        CREATE TABLE attachments (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            message_id BIGINT REFERENCES messages (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            size BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            data BYTEA
        );
        CREATE INDEX attachments_by_user ON attachments (user_id);
        CREATE INDEX attachments_by_message ON attachments (message_id) WHERE message_id IS NOT NULL;
        CREATE INDEX attachments_unattached ON attachments (created_at) WHERE message_id IS NULL;
        """,
    ]

    /// Held for the migration's transaction, so hosts that start together migrate one at a time
    /// and the later ones find the work done. A transaction lock, as PgBouncer's transaction
    /// pooling cannot keep a session lock.
    private static let migrationLock: Int64 = 0x6368_6174_6b69_7401
    /// The class of the per-user locks around an attachment's total (the two-key lock space,
    /// apart from the migration's).
    private static let attachmentTotalLock: Int32 = 0x6174_6301

    public var latestSchemaVersion: Int { Self.migrations.count }

    public func ping() throws { _ = try database.transaction([PostgresStatement("SELECT 1")]) }

    public var schemaVersion: Int {
        get throws {
            try database.withConnection { connection in
                let table = try connection.execute("SELECT to_regclass('chatkit_schema') IS NOT NULL")
                guard table.text(0, 0) == "t" else { return 0 }
                return Int(try connection.execute("SELECT version FROM chatkit_schema").integer(0, 0))
            }
        }
    }

    public func migrate() throws {
        try database.withConnection { connection in
            try connection.execute("BEGIN")
            do {
                try connection.execute("SELECT pg_advisory_xact_lock($1)", [.integer(Self.migrationLock)])
                try connection.execute("CREATE TABLE IF NOT EXISTS chatkit_schema (version INTEGER NOT NULL)")
                try connection.execute("INSERT INTO chatkit_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM chatkit_schema)")
                let current = Int(try connection.execute("SELECT version FROM chatkit_schema").integer(0, 0))
                guard current <= Self.migrations.count else {
                    throw PostgresError(sqlstate: nil, message: "database schema \(current) is newer than this binary", sql: nil)
                }
                for (index, step) in Self.migrations.enumerated().dropFirst(current) {
                    try connection.executeScript(step)
                    try connection.execute("UPDATE chatkit_schema SET version = $1", [.integer(Int64(index + 1))])
                }
                try connection.execute("COMMIT")
            } catch {
                if !connection.isBroken { _ = try? connection.execute("ROLLBACK") }
                throw error
            }
        }
    }

    private func one(_ sql: String, _ arguments: [SQLValue]) throws -> PostgresRows {
        try database.transaction([PostgresStatement(sql, arguments)])[0]
    }

    // MARK: Conversations

    private static let conversationColumns = Conversation.columns

    public func createConversation(publicID: String, userID: String, title: String, first: [ConversationEntry]) throws
        -> Conversation
    {
        let now = Self.now()
        let created = PostgresStatement(
            "INSERT INTO conversations (public_id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) RETURNING id",
            [.text(publicID), .text(userID), .text(title), .integer(now)])
        let results = try claimingAttachments {
            try database.transaction(
                [created] + first.flatMap { Self.insert($0, from: "conversations WHERE public_id = $1", [.text(publicID)], at: now) })
        }
        return Conversation(id: results[0].integer(0, 0), publicID: publicID, userID: userID, title: title.storable,
                            createdAt: now, updatedAt: now)
    }

    public func conversation(id: Int64, userID: String) throws -> Conversation? {
        try one("SELECT \(Self.conversationColumns) FROM conversations WHERE id = $1 AND user_id = $2",
                [.integer(id), .text(userID)]).first(Conversation.init(row:))
    }

    public func conversation(publicID: String, userID: String) throws -> Conversation? {
        try one("SELECT \(Self.conversationColumns) FROM conversations WHERE public_id = $1 AND user_id = $2",
                [.text(publicID), .text(userID)]).first(Conversation.init(row:))
    }

    public func conversations(userID: String, limit: Int, after: String?, order: SortOrder) throws -> Page<Conversation>? {
        let cursor = "(SELECT id FROM conversations WHERE public_id = $2 AND user_id = $1)"
        let results = try database.transaction([
            PostgresStatement("SELECT 1 FROM conversations WHERE public_id = $2 AND user_id = $1", [.text(userID), SQLValue(after)]),
            PostgresStatement(
                """
                SELECT \(Self.conversationColumns) FROM conversations
                WHERE user_id = $1 AND ($2::text IS NULL OR id \(order == .asc ? ">" : "<") \(cursor))
                ORDER BY id \(order.rawValue) LIMIT $3
                """,
                [.text(userID), SQLValue(after), .integer(Int64(limit + 1))]),
        ])
        if after != nil, results[0].count == 0 { return nil }
        let rows = results[1].all(Conversation.init(row:))
        return Page(data: Array(rows.prefix(limit)), hasMore: rows.count > limit)
    }

    public func rename(conversationID: Int64, title: String) throws {
        _ = try one("UPDATE conversations SET title = $1, updated_at = $2 WHERE id = $3",
                    [.text(title), .integer(Self.now()), .integer(conversationID)])
    }

    public func delete(conversationID: Int64) throws {
        _ = try one("DELETE FROM conversations WHERE id = $1", [.integer(conversationID)])
    }

    // MARK: Entries

    private static let entryColumns = ConversationEntry.columns(awaiting: "awaiting_result::int")

    public func append(_ entries: [ConversationEntry], to conversationID: Int64, title: String?) throws {
        guard !entries.isEmpty || title != nil else { return }
        let now = Self.now()
        // The update locks the row, so the conversation cannot be deleted under the inserts;
        // if it is gone already, they insert nothing and the update says so.
        let touched = PostgresStatement(
            "UPDATE conversations SET updated_at = $1, title = coalesce($2, title) WHERE id = $3",
            [.integer(now), SQLValue(title), .integer(conversationID)])
        let results = try claimingAttachments {
            try database.transaction(
                [touched] + entries.flatMap { Self.insert($0, from: "conversations WHERE id = $1", [.integer(conversationID)], at: now) })
        }
        guard results[0].affected == 1 else { throw StoreError.conversationDeleted }
    }

    /// The statements that insert `entry` into the conversation whose `id` the rows of `source`
    /// hold (found with `arguments`, which come first): nothing is inserted when there is no
    /// such row. `prefix` may define `source` as a WITH query. A user message's attachments
    /// become part of it in the statements that follow.
    private static func insert(_ entry: ConversationEntry, prefix: String = "", from source: String, _ arguments: [SQLValue],
                               at now: Int64) -> [PostgresStatement] {
        let types = ["text", "text", "text", "text", "text", "text", "text", "boolean", "bigint", "text"]
        let values = types.enumerated().map { "$\(arguments.count + $0.offset + 1)::\($0.element)" }.joined(separator: ", ")
        let message = entry.message
        let inserted = PostgresStatement(
            """
            \(prefix)INSERT INTO messages (conversation_id, public_id, audience, role, content, tool_calls, tool_call_id, item,
                                  awaiting_result, created_at, attachments)
            SELECT id, \(values) FROM \(source)
            """,
            arguments + [.text(entry.itemID), .text(entry.audience.rawValue), .text(message.role.rawValue),
                         SQLValue(message.content), SQLValue(ToolCall.storedText(message.toolCalls)), SQLValue(message.toolCallID),
                         SQLValue(entry.item?.serialized), .text(entry.awaitingResult ? "true" : "false"),
                         .integer(entry.createdAt != 0 ? entry.createdAt : now), SQLValue(Attachment.storedText(message.attachments))])
        // Each claim divides by the rows it took: none (the attachment is gone, or in another
        // message) fails the transaction, which `claimingAttachments` reports as such.
        assert(prefix.isEmpty || message.attachments.isEmpty, "a prefixed insert is a tool result, without attachments")
        let claims = message.attachments.map { attachment in
            PostgresStatement(
                """
                WITH claimed AS (
                    UPDATE attachments SET message_id = messages.id
                    FROM messages, (SELECT id, user_id FROM \(source)) AS owner
                    WHERE messages.conversation_id = owner.id AND messages.public_id = $\(arguments.count + 1)
                      AND attachments.public_id = $\(arguments.count + 2) AND attachments.message_id IS NULL
                      AND attachments.user_id = owner.user_id
                    RETURNING 1
                )
                SELECT 1 / count(*) FROM claimed
                """,
                arguments + [.text(entry.itemID), .text(attachment.id)])
        }
        return [inserted] + claims
    }

    /// A claim that took no attachment divided by zero: the transaction is rolled back, and
    /// the caller learns why.
    private func claimingAttachments<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as PostgresError where error.sqlstate == PostgresError.divisionByZero {
            throw StoreError.attachmentUnavailable
        }
    }

    public func recentMessages(conversationID: Int64, limit: Int) throws -> [ChatMessage] {
        let newestFirst = try one(
            """
            SELECT \(Self.entryColumns) FROM messages
            WHERE conversation_id = $1 AND audience <> 'client' ORDER BY id DESC LIMIT $2
            """,
            [.integer(conversationID), .integer(Int64(limit))]
        ).all(ConversationEntry.init(row:))
        return Array(newestFirst.reversed().map(\.message).trimmedToWholeToolTurns())
    }

    public func entries(conversationID: Int64, limit: Int, after: String?, order: SortOrder) throws -> Page<ConversationEntry>? {
        let cursor = "(SELECT id FROM messages WHERE conversation_id = $1 AND public_id = $2)"
        let results = try database.transaction([
            PostgresStatement("SELECT 1 FROM messages WHERE conversation_id = $1 AND public_id = $2",
                              [.integer(conversationID), SQLValue(after)]),
            PostgresStatement(
                """
                SELECT \(Self.entryColumns) FROM messages
                WHERE conversation_id = $1 AND audience <> 'model'
                  AND ($2::text IS NULL OR id \(order == .asc ? ">" : "<") \(cursor))
                ORDER BY id \(order.rawValue) LIMIT $3
                """,
                [.integer(conversationID), SQLValue(after), .integer(Int64(limit + 1))]),
        ])
        if after != nil, results[0].count == 0 { return nil }
        let rows = results[1].all(ConversationEntry.init(row:))
        return Page(data: Array(rows.prefix(limit)), hasMore: rows.count > limit)
    }

    public func entry(conversationID: Int64, itemID: String) throws -> ConversationEntry? {
        try one("SELECT \(Self.entryColumns) FROM messages WHERE conversation_id = $1 AND public_id = $2",
                [.integer(conversationID), .text(itemID)]).first(ConversationEntry.init(row:))
    }

    public func latestVisibleEntry(conversationID: Int64) throws -> ConversationEntry? {
        try one(
            """
            SELECT \(Self.entryColumns) FROM messages WHERE conversation_id = $1 AND audience <> 'model'
            ORDER BY id DESC LIMIT 1
            """,
            [.integer(conversationID)]
        ).first(ConversationEntry.init(row:))
    }

    public func resolve(awaitingEntry itemID: String, in conversationID: Int64, item: JSON, result: ConversationEntry) throws
        -> Bool
    {
        // One statement: the result is inserted only if this very update took the entry, so of
        // two answers racing for one call exactly one lands.
        let resolved = """
            WITH resolved AS (
                UPDATE messages SET item = $2, awaiting_result = false
                WHERE conversation_id = $1 AND public_id = $3 AND awaiting_result
                RETURNING conversation_id AS id
            )

            """
        let insert = Self.insert(result, prefix: resolved, from: "resolved",
                                 [.integer(conversationID), .text(item.serialized), .text(itemID)], at: Self.now())
        return try database.transaction(insert)[0].affected == 1
    }

    public func deleteEntries(conversationID: Int64, after itemID: String) throws {
        _ = try one(
            """
            DELETE FROM messages
            WHERE conversation_id = $1 AND id > (SELECT id FROM messages WHERE conversation_id = $1 AND public_id = $2)
            """,
            [.integer(conversationID), .text(itemID)])
    }

    public func setFeedback(conversationID: Int64, itemIDs: [String], positive: Bool) throws -> Int {
        let now = Self.now()
        let results = try database.transaction(itemIDs.map { itemID in
            PostgresStatement(
                """
                INSERT INTO feedback (message_id, kind, created_at)
                SELECT id, $3::text, $4::bigint FROM messages WHERE conversation_id = $1 AND public_id = $2
                ON CONFLICT (message_id) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at
                """,
                [.integer(conversationID), .text(itemID), .text(positive ? "positive" : "negative"), .integer(now)])
        })
        return results.reduce(0) { $0 + $1.affected }
    }

    // MARK: Tasks

    private static let taskColumns = TodoTask.columns(completed: "completed::int")

    public func addTask(userID: String, title: String, description: String?, limit: Int) throws -> TodoTask? {
        let now = Self.now()
        let added = try one(
            """
            INSERT INTO tasks (user_id, title, description, created_at, updated_at)
            SELECT $1::text, $2::text, $3::text, $4::bigint, $4::bigint
            WHERE (SELECT count(*) FROM tasks WHERE user_id = $1::text) < $5::bigint
            RETURNING id
            """,
            [.text(userID), .text(title), SQLValue(description), .integer(now), .integer(Int64(limit))])
        guard added.count == 1 else { return nil }
        return TodoTask(id: added.integer(0, 0), title: title.storable, description: description?.storable, completed: false,
                        createdAt: now)
    }

    public func tasks(userID: String, filter: TaskFilter) throws -> [TodoTask] {
        let condition = switch filter {
        case .all: ""
        case .pending: " AND NOT completed"
        case .completed: " AND completed"
        }
        return try one("SELECT \(Self.taskColumns) FROM tasks WHERE user_id = $1\(condition) ORDER BY id", [.text(userID)])
            .all(TodoTask.init(row:))
    }

    public func completeTask(id: Int64, userID: String) throws -> TodoTask? {
        try one(
            "UPDATE tasks SET completed = true, updated_at = $1 WHERE id = $2 AND user_id = $3 RETURNING \(Self.taskColumns)",
            [.integer(Self.now()), .integer(id), .text(userID)]
        ).first(TodoTask.init(row:))
    }

    public func deleteTask(id: Int64, userID: String) throws -> TodoTask? {
        try one("DELETE FROM tasks WHERE id = $1 AND user_id = $2 RETURNING \(Self.taskColumns)", [.integer(id), .text(userID)])
            .first(TodoTask.init(row:))
    }

    public func updateTask(id: Int64, userID: String, title: String?, description: String?) throws -> TodoTask? {
        try one(
            """
            UPDATE tasks SET title = coalesce($1, title), description = coalesce($2, description), updated_at = $3
            WHERE id = $4 AND user_id = $5 RETURNING \(Self.taskColumns)
            """,
            [SQLValue(title), SQLValue(description), .integer(Self.now()), .integer(id), .text(userID)]
        ).first(TodoTask.init(row:))
    }

    // MARK: Attachments

    private static let attachmentColumns = StoredAttachment.columns(
        uploaded: "(data IS NOT NULL)::int", attached: "(message_id IS NOT NULL)::int")

    public func createAttachment(_ attachment: Attachment, userID: String, userMaxBytes: Int, staleBefore: Int64) throws -> Bool {
        let results = try database.transaction([
            PostgresStatement("DELETE FROM attachments WHERE message_id IS NULL AND created_at < $1", [.integer(staleBefore)]),
            // One of the user's uploads at a time past this point, on every host: each sees the
            // others' bytes in its total.
            PostgresStatement("SELECT pg_advisory_xact_lock($1, hashtext($2))", [.integer(Int64(Self.attachmentTotalLock)), .text(userID)]),
            PostgresStatement(
                """
                INSERT INTO attachments (public_id, user_id, name, mime_type, size, created_at, data)
                SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bigint, $7::bytea
                WHERE (SELECT coalesce(sum(size), 0) FROM attachments WHERE user_id = $2::text) + $5::bigint <= $8::bigint
                """,
                [.text(attachment.id), .text(userID), .text(attachment.name), .text(attachment.mimeType),
                 .integer(Int64(attachment.size)), .integer(Self.now()), attachment.data.map(SQLValue.blob) ?? .null,
                 .integer(Int64(userMaxBytes))]),
        ])
        return results[2].affected == 1
    }

    public func attachment(id: String, userID: String, includingData: Bool) throws -> StoredAttachment? {
        try one(
            "SELECT \(Self.attachmentColumns)\(includingData ? ", encode(data, 'hex')" : "") FROM attachments WHERE public_id = $1 AND user_id = $2",
            [.text(id), .text(userID)]
        ).first { row in
            var found = StoredAttachment(row: row)
            if includingData { found.attachment.data = row.bytes(6) }
            return found
        }
    }

    public func attachmentOwner(id: String) throws -> String? {
        try one("SELECT user_id FROM attachments WHERE public_id = $1", [.text(id)]).first { $0.text(0) } ?? nil
    }

    public func upload(attachmentID: String, userID: String, data: [UInt8]) throws -> Bool {
        try one("UPDATE attachments SET data = $1 WHERE public_id = $2 AND user_id = $3 AND data IS NULL",
                [.blob(data), .text(attachmentID), .text(userID)]).affected == 1
    }

    public func attachmentData(ids: [String], userID: String) throws -> [String: [UInt8]] {
        guard !ids.isEmpty else { return [:] }
        let rows = try one(
            """
            SELECT public_id, encode(data, 'hex') FROM attachments
            WHERE user_id = $1 AND data IS NOT NULL AND public_id IN (SELECT jsonb_array_elements_text($2::jsonb))
            """,
            [.text(userID), .text(JSON.array(ids.map(JSON.string)).serialized)]
        ).all { row in (row.text(0) ?? "", row.bytes(1) ?? []) }
        return Dictionary(rows, uniquingKeysWith: { first, _ in first })  // public ids are unique
    }

    public func deleteAttachment(id: String, userID: String) throws -> Bool {
        try one("DELETE FROM attachments WHERE public_id = $1 AND user_id = $2", [.text(id), .text(userID)]).affected == 1
    }

    // MARK: Token budgets

    public func tokensUsed(userID: String, day: String) throws -> Int {
        let rows = try one("SELECT tokens FROM token_usage WHERE user_id = $1 AND day = $2", [.text(userID), .text(day)])
        return rows.count == 0 ? 0 : Int(rows.integer(0, 0))
    }

    public func chargeTokens(userID: String, day: String, tokens: Int) throws {
        _ = try one(
            """
            INSERT INTO token_usage (user_id, day, tokens) VALUES ($1, $2, $3)
            ON CONFLICT (user_id, day) DO UPDATE SET tokens = token_usage.tokens + excluded.tokens
            """,
            [.text(userID), .text(day), .integer(Int64(tokens))])
    }

    private static func now() -> Int64 { Clock.unixMilliseconds() }
}

extension PostgresRows {
    /// Row `index` as a store row.
    struct Row: StoredRow {
        let values: [String?]
        func integer(_ column: Int32) -> Int64 { values[Int(column)].flatMap { Int64($0) } ?? 0 }
        func text(_ column: Int32) -> String? { values[Int(column)] }
        /// A bytea column the query selected as `encode(column, 'hex')`.
        func bytes(_ column: Int32) -> [UInt8]? { values[Int(column)].flatMap(Hex.decode) }
    }

    func all<T>(_ decode: (Row) -> T) -> [T] { rows.map { decode(Row(values: $0)) } }
    func first<T>(_ decode: (Row) -> T) -> T? { rows.first.map { decode(Row(values: $0)) } }
}

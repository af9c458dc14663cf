/// The embedded store. Reads borrow one of the database's reader connections for the call;
/// writes go through its group commit. It holds no connection of its own.
public final class SQLiteStore: Store {
    private let database: SQLiteDatabase

    public init(database: SQLiteDatabase) {
        self.database = database
    }

    public convenience init(path: String) {
        self.init(database: SQLiteDatabase(path: path))
    }

    /// Every read runs on a reader connection lent for the one call.
    private func read<T>(_ body: (_ reader: SQLiteConnection) throws -> T) throws -> T {
        try database.read(body)
    }

    /// Every write goes through the database's group commit: `body` is handed the database's
    /// writer connection, not a reader.
    @discardableResult
    private func write<T>(_ body: (_ writer: SQLiteConnection) throws -> T) throws -> T {
        try database.write(body)
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
        """,
        // ChatKit: public thread and item ids, who sees each row, item bodies, feedback.
        """
        ALTER TABLE conversations ADD COLUMN public_id TEXT;
        UPDATE conversations SET public_id = 'thr_' || lower(hex(randomblob(8)));
        CREATE UNIQUE INDEX conversations_by_public_id ON conversations (public_id);
        ALTER TABLE messages ADD COLUMN public_id TEXT;
        UPDATE messages SET public_id = 'msg_' || lower(hex(randomblob(8)));
        CREATE UNIQUE INDEX messages_by_public_id ON messages (public_id);
        ALTER TABLE messages ADD COLUMN audience TEXT NOT NULL DEFAULT 'everyone'
            CHECK (audience IN ('everyone', 'model', 'client'));
        UPDATE messages SET audience = 'model'
            WHERE role IN ('tool', 'system') OR (role = 'assistant' AND coalesce(content, '') = '');
        ALTER TABLE messages ADD COLUMN item TEXT;
        CREATE TABLE feedback (
            message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('positive', 'negative')),
            created_at INTEGER NOT NULL
        );
        """,
        // Fewer index writes per turn. Threads are listed by id, which an index on user_id alone
        // keeps in order (the row id ends every index entry), so touching updated_at no longer
        // moves an index entry. Item ids are only ever looked up within their conversation,
        // which messages_by_conversation finds; they are unique by construction (PublicID).
        """
        DROP INDEX conversations_by_user;
        CREATE INDEX conversations_by_user ON conversations (user_id);
        DROP INDEX messages_by_public_id;
        """,
        // Entries that wait for the client's result (a client tool call) say so themselves.
        """
        ALTER TABLE messages ADD COLUMN awaiting_result INTEGER NOT NULL DEFAULT 0 CHECK (awaiting_result IN (0, 1));
        UPDATE messages SET awaiting_result = 1
            WHERE json_extract(item, '$.type') = 'client_tool_call' AND json_extract(item, '$.status') = 'pending';
        """,
        // Model tokens charged to each user per UTC day, for CHATKIT_USER_TOKENS_PER_DAY.
        """
        CREATE TABLE token_usage (
            user_id TEXT NOT NULL,
            day TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            PRIMARY KEY (user_id, day)
        ) WITHOUT ROWID;
        """,
        // Attachments: each row describes a file and holds its bytes, last. A message lists what
        // it carries; its rows go when it goes.
        """
        ALTER TABLE messages ADD COLUMN attachments TEXT;
        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            message_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            data BLOB
        );
        CREATE INDEX attachments_by_user ON attachments (user_id);
        CREATE INDEX attachments_by_message ON attachments (message_id) WHERE message_id IS NOT NULL;
        CREATE INDEX attachments_unattached ON attachments (created_at) WHERE message_id IS NULL;
        """,
    ]

    public var schemaVersion: Int { get throws { try read(Self.schemaVersion(of:)) } }
    public var latestSchemaVersion: Int { Self.migrations.count }

    public func ping() throws { _ = try read { try $0.query("SELECT 1") { $0.integer(0) } } }

    private static func schemaVersion(of connection: SQLiteConnection) -> Int {
        (try? connection.query("PRAGMA user_version") { Int($0.integer(0)) }.first) ?? 0
    }

    public func migrate() throws {
        try write { writer in
            // Re-read inside the write lock: another responder may have migrated meanwhile.
            let current = Self.schemaVersion(of: writer)
            guard current <= Self.migrations.count else {
                throw SQLiteError(code: 1, message: "database schema \(current) is newer than this binary", sql: nil)
            }
            for (index, step) in Self.migrations.enumerated().dropFirst(current) {
                try writer.execute(step)
                try writer.execute("PRAGMA user_version = \(index + 1)")
            }
        }
    }

    // MARK: Conversations

    private static let conversationColumns = Conversation.columns
    private static func conversation(_ row: SQLiteRow) -> Conversation { Conversation(row: row) }

    public func createConversation(publicID: String, userID: String, title: String, first: [ConversationEntry]) throws
        -> Conversation
    {
        let now = Self.now()
        let id = try write { writer in
            try writer.run(
                "INSERT INTO conversations (public_id, user_id, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                [.text(publicID), .text(userID), .text(title), .integer(now), .integer(now)])
            let id = writer.lastInsertRowID
            try insert(first, into: id, at: now, in: writer)
            return id
        }
        return Conversation(id: id, publicID: publicID, userID: userID, title: title.storable, createdAt: now, updatedAt: now)
    }

    public func conversation(id: Int64, userID: String) throws -> Conversation? {
        try read { reader in
            try reader.query(
                "SELECT \(Self.conversationColumns) FROM conversations WHERE id = ? AND user_id = ?",
                [.integer(id), .text(userID)], row: Self.conversation
            ).first
        }
    }

    public func conversation(publicID: String, userID: String) throws -> Conversation? {
        try read { try conversation(publicID: publicID, userID: userID, in: $0) }
    }

    private func conversation(publicID: String, userID: String, in connection: SQLiteConnection) throws -> Conversation? {
        try connection.query(
            "SELECT \(Self.conversationColumns) FROM conversations WHERE public_id = ? AND user_id = ?",
            [.text(publicID), .text(userID)], row: Self.conversation
        ).first
    }

    /// Row ids grow with creation time, so ordering by id is creation order with no ties. The
    /// index on user_id keeps its entries in id order, so no page needs a sort.
    static func conversationsPage(_ order: SortOrder) -> String {
        """
        SELECT \(conversationColumns) FROM conversations
        WHERE user_id = ? AND (? IS NULL OR id \(order == .asc ? ">" : "<") ?)
        ORDER BY id \(order.rawValue) LIMIT ?
        """
    }

    public func conversations(userID: String, limit: Int, after: String?, order: SortOrder) throws -> Page<Conversation>? {
        try read { reader in
            var cursor: Int64?
            if let after {
                guard let found = try conversation(publicID: after, userID: userID, in: reader) else { return nil }
                cursor = found.id
            }
            let rows = try reader.query(
                Self.conversationsPage(order),
                [.text(userID), cursor.map(SQLValue.integer) ?? .null, cursor.map(SQLValue.integer) ?? .null,
                 .integer(Int64(limit + 1))],
                row: Self.conversation)
            return Page(data: Array(rows.prefix(limit)), hasMore: rows.count > limit)
        }
    }

    public func rename(conversationID: Int64, title: String) throws {
        try write { writer in
            try writer.run(
                "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
                [.text(title), .integer(Self.now()), .integer(conversationID)])
        }
    }

    public func delete(conversationID: Int64) throws {
        try write { writer in try writer.run("DELETE FROM conversations WHERE id = ?", [.integer(conversationID)]) }
    }

    // MARK: Messages

    public func append(_ entries: [ConversationEntry], to conversationID: Int64, title: String?) throws {
        guard !entries.isEmpty || title != nil else { return }
        let now = Self.now()
        try write { writer in
            // First: a conversation deleted meanwhile is then told apart from a failing write.
            let touched = try writer.run(
                "UPDATE conversations SET updated_at = ?, title = coalesce(?, title) WHERE id = ?",
                [.integer(now), title.map(SQLValue.text) ?? .null, .integer(conversationID)])
            guard touched == 1 else { throw StoreError.conversationDeleted }
            try insert(entries, into: conversationID, at: now, in: writer)
        }
    }

    private func insert(_ entries: [ConversationEntry], into conversationID: Int64, at now: Int64, in connection: SQLiteConnection) throws {
        for entry in entries {
            let message = entry.message
            try connection.run(
                """
                INSERT INTO messages (conversation_id, public_id, audience, role, content, tool_calls, tool_call_id,
                                      item, awaiting_result, created_at, attachments)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [.integer(conversationID), .text(entry.itemID), .text(entry.audience.rawValue),
                 .text(message.role.rawValue), SQLValue(message.content), SQLValue(ToolCall.storedText(message.toolCalls)),
                 SQLValue(message.toolCallID), SQLValue(entry.item?.serialized), .integer(entry.awaitingResult ? 1 : 0),
                 .integer(entry.createdAt != 0 ? entry.createdAt : now), SQLValue(Attachment.storedText(message.attachments))])
            let messageID = connection.lastInsertRowID
            for attachment in message.attachments {
                let claimed = try connection.run(
                    """
                    UPDATE attachments SET message_id = ?
                    WHERE public_id = ? AND message_id IS NULL AND user_id = (SELECT user_id FROM conversations WHERE id = ?)
                    """,
                    [.integer(messageID), .text(attachment.id), .integer(conversationID)])
                guard claimed == 1 else { throw StoreError.attachmentUnavailable }
            }
        }
    }

    public func recentMessages(conversationID: Int64, limit: Int) throws -> [ChatMessage] {
        let newestFirst = try read { reader in
            try reader.query(
                """
                SELECT \(Self.entryColumns) FROM messages
                WHERE conversation_id = ? AND audience != 'client' ORDER BY id DESC LIMIT ?
                """,
                [.integer(conversationID), .integer(Int64(limit))], row: Self.entry)
        }
        return Array(newestFirst.reversed().map(\.message).trimmedToWholeToolTurns())
    }

    private static let entryColumns = ConversationEntry.columns(awaiting: "awaiting_result")
    private static func entry(_ row: SQLiteRow) -> ConversationEntry { ConversationEntry(row: row) }

    /// The conversation's index keeps its entries in id order: no page needs a sort.
    static func entriesPage(_ order: SortOrder) -> String {
        """
        SELECT \(entryColumns) FROM messages
        WHERE conversation_id = ? AND audience != 'model' AND (? IS NULL OR id \(order == .asc ? ">" : "<") ?)
        ORDER BY id \(order.rawValue) LIMIT ?
        """
    }

    public func entries(conversationID: Int64, limit: Int, after: String?, order: SortOrder) throws -> Page<ConversationEntry>? {
        try read { reader in
            var cursor: Int64?
            if let after {
                guard let found = try rowID(conversationID: conversationID, itemID: after, in: reader) else { return nil }
                cursor = found
            }
            let rows = try reader.query(
                Self.entriesPage(order),
                [.integer(conversationID), cursor.map(SQLValue.integer) ?? .null, cursor.map(SQLValue.integer) ?? .null,
                 .integer(Int64(limit + 1))],
                row: Self.entry)
            return Page(data: Array(rows.prefix(limit)), hasMore: rows.count > limit)
        }
    }

    private func rowID(conversationID: Int64, itemID: String, in connection: SQLiteConnection) throws -> Int64? {
        try connection.query(
            "SELECT id FROM messages WHERE conversation_id = ? AND public_id = ?", [.integer(conversationID), .text(itemID)]
        ) { $0.integer(0) }.first
    }

    public func entry(conversationID: Int64, itemID: String) throws -> ConversationEntry? {
        try read { reader in
            try reader.query(
                "SELECT \(Self.entryColumns) FROM messages WHERE conversation_id = ? AND public_id = ?",
                [.integer(conversationID), .text(itemID)], row: Self.entry
            ).first
        }
    }

    public func latestVisibleEntry(conversationID: Int64) throws -> ConversationEntry? {
        try read { reader in
            try reader.query(
                """
                SELECT \(Self.entryColumns) FROM messages WHERE conversation_id = ? AND audience != 'model'
                ORDER BY id DESC LIMIT 1
                """,
                [.integer(conversationID)], row: Self.entry
            ).first
        }
    }

    public func resolve(awaitingEntry itemID: String, in conversationID: Int64, item: JSON, result: ConversationEntry) throws
        -> Bool
    {
        let now = Self.now()
        return try write { writer in
            let changed = try writer.run(
                """
                UPDATE messages SET item = ?, awaiting_result = 0
                WHERE conversation_id = ? AND public_id = ? AND awaiting_result = 1
                """,
                [.text(item.serialized), .integer(conversationID), .text(itemID)])
            guard changed == 1 else { return false }
            try insert([result], into: conversationID, at: now, in: writer)
            return true
        }
    }

    public func deleteEntries(conversationID: Int64, after itemID: String) throws {
        try write { writer in
            guard let cursor = try rowID(conversationID: conversationID, itemID: itemID, in: writer) else { return }
            try writer.run("DELETE FROM messages WHERE conversation_id = ? AND id > ?", [.integer(conversationID), .integer(cursor)])
        }
    }

    public func setFeedback(conversationID: Int64, itemIDs: [String], positive: Bool) throws -> Int {
        try write { writer in
            var marked = 0
            for itemID in itemIDs {
                guard let row = try rowID(conversationID: conversationID, itemID: itemID, in: writer) else { continue }
                try writer.run(
                    """
                    INSERT INTO feedback (message_id, kind, created_at) VALUES (?, ?, ?)
                    ON CONFLICT (message_id) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at
                    """,
                    [.integer(row), .text(positive ? "positive" : "negative"), .integer(Self.now())])
                marked += 1
            }
            return marked
        }
    }

    // MARK: Tasks

    private static let taskColumns = TodoTask.columns(completed: "completed")
    private static func task(_ row: SQLiteRow) -> TodoTask { TodoTask(row: row) }

    public func addTask(userID: String, title: String, description: String?, limit: Int) throws -> TodoTask? {
        let now = Self.now()
        let id = try write { writer -> Int64? in
            // The count and the insert in one statement: no two adds both take the last place.
            let added = try writer.run(
                """
                INSERT INTO tasks (user_id, title, description, created_at, updated_at)
                SELECT ?, ?, ?, ?, ? WHERE (SELECT count(*) FROM tasks WHERE user_id = ?) < ?
                """,
                [.text(userID), .text(title), SQLValue(description), .integer(now), .integer(now), .text(userID),
                 .integer(Int64(limit))])
            return added == 1 ? writer.lastInsertRowID : nil
        }
        return id.map { TodoTask(id: $0, title: title.storable, description: description?.storable, completed: false, createdAt: now) }
    }

    public func tasks(userID: String, filter: TaskFilter) throws -> [TodoTask] {
        let condition = switch filter {
        case .all: ""
        case .pending: " AND completed = 0"
        case .completed: " AND completed = 1"
        }
        return try read { reader in
            try reader.query(
                "SELECT \(Self.taskColumns) FROM tasks WHERE user_id = ?\(condition) ORDER BY id", [.text(userID)],
                row: Self.task)
        }
    }

    private func task(id: Int64, userID: String, in connection: SQLiteConnection) throws -> TodoTask? {
        try connection.query(
            "SELECT \(Self.taskColumns) FROM tasks WHERE id = ? AND user_id = ?", [.integer(id), .text(userID)],
            row: Self.task
        ).first
    }

    public func completeTask(id: Int64, userID: String) throws -> TodoTask? {
        let changed = try write { writer in
            try writer.run(
                "UPDATE tasks SET completed = 1, updated_at = ? WHERE id = ? AND user_id = ?",
                [.integer(Self.now()), .integer(id), .text(userID)])
        }
        return changed == 0 ? nil : try read { try task(id: id, userID: userID, in: $0) }
    }

    public func deleteTask(id: Int64, userID: String) throws -> TodoTask? {
        try write { writer in
            guard let existing = try task(id: id, userID: userID, in: writer) else { return nil }
            try writer.run("DELETE FROM tasks WHERE id = ? AND user_id = ?", [.integer(id), .text(userID)])
            return existing
        }
    }

    public func updateTask(id: Int64, userID: String, title: String?, description: String?) throws -> TodoTask? {
        let changed = try write { writer in
            try writer.run(
                """
                UPDATE tasks SET title = coalesce(?, title), description = coalesce(?, description), updated_at = ?
                WHERE id = ? AND user_id = ?
                """,
                [SQLValue(title), SQLValue(description), .integer(Self.now()), .integer(id), .text(userID)])
        }
        return changed == 0 ? nil : try read { try task(id: id, userID: userID, in: $0) }
    }

    // MARK: Attachments

    /// typeof() reads a column's type from the row's header: the bytes themselves stay unread.
    private static let attachmentColumns = StoredAttachment.columns(uploaded: "typeof(data) <> 'null'",
                                                                    attached: "message_id IS NOT NULL")

    public func createAttachment(_ attachment: Attachment, userID: String, userMaxBytes: Int, staleBefore: Int64) throws -> Bool {
        try write { writer in
            try writer.run("DELETE FROM attachments WHERE message_id IS NULL AND created_at < ?", [.integer(staleBefore)])
            // The total and the insert in one statement: no two uploads both take the last bytes.
            return try writer.run(
                """
                INSERT INTO attachments (public_id, user_id, name, mime_type, size, created_at, data)
                SELECT ?, ?, ?, ?, ?, ?, ? WHERE (SELECT coalesce(sum(size), 0) FROM attachments WHERE user_id = ?) + ? <= ?
                """,
                [.text(attachment.id), .text(userID), .text(attachment.name), .text(attachment.mimeType),
                 .integer(Int64(attachment.size)), .integer(Self.now()), attachment.data.map(SQLValue.blob) ?? .null,
                 .text(userID), .integer(Int64(attachment.size)), .integer(Int64(userMaxBytes))]) == 1
        }
    }

    public func attachment(id: String, userID: String, includingData: Bool) throws -> StoredAttachment? {
        try read { reader in
            try reader.query(
                "SELECT \(Self.attachmentColumns)\(includingData ? ", data" : "") FROM attachments WHERE public_id = ? AND user_id = ?",
                [.text(id), .text(userID)]
            ) { row in
                var found = StoredAttachment(row: row)
                if includingData { found.attachment.data = row.bytes(6) }
                return found
            }.first
        }
    }

    public func attachmentOwner(id: String) throws -> String? {
        try read { reader in
            try reader.query("SELECT user_id FROM attachments WHERE public_id = ?", [.text(id)]) { $0.text(0) }.first ?? nil
        }
    }

    public func upload(attachmentID: String, userID: String, data: [UInt8]) throws -> Bool {
        try write { writer in
            try writer.run(
                "UPDATE attachments SET data = ? WHERE public_id = ? AND user_id = ? AND data IS NULL",
                [.blob(data), .text(attachmentID), .text(userID)]) == 1
        }
    }

    public func attachmentData(ids: [String], userID: String) throws -> [String: [UInt8]] {
        guard !ids.isEmpty else { return [:] }
        let rows = try read { reader in
            try reader.query(
                """
                SELECT public_id, data FROM attachments
                WHERE user_id = ? AND data IS NOT NULL AND public_id IN (SELECT value FROM json_each(?))
                """,
                [.text(userID), .text(JSON.array(ids.map(JSON.string)).serialized)]
            ) { row in (row.text(0) ?? "", row.bytes(1) ?? []) }
        }
        return Dictionary(rows, uniquingKeysWith: { first, _ in first })  // public ids are unique
    }

    public func deleteAttachment(id: String, userID: String) throws -> Bool {
        try write { writer in
            try writer.run("DELETE FROM attachments WHERE public_id = ? AND user_id = ?", [.text(id), .text(userID)]) == 1
        }
    }

    // MARK: Token budgets

    public func tokensUsed(userID: String, day: String) throws -> Int {
        Int(try read { reader in
            try reader.query("SELECT tokens FROM token_usage WHERE user_id = ? AND day = ?", [.text(userID), .text(day)]) {
                $0.integer(0)
            }.first ?? 0
        })
    }

    public func chargeTokens(userID: String, day: String, tokens: Int) throws {
        try write { writer in
            try writer.run(
                """
                INSERT INTO token_usage (user_id, day, tokens) VALUES (?, ?, ?)
                ON CONFLICT (user_id, day) DO UPDATE SET tokens = tokens + excluded.tokens
                """,
                [.text(userID), .text(day), .integer(Int64(tokens))])
        }
    }

    private static func now() -> Int64 { Clock.unixMilliseconds() }
}

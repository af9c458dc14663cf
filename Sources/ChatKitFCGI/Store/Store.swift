/// What a store can fail with besides the database itself.
public enum StoreError: Error, Equatable {
    /// The conversation was deleted while a request was adding to it.
    case conversationDeleted
    /// Every database connection stayed busy for as long as a request may wait for one.
    case busy
    /// A message named an attachment that is gone, or part of another message, by the time it
    /// was stored; nothing was stored.
    case attachmentUnavailable
}

/// What one process shares of its database, whichever it is: SQLite's readers, group commit and
/// writer, or PostgreSQL's connection pool.
public protocol StoreDatabase: Sendable {
    /// A store for one request.
    func makeStore() throws -> any Store
    /// Work the database needs done in the background while the process serves.
    func startMaintenance() throws
}

extension StoreDatabase {
    public func startMaintenance() throws {}
}

extension DatabaseLocation {
    /// The database this location names, set up as `config` says.
    public func open(_ config: Config, forServing: Bool = false) -> any StoreDatabase {
        switch self {
        case .sqlite(let path):
            return SQLiteDatabase(path: path, checkpointsInBackground: forServing, readers: config.databasePoolSize,
                                  readerWaitMilliseconds: config.databasePoolWaitMilliseconds)
        case .postgres(let url):
            var settings = PostgresDatabase.Settings()
            settings.poolSize = config.databasePoolSize
            settings.poolWaitMilliseconds = config.databasePoolWaitMilliseconds
            settings.statementTimeoutMilliseconds = config.databaseStatementTimeoutMilliseconds
            return PostgresDatabase(url: url, settings: settings)
        }
    }
}

/// Persistence for the product's own model: conversations, their entries, and tasks. Every call
/// is scoped to a user: a row owned by someone else behaves exactly like a missing one. Entries
/// carry a face's item body as opaque JSON; a store never looks inside it. Text is kept as
/// given, but for U+0000, which every store keeps as U+FFFD (PostgreSQL text cannot hold it).
public protocol Store: AnyObject {
    /// Brings the schema up to date; safe when several processes start at once.
    func migrate() throws
    /// A trivial query: whether the database answers now (`/readyz`).
    func ping() throws
    /// How many migration steps the database has had, and how many this build knows.
    var schemaVersion: Int { get throws }
    var latestSchemaVersion: Int { get }

    /// `title` may be empty: a conversation is untitled until its first answer. `first` is
    /// stored in the same transaction (the user's opening message).
    func createConversation(publicID: String, userID: String, title: String, first: [ConversationEntry]) throws
        -> Conversation
    func conversation(id: Int64, userID: String) throws -> Conversation?
    func conversation(publicID: String, userID: String) throws -> Conversation?
    /// Newest first for `.desc`; `nil` when `after` names no conversation of this user.
    func conversations(userID: String, limit: Int, after: String?, order: SortOrder) throws -> Page<Conversation>?
    func rename(conversationID: Int64, title: String) throws
    func delete(conversationID: Int64) throws

    /// Appends in one transaction, so an assistant tool-call message never lands without its
    /// results. A user message's attachments become part of it (deleted with it); each must be
    /// the conversation owner's and part of no other message, or nothing is stored and
    /// `StoreError.attachmentUnavailable` is thrown. `title`, when given, becomes the conversation's title in the same transaction.
    /// Throws `StoreError.conversationDeleted` when the conversation is gone.
    func append(_ entries: [ConversationEntry], to conversationID: Int64, title: String?) throws
    /// The newest `limit` messages the model sees, oldest first, never starting between a tool
    /// call and its result.
    func recentMessages(conversationID: Int64, limit: Int) throws -> [ChatMessage]
    /// What ChatKit shows, paged by item id; `nil` when `after` names no item of the conversation.
    func entries(conversationID: Int64, limit: Int, after: String?, order: SortOrder) throws -> Page<ConversationEntry>?
    func entry(conversationID: Int64, itemID: String) throws -> ConversationEntry?
    /// The newest row ChatKit can see.
    func latestVisibleEntry(conversationID: Int64) throws -> ConversationEntry?
    /// Gives an entry that awaits the client's result (a client tool call) its new item body,
    /// and stores the result for the model, in one write. False when the entry no longer
    /// awaits a result, so two answers to one call can never both land.
    func resolve(awaitingEntry itemID: String, in conversationID: Int64, item: JSON, result: ConversationEntry) throws -> Bool
    /// Removes every row stored after `itemID` (hidden ones too), as a retry does.
    func deleteEntries(conversationID: Int64, after itemID: String) throws
    /// Returns how many of `itemIDs` belong to the conversation and were marked.
    func setFeedback(conversationID: Int64, itemIDs: [String], positive: Bool) throws -> Int

    /// Nil when the user has `limit` tasks already.
    func addTask(userID: String, title: String, description: String?, limit: Int) throws -> TodoTask?
    func tasks(userID: String, filter: TaskFilter) throws -> [TodoTask]
    func completeTask(id: Int64, userID: String) throws -> TodoTask?
    func deleteTask(id: Int64, userID: String) throws -> TodoTask?
    func updateTask(id: Int64, userID: String, title: String?, description: String?) throws -> TodoTask?

    /// Registers one of the user's attachments, with its bytes when they come with it (a direct
    /// upload). False, storing nothing, when the user's attachments would then take more than
    /// `userMaxBytes`. Removes anyone's attachments created before `staleBefore` (Unix
    /// milliseconds) and never sent with a message.
    func createAttachment(_ attachment: Attachment, userID: String, userMaxBytes: Int, staleBefore: Int64) throws -> Bool
    /// With its bytes in `attachment.data` when `includingData` and uploaded.
    func attachment(id: String, userID: String, includingData: Bool) throws -> StoredAttachment?
    /// Whose attachment `id` is. The one lookup no user scopes: a signed URL names no user, and
    /// its signature is checked against the owner this returns.
    func attachmentOwner(id: String) throws -> String?
    /// Stores the bytes of an attachment that has none yet; false when it has them or is gone.
    func upload(attachmentID: String, userID: String, data: [UInt8]) throws -> Bool
    /// The bytes of those of `ids` the user owns and has uploaded.
    func attachmentData(ids: [String], userID: String) throws -> [String: [UInt8]]
    func deleteAttachment(id: String, userID: String) throws -> Bool

    /// Model tokens charged to the user on `day` (`YYYY-MM-DD`, UTC), on every host.
    func tokensUsed(userID: String, day: String) throws -> Int
    func chargeTokens(userID: String, day: String, tokens: Int) throws
}

extension Store {
    public func append(_ entries: [ConversationEntry], to conversationID: Int64) throws {
        try append(entries, to: conversationID, title: nil)
    }

    /// A conversation with a new public id.
    public func createConversation(userID: String, title: String, first: [ConversationEntry] = []) throws -> Conversation {
        try createConversation(publicID: PublicID.make(.conversation), userID: userID, title: title, first: first)
    }

    /// Plain chat messages, shown to ChatKit the way their shape suggests.
    public func append(_ messages: [ChatMessage], to conversationID: Int64) throws {
        try append(messages.map { ConversationEntry($0) }, to: conversationID)
    }
}

extension Array where Element == ChatMessage {
    /// Drops leading tool results whose assistant call fell outside the window.
    func trimmedToWholeToolTurns() -> ArraySlice<ChatMessage> {
        self.drop(while: { $0.role == .tool })
    }

    /// The newest messages whose text takes at most `bytes`, never starting between a call and
    /// its result; the newest message is kept whatever its size.
    func newest(fittingIn bytes: Int) -> ArraySlice<ChatMessage> {
        var size = 0
        var start = endIndex
        while start > startIndex {
            size += self[start - 1].byteCount
            if size > bytes, start < endIndex { break }
            start -= 1
        }
        return Array(self[start...]).trimmedToWholeToolTurns()
    }
}

extension ChatMessage {
    /// What the message weighs in a request: its text and its calls' arguments.
    var byteCount: Int {
        (content?.utf8.count ?? 0) + toolCalls.reduce(0) { $0 + $1.arguments.utf8.count + $1.name.utf8.count + $1.id.utf8.count }
    }
}

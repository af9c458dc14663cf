/// Persistence for conversations, messages and tasks. Every call is scoped to a user: a row
/// owned by someone else behaves exactly like a missing one.
///
/// SQLite implements it now; PostgreSQL will implement the same protocol.
public protocol Store: AnyObject {
    func migrate() throws

    func createConversation(userID: String, title: String) throws -> Conversation
    func conversation(id: Int64, userID: String) throws -> Conversation?
    /// Appends in one transaction, so an assistant tool-call message never lands without its results.
    func append(_ messages: [ChatMessage], to conversationID: Int64) throws
    /// The newest `limit` messages, oldest first, never starting between a tool call and its result.
    func recentMessages(conversationID: Int64, limit: Int) throws -> [ChatMessage]

    func addTask(userID: String, title: String, description: String?) throws -> TodoTask
    func tasks(userID: String, filter: TaskFilter) throws -> [TodoTask]
    func completeTask(id: Int64, userID: String) throws -> TodoTask?
    func deleteTask(id: Int64, userID: String) throws -> TodoTask?
    func updateTask(id: Int64, userID: String, title: String?, description: String?) throws -> TodoTask?
}

extension Array where Element == ChatMessage {
    /// Drops leading tool results whose assistant call fell outside the window.
    func trimmedToWholeToolTurns() -> ArraySlice<ChatMessage> {
        self.drop(while: { $0.role == .tool })
    }
}

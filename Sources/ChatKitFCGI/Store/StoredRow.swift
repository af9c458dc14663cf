/// A row as a store reads it back, whichever database it came from. Both stores select the
/// columns in the orders below, flags as integers 0 or 1, so a row is decoded in one place.
protocol StoredRow {
    func integer(_ column: Int32) -> Int64
    func text(_ column: Int32) -> String?
    func bytes(_ column: Int32) -> [UInt8]?
}

extension Conversation {
    static let columns = "id, public_id, user_id, title, created_at, updated_at"

    init(row: some StoredRow) {
        self.init(id: row.integer(0), publicID: row.text(1) ?? "", userID: row.text(2) ?? "", title: row.text(3) ?? "",
                  createdAt: row.integer(4), updatedAt: row.integer(5))
    }
}

extension ConversationEntry {
    /// `awaiting` names the flag column as the store's SQL reads it as 0 or 1.
    static func columns(awaiting: String) -> String {
        "role, content, tool_calls, tool_call_id, public_id, audience, item, \(awaiting), created_at, attachments"
    }

    init(row: some StoredRow) {
        let message = ChatMessage(
            role: ChatMessage.Role(rawValue: row.text(0) ?? "") ?? .user, content: row.text(1),
            toolCalls: ToolCall.list(decoding: row.text(2)), toolCallID: row.text(3),
            attachments: Attachment.list(decoding: row.text(9)))
        self.init(
            message, itemID: row.text(4), audience: ConversationEntry.Audience(rawValue: row.text(5) ?? "") ?? .model,
            item: row.text(6).flatMap { try? JSON.parse($0) })
        awaitingResult = row.integer(7) != 0
        createdAt = row.integer(8)
    }
}

extension StoredAttachment {
    /// `uploaded` and `attached` are the SQL expressions that read each flag as 0 or 1.
    static func columns(uploaded: String, attached: String) -> String {
        "public_id, name, mime_type, size, \(uploaded), \(attached)"
    }

    init(row: some StoredRow) {
        self.init(
            attachment: Attachment(id: row.text(0) ?? "", name: row.text(1) ?? "", mimeType: row.text(2) ?? "",
                                   size: Int(row.integer(3))),
            uploaded: row.integer(4) != 0, attached: row.integer(5) != 0)
    }
}

extension TodoTask {
    /// `completed` names the flag column as the store's SQL reads it as 0 or 1.
    static func columns(completed: String) -> String { "id, title, description, \(completed), created_at" }

    init(row: some StoredRow) {
        self.init(id: row.integer(0), title: row.text(1) ?? "", description: row.text(2), completed: row.integer(3) != 0,
                  createdAt: row.integer(4))
    }
}

extension ToolCall {
    /// A message's calls as one stored text: nil for none.
    static func storedText(_ calls: [ToolCall]) -> String? {
        guard !calls.isEmpty else { return nil }
        return JSON.array(calls.map { ["id": .string($0.id), "name": .string($0.name), "arguments": .string($0.arguments)] })
            .serialized
    }

    static func list(decoding text: String?) -> [ToolCall] {
        guard let text, let calls = try? JSON.parse(text).arrayValue else { return [] }
        return calls.compactMap { call in
            guard let id = call["id"]?.stringValue, let name = call["name"]?.stringValue,
                let arguments = call["arguments"]?.stringValue
            else { return nil }
            return ToolCall(id: id, name: name, arguments: arguments)
        }
    }
}

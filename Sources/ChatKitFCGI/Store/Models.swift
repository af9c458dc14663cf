/// A function call the model asked for. `arguments` is the raw JSON text the model produced,
/// kept verbatim so history replays exactly.
public struct ToolCall: Equatable, Sendable {
    public var id: String
    public var name: String
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }
}

/// One message of a conversation, in the chat completions shape.
public struct ChatMessage: Equatable, Sendable {
    public enum Role: String, Sendable { case system, user, assistant, tool }

    public var role: Role
    public var content: String?
    public var toolCalls: [ToolCall]
    public var toolCallID: String?

    public init(role: Role, content: String?, toolCalls: [ToolCall] = [], toolCallID: String? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
    }

    public static func user(_ text: String) -> ChatMessage { ChatMessage(role: .user, content: text) }

    /// The message as the chat completions API takes it.
    public var json: JSON {
        var members: [(String, JSON)] = [("role", .string(role.rawValue))]
        members.append(("content", JSON(content)))
        if !toolCalls.isEmpty {
            members.append(("tool_calls", .array(toolCalls.map { call in
                ["id": .string(call.id), "type": "function",
                 "function": ["name": .string(call.name), "arguments": .string(call.arguments)]]
            })))
        }
        if let toolCallID { members.append(("tool_call_id", .string(toolCallID))) }
        return .object(members)
    }
}

public struct Conversation: Equatable, Sendable {
    public let id: Int64
    public let userID: String
    public var title: String
    public let createdAt: Int64
    public var updatedAt: Int64
}

public struct TodoTask: Equatable, Sendable {
    public let id: Int64
    public var title: String
    public var description: String?
    public var completed: Bool
    public let createdAt: Int64

    public var json: JSON {
        ["id": .int(Int(id)), "title": .string(title), "description": JSON(description),
         "completed": .bool(completed), "created_at": .string(Clock.iso8601(unixMilliseconds: createdAt))]
    }
}

public enum TaskFilter: String, Sendable, CaseIterable {
    case all, pending, completed
}

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
    /// Files the user sent with the message; their bytes are loaded only to go to the model.
    public var attachments: [Attachment]

    public init(role: Role, content: String?, toolCalls: [ToolCall] = [], toolCallID: String? = nil,
                attachments: [Attachment] = []) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
        self.attachments = attachments
    }

    public static func user(_ text: String, attachments: [Attachment] = []) -> ChatMessage {
        ChatMessage(role: .user, content: text, attachments: attachments)
    }

    /// The message as the chat completions API takes it: with attachments, its content is a
    /// list of parts, the text first.
    public var json: JSON {
        var members: [(String, JSON)] = [("role", .string(role.rawValue))]
        if attachments.isEmpty {
            members.append(("content", JSON(content)))
        } else {
            let text: [JSON] = (content ?? "").isEmpty ? [] : [["type": "text", "text": .string(content ?? "")]]
            members.append(("content", .array(text + attachments.map(\.modelPart))))
        }
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

/// A stored row of a conversation: a chat message, plus how ChatKit shows it.
public struct ConversationEntry: Equatable, Sendable {
    /// Who the row is for: tool traffic and hidden notes are for the model only; workflow rows
    /// (tool runs shown in the UI) only for ChatKit.
    public enum Audience: String, Sendable { case everyone, model, client }

    public var message: ChatMessage
    /// The entry's public id (`msg_…`, `wf_…`, `tc_…`, `shcx_…`: ChatKit's item ids).
    public var itemID: String
    public var audience: Audience
    /// The item body a face shows, for rows a plain message cannot describe (workflows, client
    /// tool calls, user input with tags). Without one the item is built from `message`.
    public var item: JSON?
    /// Waiting for a result only the client can give (a client tool call it has yet to answer).
    public var awaitingResult = false
    /// Unix milliseconds. Stored as given, so a client shown the row before it was stored sees
    /// the same time afterwards; 0 stores the time of the write. Filled in when read back.
    public var createdAt: Int64 = 0

    public init(_ message: ChatMessage, itemID: String? = nil, audience: Audience? = nil, item: JSON? = nil) {
        self.message = message
        self.itemID = itemID ?? PublicID.make(.message)
        self.audience = audience ?? Self.defaultAudience(of: message)
        self.item = item
    }

    private static func defaultAudience(of message: ChatMessage) -> Audience {
        switch message.role {
        case .user: .everyone
        case .assistant where !(message.content ?? "").isEmpty: .everyone
        default: .model
        }
    }
}

/// Ids in the official ChatKit server's shape: a type prefix, `_`, hex digits. Here the
/// milliseconds since 1970 (12 digits) then 64 random bits (16 digits): unique across every
/// user's rows, and ordered by time, so each new id lands at the end of its unique index
/// instead of on a random page (fewer pages read and written per commit).
public enum PublicID {
    /// What an id names; the prefixes are ChatKit's.
    public enum Kind: String, Sendable {
        case conversation = "thr"
        case message = "msg"
        case workflow = "wf"
        case clientToolCall = "tc"
        case hiddenNote = "shcx"
        case attachment = "atc"
    }

    public static func make(_ kind: Kind) -> String {
        let prefix = kind.rawValue
        let milliseconds = UInt64(Clock.unixMilliseconds())
        // The system generator (getrandom) is a CSPRNG too, at a fraction of OpenSSL's RAND_bytes.
        var generator = SystemRandomNumberGenerator()
        let random: UInt64 = generator.next()
        let digits = String(unsafeUninitializedCapacity: 28) { text in
            for index in 0..<12 { text[index] = hexDigit(milliseconds >> UInt64(44 - 4 * index)) }
            for index in 0..<16 { text[12 + index] = hexDigit(random >> UInt64(60 - 4 * index)) }
            return 28
        }
        return prefix + "_" + digits
    }

    private static func hexDigit(_ value: UInt64) -> UInt8 {
        let nibble = UInt8(truncatingIfNeeded: value & 0xF)
        return nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }
}

/// A file a user sent: an image, a PDF or a text file (`AttachmentRules` says which types).
/// The store keeps its bytes in a table of their own; a message carries only this description,
/// and the bytes when they are loaded to go to the model or the browser.
public struct Attachment: Equatable, Sendable {
    /// ChatKit's attachment id (`atc_…`).
    public let id: String
    public var name: String
    /// A media type without parameters, lowercased.
    public var mimeType: String
    public var size: Int
    public var data: [UInt8]?

    public init(id: String = PublicID.make(.attachment), name: String, mimeType: String, size: Int, data: [UInt8]? = nil) {
        self.id = id
        self.name = name
        self.mimeType = mimeType
        self.size = size
        self.data = data
    }
}

/// An attachment as its owner's store row has it.
public struct StoredAttachment: Equatable, Sendable {
    public var attachment: Attachment
    /// Its bytes have arrived.
    public var uploaded: Bool
    /// It is part of a message.
    public var attached: Bool
}

public struct Conversation: Equatable, Sendable {
    public let id: Int64
    /// The ChatKit thread id (`thr_…`).
    public let publicID: String
    public let userID: String
    /// Empty while untitled.
    public var title: String
    public let createdAt: Int64
    public var updatedAt: Int64
}

/// One page of a listing, ChatKit style: `after` is the id to continue from.
public struct Page<Element> {
    public var data: [Element]
    public var hasMore: Bool
}

public enum SortOrder: String, Sendable { case asc, desc }

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

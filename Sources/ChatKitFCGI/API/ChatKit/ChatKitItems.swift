/// Stored rows ↔ ChatKit's JSON shapes (`Thread`, thread items, `Page`), as the official
/// `openai-chatkit` server writes them: nulls omitted, required empties present, thread
/// metadata never sent.
enum ChatKitItems {
    /// UTC with milliseconds and `Z`.
    static func timestamp(_ unixMilliseconds: Int64) -> JSON { .string(Clock.iso8601(unixMilliseconds: unixMilliseconds)) }

    /// The item ChatKit shows for a row, or nil for rows only the model sees. A user message's
    /// attachments come from the message itself, each image with a fresh preview URL from `links`.
    static func item(_ entry: ConversationEntry, threadID: String, links: AttachmentLinks? = nil) -> JSON? {
        guard entry.audience != .model else { return nil }
        let identity: [(String, JSON)] = [
            ("id", .string(entry.itemID)), ("thread_id", .string(threadID)), ("created_at", timestamp(entry.createdAt)),
        ]
        let attachments = entry.message.attachments
        func withAttachments(_ body: [(String, JSON)]) -> [(String, JSON)] {
            guard !attachments.isEmpty else { return body }
            let list = JSON.array(attachments.map { attachment($0, links: links, threadID: threadID) })
            return body.map { $0.0 == "attachments" ? ("attachments", list) : $0 }
        }
        if let body = entry.item?.objectValue { return .object(identity + withAttachments(body)) }
        switch entry.message.role {
        case .user:
            return .object(identity + withAttachments(userMessageBody(text: entry.message.content ?? "")))
        case .assistant:
            return .object(identity + assistantMessageBody(text: entry.message.content ?? ""))
        case .system, .tool:
            return nil
        }
    }

    static func userMessageBody(text: String) -> [(String, JSON)] {
        [("type", "user_message"), ("content", [["type": "input_text", "text": .string(text)]]),
         ("attachments", []), ("inference_options", [:])]
    }

    static func assistantMessageBody(text: String) -> [(String, JSON)] {
        [("type", "assistant_message"), ("content", [outputText(text)])]
    }

    static func outputText(_ text: String) -> JSON {
        ["type": "output_text", "text": .string(text), "annotations": []]
    }

    /// An `ImageAttachment` or `FileAttachment`. `awaitingUpload`: with the signed URL its bytes
    /// go to; `threadID`: once part of a message.
    static func attachment(_ attachment: Attachment, links: AttachmentLinks?, awaitingUpload: Bool = false,
                           threadID: String? = nil) -> JSON {
        var members: [(String, JSON)] = [
            ("type", attachment.kind == .image ? "image" : "file"), ("id", .string(attachment.id)),
            ("name", .string(attachment.name)), ("mime_type", .string(attachment.mimeType)),
        ]
        if attachment.kind == .image, let links { members.append(("preview_url", .string(links.url(attachment.id, .preview)))) }
        if awaitingUpload, let links {
            members.append(("upload_descriptor", ["url": .string(links.url(attachment.id, .upload)), "method": "PUT", "headers": [:]]))
        }
        if let threadID { members.append(("thread_id", .string(threadID))) }
        return .object(members)
    }

    static func thread(_ conversation: Conversation, items: JSON = emptyPage) -> JSON {
        var members: [(String, JSON)] = []
        if !conversation.title.isEmpty { members.append(("title", .string(conversation.title))) }
        members += [
            ("id", .string(conversation.publicID)), ("created_at", timestamp(conversation.createdAt)),
            ("status", ["type": "active"]), ("metadata", [:]), ("items", items),
        ]
        return .object(members)
    }

    static let emptyPage: JSON = ["data": [], "has_more": false]

    /// `after` names the last element, and only when there is more to fetch.
    static func page(_ data: [JSON], hasMore: Bool) -> JSON {
        var members: [(String, JSON)] = [("data", .array(data)), ("has_more", .bool(hasMore))]
        if hasMore, let last = data.last?["id"] { members.append(("after", last)) }
        return .object(members)
    }
}

/// The `input` of `threads.create` and `threads.add_user_message`.
public struct UserInput {
    /// What the model reads: text parts and tag labels, in order.
    public let text: String
    /// The stored item body, as the client sent it.
    let itemBody: [(String, JSON)]
    /// The ids in `attachments`, in order.
    public let attachmentIDs: [String]

    public init(_ input: JSON?) throws(APIError) {
        guard let input, case .object = input, let parts = input["content"]?.arrayValue else {
            throw .invalidBody("params.input.content must be a list of input_text or input_tag parts")
        }
        var text = ""
        var content: [JSON] = []
        for part in parts {
            switch part["type"]?.stringValue {
            case "input_text":
                guard let piece = part["text"]?.stringValue else { throw .invalidBody("input_text needs a text string") }
                text += piece
                content.append(["type": "input_text", "text": .string(piece)])
            case "input_tag":
                guard let id = part["id"]?.stringValue, let label = part["text"]?.stringValue else {
                    throw .invalidBody("input_tag needs id and text strings")
                }
                text += label
                var tag: [(String, JSON)] = [("type", "input_tag"), ("id", .string(id)), ("text", .string(label)),
                                             ("data", part["data"]?.objectValue.map(JSON.object) ?? [:])]
                if let group = part["group"]?.stringValue { tag.append(("group", .string(group))) }
                tag.append(("interactive", .bool(part["interactive"]?.boolValue ?? false)))
                content.append(.object(tag))
            default:
                throw .invalidBody("input content parts must be input_text or input_tag")
            }
        }
        switch input["attachments"] {
        case nil, .null?: attachmentIDs = []
        case .array(let ids)? where ids.allSatisfy({ $0.stringValue?.isEmpty == false }): attachmentIDs = ids.compactMap(\.stringValue)
        default: throw .invalidBody("input.attachments must be a list of attachment ids")
        }
        guard !text.trimmed().isEmpty || !attachmentIDs.isEmpty else { throw .invalidBody("the message has no text") }
        var body: [(String, JSON)] = [("type", "user_message"), ("content", .array(content)), ("attachments", [])]
        switch input["quoted_text"] {
        case nil, .null?: break
        case .string(let quoted)?:
            body.append(("quoted_text", .string(quoted)))
            text = "> \(quoted)\n\n\(text)"
        default: throw .invalidBody("input.quoted_text must be a string")
        }
        body.append(("inference_options", try Self.inferenceOptions(input["inference_options"])))
        self.text = text
        itemBody = body
    }

    /// Stored and echoed with the item, so it must have the SDK's shape, `{tool_choice: {id},
    /// model}`, or every later read of the thread would fail the client's validation. Unknown
    /// members are dropped and nulls omitted, as the SDK's models do.
    private static func inferenceOptions(_ options: JSON?) throws(APIError) -> JSON {
        guard let options, options != .null else { return [:] }
        guard case .object = options else { throw .invalidBody("input.inference_options must be an object") }
        var kept: [(String, JSON)] = []
        switch options["tool_choice"] {
        case nil, .null?: break
        case let choice? where choice.objectValue != nil:
            guard let id = choice["id"]?.stringValue else { throw .invalidBody("inference_options.tool_choice.id must be a string") }
            kept.append(("tool_choice", ["id": .string(id)]))
        default: throw .invalidBody("inference_options.tool_choice must be an object with an id")
        }
        switch options["model"] {
        case nil, .null?: break
        case .string(let model)?: kept.append(("model", .string(model)))
        default: throw .invalidBody("inference_options.model must be a string")
        }
        return .object(kept)
    }
}

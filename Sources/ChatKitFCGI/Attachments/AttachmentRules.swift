/// What this server takes as an attachment, and how each kind reaches the model. Every face
/// that accepts files (ChatKit uploads, `/api/chat` parts) checks them here.
public struct AttachmentRules: Sendable {
    /// How a type reaches the model: images and PDFs as data URLs, text as text.
    public enum Kind: Sendable { case image, pdf, text }

    /// Images a browser shows and the model reads. SVG is not one: it can carry script.
    public static let imageTypes = ["image/png", "image/jpeg", "image/gif", "image/webp"]
    public static let defaultTypes = imageTypes + ["application/pdf", "text/plain"]

    public var maxBytes = 10 << 20
    /// Media types, lowercased, without parameters; each has a `kind`.
    public var allowedTypes = AttachmentRules.defaultTypes
    public var perMessage = 10
    /// What one user's attachments may take together.
    public var userMaxBytes = 100 << 20
    /// Replayed earlier attachments' bytes, beyond the newest message's own.
    public var historyBytes = 20 << 20
    /// Attachments never sent with a message are removed after this long.
    public var unattachedSeconds = 86_400

    public init() {}

    public static func kind(of mediaType: String) -> Kind? {
        if imageTypes.contains(mediaType) { return .image }
        if mediaType == "application/pdf" { return .pdf }
        if mediaType.hasPrefix("text/"), mediaType.count > 5 { return .text }
        return nil
    }

    /// A declared type as it is stored: parameters dropped, lowercased; nil unless allowed.
    public func allowedType(_ declared: String) -> String? {
        let mediaType = declared.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first
            .map { $0.trimmed().lowercased() } ?? ""
        return allowedTypes.contains(mediaType) ? mediaType : nil
    }

    /// Checks a declared attachment, as `attachments.create` or an upload describes it.
    public func check(name: String, size: Int, mimeType: String) throws(APIError) -> (name: String, mimeType: String) {
        guard Self.isPlainFileName(name) else {
            throw .badRequest("the file name must be 1 to 255 bytes, without path separators or control characters")
        }
        guard size > 0 else { throw .badRequest("the file is empty") }
        guard size <= maxBytes else { throw .payloadTooLarge(limit: maxBytes) }
        guard let mediaType = allowedType(mimeType) else {
            throw .badRequest("files of type \(mimeType) are not accepted; allowed: \(allowedTypes.joined(separator: ", "))")
        }
        return (name, mediaType)
    }

    /// How many attachments one message may carry.
    public func check(count: Int) throws(APIError) {
        guard count <= perMessage else { throw .badRequest("a message may carry at most \(perMessage) attachments") }
    }

    /// A name shown back to the user and sent to the model, never a path.
    static func isPlainFileName(_ name: String) -> Bool {
        guard (1...255).contains(name.utf8.count), name != ".", name != ".." else { return false }
        return name.unicodeScalars.allSatisfy { scalar in
            scalar != "/" && scalar != "\\" && !(scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value))
        }
    }

    /// Whether the bytes are what the type says: images and PDFs by their first bytes (a browser
    /// must never be handed a page as an image), text by being UTF-8 (it reaches the model as text).
    public static func content(_ bytes: [UInt8], matches mediaType: String) -> Bool {
        func starts(_ prefix: String, at offset: Int = 0) -> Bool {
            bytes.count >= offset + prefix.utf8.count && bytes[offset...].starts(with: prefix.utf8)
        }
        switch mediaType {
        case "image/png": return bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        case "image/jpeg": return bytes.starts(with: [0xFF, 0xD8, 0xFF])
        case "image/gif": return starts("GIF87a") || starts("GIF89a")
        case "image/webp": return starts("RIFF") && starts("WEBP", at: 8)
        case "application/pdf": return starts("%PDF-")
        default: return kind(of: mediaType) == .text && String(validating: bytes, as: UTF8.self) != nil
        }
    }
}

extension Attachment {
    public var kind: AttachmentRules.Kind { AttachmentRules.kind(of: mimeType) ?? .text }

    /// The chat completions content part that carries the file. Without its bytes (left out of
    /// the history budget, or deleted since) the model is told a file was here.
    var modelPart: JSON {
        guard let data else {
            return ["type": "text", "text": .string("[The user attached \(name) (\(mimeType)) here; it is not included now.]")]
        }
        switch kind {
        case .image:
            return ["type": "image_url", "image_url": ["url": .string(dataURL(data))]]
        case .pdf:
            return ["type": "file", "file": ["filename": .string(name), "file_data": .string(dataURL(data))]]
        case .text:
            return ["type": "text", "text": .string(Self.textPartHeader(name: name, mimeType: mimeType) + String(decoding: data, as: UTF8.self))]
        }
    }

    /// Opens a text file's part, so the model (and a reader of the request) knows its name:
    /// `[Attached file NAME (TYPE)]` and a line end.
    public static let textPartPrefix = "[Attached file "

    static func textPartHeader(name: String, mimeType: String) -> String { "\(textPartPrefix)\(name) (\(mimeType))]\n" }

    func dataURL(_ bytes: [UInt8]) -> String { "data:\(mimeType);base64,\(Base64.encode(bytes))" }

    /// How a message row keeps its attachments: what describes them, not their bytes.
    static func storedText(_ attachments: [Attachment]) -> String? {
        guard !attachments.isEmpty else { return nil }
        return JSON.array(attachments.map {
            ["id": .string($0.id), "name": .string($0.name), "mime_type": .string($0.mimeType), "size": .int($0.size)]
        }).serialized
    }

    static func list(decoding text: String?) -> [Attachment] {
        guard let text, let list = try? JSON.parse(text).arrayValue else { return [] }
        return list.compactMap { entry in
            guard let id = entry["id"]?.stringValue, let name = entry["name"]?.stringValue,
                let mimeType = entry["mime_type"]?.stringValue, case .int(let size)? = entry["size"]
            else { return nil }
            return Attachment(id: id, name: name, mimeType: mimeType, size: size)
        }
    }
}

extension Array where Element == ChatMessage {
    /// The ids of the attachments whose bytes go to the model: all of the newest user message's,
    /// then earlier ones, newest first, while they fit in `bytes`.
    func attachmentsToSend(fittingIn bytes: Int) -> [String] {
        guard let newest = lastIndex(where: { $0.role == .user }) else { return [] }
        var chosen = self[newest].attachments.map(\.id)
        var earlierBytes = 0
        for message in self[..<newest].reversed() {
            for attachment in message.attachments {
                earlierBytes += attachment.size
                guard earlierBytes <= bytes else { return chosen }
                chosen.append(attachment.id)
            }
        }
        return chosen
    }
}

/// A file as a request brought it: a form's file field, a raw upload, a data URL.
public struct UploadedFile: Equatable {
    public var name: String
    public var mimeType: String
    public var bytes: [UInt8]

    public init(name: String, mimeType: String, bytes: [UInt8]) {
        self.name = name
        self.mimeType = mimeType
        self.bytes = bytes
    }

    /// A form's `file` field, which must name its file.
    init(form: MultipartForm) throws(APIError) {
        guard let field = form.field("file") else { throw .badRequest("the form has no file field") }
        guard let name = field.filename else { throw .badRequest("the file field has no filename") }
        self.init(name: name, mimeType: field.contentType ?? "application/octet-stream", bytes: Array(field.bytes))
    }
}

/// One user's attachments, whichever request handles them: ChatKit's `attachments.*`, the
/// upload URLs, a message that carries them, `/api/chat` parts. Every check is made here.
struct UserAttachments {
    let store: any Store
    let user: String
    /// The limits it applies, not the whole `Config`, which would be copied with every value of this.
    let rules: AttachmentRules
    let links: AttachmentLinks

    /// `attachments.create`: the attachment, its bytes to come to its signed upload URL.
    func create(name: String, size: Int, mimeType: String) throws -> JSON {
        let checked = try rules.check(name: name, size: size, mimeType: mimeType)
        let attachment = Attachment(name: checked.name, mimeType: checked.mimeType, size: size)
        try register(attachment)
        return ChatKitItems.attachment(attachment, links: links, awaitingUpload: true)
    }

    /// A direct upload, or a file in `/api/chat`, checked: `register` stores it with its bytes.
    func checked(_ file: UploadedFile) throws -> Attachment {
        let checked = try rules.check(name: file.name, size: file.bytes.count, mimeType: file.mimeType)
        try checkContent(file.bytes, mimeType: checked.mimeType)
        return Attachment(name: checked.name, mimeType: checked.mimeType, size: file.bytes.count, data: file.bytes)
    }

    /// Stores checked attachments, then runs `body` (which stores the message that carries
    /// them); if either fails, the attachments stored are removed again.
    func registering<T>(_ attachments: [Attachment], _ body: () throws -> T) throws -> T {
        var stored: [Attachment] = []
        do {
            for attachment in attachments {
                try register(attachment)
                stored.append(attachment)
            }
            return try body()
        } catch {
            for attachment in stored { _ = try? store.deleteAttachment(id: attachment.id, userID: user) }
            throw error
        }
    }

    func register(_ attachment: Attachment) throws {
        let staleBefore = Clock.unixMilliseconds() - Int64(rules.unattachedSeconds) * 1000
        guard try store.createAttachment(attachment, userID: user, userMaxBytes: rules.userMaxBytes, staleBefore: staleBefore) else {
            throw APIError.forbidden("your attachments would take more than \(rules.userMaxBytes) bytes; delete some first")
        }
    }

    /// The bytes for an attachment registered with `create`: exactly as many as declared, of
    /// the declared type, once.
    func receive(_ bytes: [UInt8], for id: String) throws -> JSON {
        guard let found = try store.attachment(id: id, userID: user, includingData: false) else {
            throw APIError.notFound("attachment not found")
        }
        guard !found.uploaded else { throw APIError.conflict("this attachment was uploaded already") }
        let declared = found.attachment
        guard bytes.count == declared.size else {
            throw APIError.badRequest("the attachment was declared as \(declared.size) bytes, but \(bytes.count) arrived")
        }
        try checkContent(bytes, mimeType: declared.mimeType)
        guard try store.upload(attachmentID: id, userID: user, data: bytes) else {
            throw APIError.conflict("this attachment was uploaded already")
        }
        return ChatKitItems.attachment(declared, links: links, awaitingUpload: false)
    }

    private func checkContent(_ bytes: [UInt8], mimeType: String) throws {
        guard AttachmentRules.content(bytes, matches: mimeType) else {
            throw APIError.badRequest(AttachmentRules.kind(of: mimeType) == .text
                ? "the file is not UTF-8 text" : "the file's bytes are not \(mimeType)")
        }
    }

    func delete(_ id: String) throws {
        guard try store.deleteAttachment(id: id, userID: user) else { throw APIError.notFound("attachment not found") }
    }

    /// A message's `attachments`: the user's own, uploaded, and in no other message yet.
    func forMessage(_ ids: [String]) throws -> [Attachment] {
        try rules.check(count: ids.count)
        guard Set(ids).count == ids.count else { throw APIError.badRequest("an attachment is listed twice") }
        return try ids.map { id in
            guard let found = try store.attachment(id: id, userID: user, includingData: false) else {
                throw APIError.notFound("attachment \(id) not found")
            }
            guard found.uploaded else { throw APIError.badRequest("attachment \(id) has not been uploaded yet") }
            guard !found.attached else { throw APIError.badRequest("attachment \(id) is part of another message already") }
            return found.attachment
        }
    }

    /// The history the model reads, with the bytes of the attachments it is sent (all of the
    /// newest message's, then earlier ones within `CHATKIT_HISTORY_ATTACHMENT_BYTES`).
    func loadingData(into history: [ChatMessage]) throws -> [ChatMessage] {
        let ids = history.attachmentsToSend(fittingIn: rules.historyBytes)
        guard !ids.isEmpty else { return history }
        let data = try store.attachmentData(ids: ids, userID: user)
        return history.map { message in
            guard !message.attachments.isEmpty else { return message }
            var loaded = message
            for index in loaded.attachments.indices { loaded.attachments[index].data = data[loaded.attachments[index].id] }
            return loaded
        }
    }
}

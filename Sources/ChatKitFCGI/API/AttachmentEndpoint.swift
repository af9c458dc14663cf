/// `/api/chatkit/attachments…`: where attachments' bytes come and go.
/// - `POST /api/chatkit/attachments`: ChatKit's direct upload (`uploadStrategy: {type: "direct"}`),
///   a form with a `file` field, with the app's token like every other call.
/// - `PUT|POST …/{id}/upload?expires=…&signature=…`: the two-phase upload's URL, raw bytes or a
///   form; the signed URL is the credential.
/// - `GET …/{id}/preview?expires=…&signature=…`: an image for an `<img>`, signed the same way.
struct AttachmentEndpoint: Endpoint {
    enum Route: Equatable {
        case direct
        case upload(id: String)
        case preview(id: String)

        init?(path: String) {
            let suffix = path.dropFirst(AttachmentLinks.path.count)
            let rest = suffix.split(separator: "/", omittingEmptySubsequences: false)
            switch rest.count {
            case 1 where suffix.isEmpty: self = .direct
            case 3 where rest[0].isEmpty && !rest[1].isEmpty && rest[2] == "upload": self = .upload(id: String(rest[1]))
            case 3 where rest[0].isEmpty && !rest[1].isEmpty && rest[2] == "preview": self = .preview(id: String(rest[1]))
            default: return nil
            }
        }
    }

    let worker: Worker
    let route: Route

    var face: String { "attachments" }

    var allowedMethods: [String] {
        switch route {
        case .direct: ["POST"]
        case .upload: ["PUT", "POST"]
        case .preview: ["GET"]
        }
    }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) async throws {
        switch route {
        case .direct:
            let user = try worker.admit(request, writer: writer)
            let attachments = try userAttachments(request, user: user)
            guard let form = MultipartForm(body: request.body, contentType: request.contentType) else {
                throw APIError.badRequest("send the file as multipart/form-data with a file field")
            }
            let stored = try attachments.checked(try UploadedFile(form: form))
            try attachments.register(stored)
            writer.writeJSON(status: 200, ChatKitItems.attachment(stored, links: attachments.links))
        case .upload(let id):
            let user = try signedUser(request, attachmentID: id, purpose: .upload)
            try worker.admit(user: user, writer: writer)
            // A form's file, or the body itself; what the form says of the file was declared already.
            let bytes = MultipartForm(body: request.body, contentType: request.contentType).map { form in
                form.field("file").map { Array($0.bytes) }
            } ?? request.body
            guard let bytes else { throw APIError.badRequest("the form has no file field") }
            writer.writeJSON(status: 200, try userAttachments(request, user: user).receive(bytes, for: id))
        case .preview(let id):
            let user = try signedUser(request, attachmentID: id, purpose: .preview)
            guard let found = try worker.store().attachment(id: id, userID: user, includingData: true),
                found.attachment.kind == .image, let data = found.attachment.data
            else { throw APIError.notFound("no image to preview") }
            // Types are checked against the bytes on upload; nosniff keeps browsers to them.
            writer.writeHead(status: 200, headers: [
                ("Content-Type", found.attachment.mimeType), ("Cache-Control", "private, max-age=\(worker.app.config.attachmentURLSeconds)"),
                ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "default-src 'none'"),
                ("X-Accel-Buffering", "yes"),
            ])
            _ = writer.write(data)
        }
    }

    private func userAttachments(_ request: HTTPRequest, user: String) throws -> UserAttachments {
        UserAttachments(store: try worker.store(), user: user, rules: worker.app.config.attachments,
                        links: worker.attachmentLinks(for: request, user: user))
    }

    /// The owner of the attachment a signed URL names, when its signature is theirs, for this
    /// purpose, and unexpired. One answer for every failure, so a URL tells nothing about others'.
    private func signedUser(_ request: HTTPRequest, attachmentID: String, purpose: URLSigner.Purpose) throws -> String {
        guard let expires = request.queryParameter("expires").flatMap({ Int64($0) }),
            let signature = request.queryParameter("signature"),
            let owner = try worker.store().attachmentOwner(id: attachmentID),
            worker.app.urlSigner.isValid(signature, attachmentID: attachmentID, user: owner, purpose: purpose, expires: expires)
        else { throw APIError.forbidden("this link is not valid, or has expired") }
        return owner
    }
}

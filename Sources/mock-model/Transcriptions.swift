import ChatKitFCGI

/// `POST /v1/audio/transcriptions`: a multipart form with `file` and `model`, as OpenAI's
/// endpoint takes it. The answer is deterministic and says what arrived, so a test sees that
/// the bytes came through intact: `heard N bytes of TYPE in NAME`; the request log keeps the
/// file itself (base64url). A file whose bytes are `fail STATUS` gets that status instead.
struct Transcriptions: Sendable {
    let config: Config
    let state: MockState

    func handle(_ request: HTTPRequest) -> HTTPResponse {
        func invalid(_ message: String) -> HTTPResponse { .error(400, message: message + " (mock)", type: "invalid_request_error") }
        if let key = config.apiKey, request.header("authorization") != "Bearer \(key)" {
            return .error(401, message: "Incorrect API key provided (mock)", type: "invalid_request_error", code: "invalid_api_key")
        }
        guard MultipartForm.boundary(of: request.header("content-type")) != nil else {
            return invalid("Content-Type must be multipart/form-data with a boundary")
        }
        guard let form = MultipartForm(body: request.body, contentType: request.header("content-type")) else {
            return invalid("malformed multipart body")
        }
        guard let file = form.field("file"), let filename = file.filename else {
            return invalid("'file' is required, with a filename")
        }
        guard let model = form.field("model").map({ String(decoding: $0.bytes, as: UTF8.self) }),
            !model.isEmpty
        else { return invalid("'model' is required") }
        let contentType = file.contentType ?? "application/octet-stream"
        _ = state.logRequest([
            "endpoint": "audio/transcriptions", "model": .string(model), "filename": .string(filename),
            "content_type": .string(contentType), "file": .string(Base64URL.encode(file.bytes)),
        ])
        let text = String(decoding: file.bytes, as: UTF8.self)
        if text.hasPrefix("fail "), let status = Int(text.dropFirst(5)), (400...599).contains(status) {
            return .error(status, message: "transcription failed as asked (mock)", type: status < 500 ? "invalid_request_error" : "server_error")
        }
        return .json(200, ["text": .string("heard \(file.bytes.count) bytes of \(contentType) in \(filename)")])
    }
}

import ChatKitFCGI

/// `POST /v1/audio/transcriptions`: a multipart form with `file` and `model`, as OpenAI's
/// endpoint takes it. The answer is deterministic and says what arrived, so a test sees that
/// the bytes came through intact: `heard N bytes of TYPE in NAME`; the request log keeps the
/// file itself (base64url). A file whose bytes are `fail STATUS` gets that status instead.
struct Transcriptions: Sendable {
    let config: Config
    let state: MockState

    struct Field {
        var name = ""
        var filename: String?
        var contentType: String?
        var bytes: ArraySlice<UInt8> = []
    }

    func handle(_ request: HTTPRequest) -> HTTPResponse {
        func invalid(_ message: String) -> HTTPResponse { .error(400, message: message + " (mock)", type: "invalid_request_error") }
        if let key = config.apiKey, request.header("authorization") != "Bearer \(key)" {
            return .error(401, message: "Incorrect API key provided (mock)", type: "invalid_request_error", code: "invalid_api_key")
        }
        guard let boundary = Self.boundary(of: request.header("content-type")) else {
            return invalid("Content-Type must be multipart/form-data with a boundary")
        }
        guard let fields = Self.fields(of: request.body, boundary: boundary) else { return invalid("malformed multipart body") }
        guard let file = fields.first(where: { $0.name == "file" }), let filename = file.filename else {
            return invalid("'file' is required, with a filename")
        }
        guard let model = fields.first(where: { $0.name == "model" }).map({ String(decoding: $0.bytes, as: UTF8.self) }),
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

    /// `multipart/form-data; boundary=…` (the boundary may be quoted).
    static func boundary(of contentType: String?) -> String? {
        guard let contentType, contentType.lowercased().hasPrefix("multipart/form-data"),
            let boundary = parameter("boundary", in: contentType), !boundary.isEmpty
        else { return nil }
        return boundary
    }

    /// The parts between `--boundary` lines (RFC 7578); nil when the body is not so framed.
    static func fields(of body: [UInt8], boundary: String) -> [Field]? {
        let delimiter = Array("--\(boundary)".utf8)
        let crlf = Array("\r\n".utf8)
        guard var position = find(delimiter, in: body, from: 0) else { return nil }
        var fields: [Field] = []
        while true {
            position += delimiter.count
            if body[position...].starts(with: "--".utf8) { return fields }
            guard body[position...].starts(with: crlf), let headEnd = find(crlf + crlf, in: body, from: position) else { return nil }
            var field = Field()
            for line in body[(position + 2)..<headEnd].split(separator: UInt8(ascii: "\n")) {
                let text = String(decoding: line, as: UTF8.self).trimmingWhitespace()
                let lower = text.lowercased()
                if lower.hasPrefix("content-disposition:") {
                    field.name = parameter("name", in: text) ?? ""
                    field.filename = parameter("filename", in: text)
                } else if lower.hasPrefix("content-type:") {
                    field.contentType = String(text.dropFirst("content-type:".count)).trimmingWhitespace()
                }
            }
            let start = headEnd + 4
            guard let end = find(crlf + delimiter, in: body, from: start) else { return nil }
            field.bytes = body[start..<end]
            fields.append(field)
            position = end + 2
        }
    }

    /// `name="value"` (or unquoted) after the first `;` of a header value.
    private static func parameter(_ name: String, in line: String) -> String? {
        for piece in line.split(separator: ";").dropFirst() {
            let pair = piece.split(separator: "=", maxSplits: 1).map { String($0).trimmingWhitespace() }
            guard pair.count == 2, pair[0].lowercased() == name else { continue }
            let value = pair[1]
            return value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 ? String(value.dropFirst().dropLast()) : value
        }
        return nil
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var index = start
        while index <= haystack.count - needle.count {
            if haystack[index] == first, haystack[index..<(index + needle.count)].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }
}

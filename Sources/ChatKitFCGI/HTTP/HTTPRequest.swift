/// A request as the core sees it, independent of FastCGI.
public struct HTTPRequest: Sendable {
    public var method: String
    /// Decoded path without the query string.
    public var path: String
    /// The raw query string, without `?` (signed attachment URLs carry their signature in it).
    public var query = ""
    /// `http` or `https`, as nginx saw the request.
    public var scheme = "http"
    public var contentType: String?
    /// Lower-cased names with `-` as separator (`authorization`, `x-request-id`).
    public var headers: [String: String]
    public var body: [UInt8]
    /// Names this request in the response (`X-Request-Id`) and the log line.
    public var requestID = ""

    public init(method: String, path: String, contentType: String? = nil,
                headers: [String: String] = [:], body: [UInt8] = []) {
        self.method = method
        self.path = path
        self.contentType = contentType
        self.headers = headers
        self.body = body
    }

    /// The `Content-Type` without parameters such as charset, lowercased.
    public var mediaType: String? {
        contentType?.split(separator: ";", maxSplits: 1).first.map { $0.trimmed().lowercased() }
    }

    public var hasJSONBody: Bool { mediaType == "application/json" }

    /// The first value of a query parameter, percent-decoded; nil when absent or badly encoded.
    public func queryParameter(_ name: String) -> String? {
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard Self.percentDecoded(parts[0]) == name else { continue }
            return parts.count == 2 ? Self.percentDecoded(parts[1]) : ""
        }
        return nil
    }

    /// `+` is a space, as forms encode it; `%XX` a byte; the result must be UTF-8.
    static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"): bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(Hex.value(of:)), let low = iterator.next().flatMap(Hex.value(of:)) else {
                    return nil
                }
                bytes.append(high << 4 | low)
            default: bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

extension HTTPRequest {
    /// Where the client reached us, for URLs we hand out; `CHATKIT_PUBLIC_URL` overrides it.
    public var origin: String { "\(scheme)://\(headers["host"] ?? "localhost")" }
}

/// Where a handler writes its answer. The FastCGI edge implements it; tests record it.
public protocol ResponseWriter: AnyObject {
    var headWritten: Bool { get }
    /// Headers that go on whatever answer follows (the user's rate-limit standing).
    var extraHeaders: [(String, String)] { get set }
    /// Writes the status line and headers; they leave with the first flush.
    func writeHead(status: Int, headers: [(String, String)])
    /// Writes and flushes. False means the client has gone away.
    func write(_ bytes: [UInt8]) -> Bool
    /// Polled while waiting on the model, to notice a vanished client quickly.
    var clientDescriptor: Int32? { get }
    /// Whether a write now cannot block: the transfer loop writes every stream's records from
    /// one thread, and must never wait for one slow reader.
    var hasRoom: Bool { get }
}

extension ResponseWriter {
    /// A whole JSON answer; `nil` writes the head alone (202, 204). nginx takes it all at once,
    /// however slowly its client reads (`X-Accel-Buffering: yes`, which it keeps to itself), so a
    /// worker thread never waits on a reader; event streams say no, so each record leaves as it
    /// is written.
    func writeJSON(status: Int, _ body: JSON?, headers: [(String, String)] = []) {
        let contentType: [(String, String)] = body == nil ? [] : [("Content-Type", "application/json")]
        writeHead(status: status, headers: contentType + [("Cache-Control", "no-store"), ("X-Accel-Buffering", "yes")] + headers)
        if let body { _ = write(body.serializedBytes + [0x0A]) }
    }
}

public enum HTTPStatus {
    public static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 202: "Accepted"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: "Status"
        }
    }
}

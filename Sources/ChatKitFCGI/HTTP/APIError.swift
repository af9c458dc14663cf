/// Every failure a request can end in, mapped to an HTTP status in this one place.
public enum APIError: Error, Equatable {
    case badRequest(String)
    /// MCP clients learn where to get a token from `resourceMetadata` (RFC 9728).
    case unauthorized(AuthError, resourceMetadata: String? = nil)
    case forbidden(String)
    case notFound(String)
    case methodNotAllowed(allowed: [String])
    case payloadTooLarge(limit: Int)
    case unsupportedMediaType
    case invalidBody(String)
    case model(ModelError)
    case storageUnavailable
    case shuttingDown

    public var status: Int {
        switch self {
        case .badRequest: 400
        case .unauthorized: 401
        case .forbidden: 403
        case .notFound: 404
        case .methodNotAllowed: 405
        case .payloadTooLarge: 413
        case .unsupportedMediaType: 415
        case .invalidBody: 422
        // 429 passes through so clients can honour Retry-After; other model failures are a bad gateway.
        case .model(.http(429, _, _)): 429
        case .model(.timedOut): 504
        case .model: 502
        case .storageUnavailable, .shuttingDown: 503
        }
    }

    public var detail: String {
        switch self {
        case .badRequest(let why), .invalidBody(let why), .notFound(let why), .forbidden(let why): why
        case .unauthorized(let error, _): error.detail
        case .methodNotAllowed(let allowed): "method not allowed; use \(allowed.joined(separator: ", "))"
        case .payloadTooLarge(let limit): "request body larger than \(limit) bytes"
        case .unsupportedMediaType: "Content-Type must be application/json"
        case .model(.http(429, _, _)): "the model server is rate limiting; retry later"
        case .model(.http(let status, _, _)): "the model server failed (HTTP \(status))"
        case .model(.timedOut): "the model server timed out"
        case .model(.unreachable): "the model server is unreachable"
        case .model(.streamError): "the model server sent a broken stream"
        case .model(.cancelled): "cancelled"
        case .storageUnavailable: "storage is temporarily unavailable; retry"
        case .shuttingDown: "the server is restarting; retry"
        }
    }

    public var headers: [(String, String)] {
        switch self {
        case .unauthorized(let error, let metadata):
            var challenge = error == .missingToken ? ["Bearer"] : ["Bearer error=\"invalid_token\""]
            if let metadata { challenge.append("resource_metadata=\"\(metadata)\"") }
            return [("WWW-Authenticate", challenge.joined(separator: ", "))]
        case .methodNotAllowed(let allowed): return [("Allow", allowed.joined(separator: ", "))]
        case .model(.http(429, _, let retryAfter?)): return [("Retry-After", retryAfter)]
        case .storageUnavailable, .shuttingDown: return [("Retry-After", "1")]
        default: return []
        }
    }

    /// The body is always `{"detail": ...}` plus any extra members (such as a conversation id).
    public func write(to writer: ResponseWriter, extra: [(String, JSON)] = [], headers extraHeaders: [(String, String)] = []) {
        writer.writeJSON(status: status, .object([("detail", .string(detail))] + extra), headers: headers + extraHeaders)
    }
}

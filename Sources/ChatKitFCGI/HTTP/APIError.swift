/// Every failure a request can end in, mapped to an HTTP status in this one place.
public enum APIError: Error, Equatable {
    case badRequest(String)
    case unauthorized(AuthError)
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
        case .badRequest(let why), .invalidBody(let why), .notFound(let why): why
        case .unauthorized(let error): error.detail
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
        case .unauthorized(.missingToken): [("WWW-Authenticate", "Bearer")]
        case .unauthorized: [("WWW-Authenticate", "Bearer error=\"invalid_token\"")]
        case .methodNotAllowed(let allowed): [("Allow", allowed.joined(separator: ", "))]
        case .model(.http(429, _, let retryAfter?)): [("Retry-After", retryAfter)]
        case .storageUnavailable, .shuttingDown: [("Retry-After", "1")]
        default: []
        }
    }

    /// The body is always `{"detail": ...}` plus any extra members (such as a conversation id).
    public func write(to writer: ResponseWriter, extra: [(String, JSON)] = [], headers extraHeaders: [(String, String)] = []) {
        let body = JSON.object([("detail", .string(detail))] + extra).serializedBytes + [0x0A]
        writer.writeHead(
            status: status,
            headers: [("Content-Type", "application/json"), ("Cache-Control", "no-store")] + headers + extraHeaders)
        _ = writer.write(body)
    }
}

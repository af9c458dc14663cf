/// Every failure a request can end in, mapped to an HTTP status in this one place.
public enum APIError: Error, Equatable {
    case badRequest(String)
    /// MCP clients learn where to get a token from `resourceMetadata` (RFC 9728).
    case unauthorized(AuthError, resourceMetadata: String? = nil)
    case forbidden(String)
    case notFound(String)
    /// The request is fine but the resource is past the state it needs (an upload done twice).
    case conflict(String)
    case methodNotAllowed(allowed: [String])
    case payloadTooLarge(limit: Int)
    case unsupportedMediaType
    case invalidBody(String)
    case model(ModelError)
    case limitReached(LimitReached)
    case storageUnavailable
    case shuttingDown

    public var status: Int {
        switch self {
        case .badRequest: 400
        case .unauthorized: 401
        case .forbidden: 403
        case .notFound: 404
        case .conflict: 409
        case .methodNotAllowed: 405
        case .payloadTooLarge: 413
        case .unsupportedMediaType: 415
        case .invalidBody: 422
        // 429 passes through so clients can honour Retry-After; other model failures are a bad gateway.
        case .model(.http(429, _, _)), .limitReached: 429
        case .model(.timedOut): 504
        case .model: 502
        case .storageUnavailable, .shuttingDown: 503
        }
    }

    public var detail: String {
        switch self {
        case .badRequest(let why), .invalidBody(let why), .notFound(let why), .forbidden(let why), .conflict(let why): why
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
        case .limitReached(let limit): limit.detail
        case .storageUnavailable: "storage is temporarily unavailable; retry"
        case .shuttingDown: "the server is restarting; retry"
        }
    }

    public var headers: [(String, String)] {
        switch self {
        case .unauthorized(let error, let metadata):
            // RFC 6750 §3: the scheme, a space, then comma-separated parameters.
            var parameters = error == .missingToken ? [] : ["error=\"invalid_token\""]
            if let metadata { parameters.append("resource_metadata=\"\(metadata)\"") }
            return [("WWW-Authenticate", parameters.isEmpty ? "Bearer" : "Bearer " + parameters.joined(separator: ", "))]
        case .methodNotAllowed(let allowed): return [("Allow", allowed.joined(separator: ", "))]
        case .model(.http(429, _, let retryAfter?)): return [("Retry-After", retryAfter)]
        case .storageUnavailable, .shuttingDown: return [("Retry-After", "1")]
        case .limitReached(let limit): return [("Retry-After", String(limit.retryAfterSeconds))]
        default: return []
        }
    }

    /// What any error a request ends in is reported as. Anything but the API's own, token and
    /// store errors is a storage or internal failure: logged here (never with user data, which
    /// no error description carries), and reported as storage being unavailable.
    static func reporting(_ error: any Error, of request: HTTPRequest) -> APIError {
        switch error {
        case let known as APIError: return known
        case let auth as AuthError: return .unauthorized(auth)
        case let limit as LimitReached: return .limitReached(limit)
        case StoreError.conversationDeleted: return .notFound("the conversation was deleted")
        case StoreError.attachmentUnavailable:
            return .badRequest("an attachment of this message was deleted or sent with another message meanwhile")
        case StoreError.busy:
            Log.warning("\(request.method) \(request.path): every database connection is busy")
            return .storageUnavailable
        default:
            Log.error("\(request.method) \(request.path): \(error)")
            return .storageUnavailable
        }
    }

    /// The body is always `{"detail": ...}` plus any extra members (such as a conversation id).
    public func write(to writer: ResponseWriter, extra: [(String, JSON)] = [], headers extraHeaders: [(String, String)] = []) {
        writer.writeJSON(status: status, .object([("detail", .string(detail))] + extra), headers: headers + extraHeaders)
    }
}

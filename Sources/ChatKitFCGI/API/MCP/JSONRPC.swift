/// A JSON-RPC 2.0 error. Parse and shape errors are HTTP 400; the rest ride on a 200.
public struct JSONRPCError: Error, Equatable {
    public let code: Int
    public let message: String

    public static let parseError = JSONRPCError(code: -32700, message: "Parse error")
    public static func invalidRequest(_ why: String) -> JSONRPCError { JSONRPCError(code: -32600, message: "Invalid Request: \(why)") }
    public static func methodNotFound(_ method: String) -> JSONRPCError { JSONRPCError(code: -32601, message: "Method not found: \(method)") }
    public static func invalidParams(_ why: String) -> JSONRPCError { JSONRPCError(code: -32602, message: why) }
    public static let internalError = JSONRPCError(code: -32603, message: "Internal error")

    /// The message could not be read as a request at all, so there is no result to carry.
    public var httpStatus: Int { code == -32700 || code == -32600 ? 400 : 200 }

    public var json: JSON { ["code": .int(code), "message": .string(message)] }
}

/// One JSON-RPC message as MCP's Streamable HTTP delivers it: one per POST, never a batch.
public enum JSONRPCMessage: Equatable {
    case request(id: JSON, method: String, params: JSON?)
    case notification(method: String, params: JSON?)
    /// A client's answer to a server request; this server sends none, so it is only acknowledged.
    case response

    public init(body: [UInt8]) throws(JSONRPCError) {
        guard let json = try? JSON.parse(body) else { throw .parseError }
        if case .array = json { throw .invalidRequest("batches are not supported") }
        guard case .object = json else { throw .invalidRequest("not a JSON-RPC object") }
        guard json["jsonrpc"] == "2.0" else { throw .invalidRequest("jsonrpc must be \"2.0\"") }
        let params = json["params"]
        if let params, params.objectValue == nil, params.arrayValue == nil {
            throw .invalidRequest("params must be an object or an array")
        }
        guard let methodValue = json["method"] else {
            guard json["result"] != nil || json["error"] != nil else { throw .invalidRequest("no method") }
            self = .response
            return
        }
        guard let method = methodValue.stringValue else { throw .invalidRequest("method must be a string") }
        switch json["id"] {
        case nil:
            self = .notification(method: method, params: params)
        case let id? where id.stringValue != nil || id.intValue != nil:
            self = .request(id: id, method: method, params: params)
        default:
            throw .invalidRequest("id must be a string or an integer")
        }
    }

    public static func result(id: JSON, _ result: JSON) -> JSON {
        ["jsonrpc": "2.0", "id": id, "result": result]
    }

    public static func error(id: JSON, _ error: JSONRPCError) -> JSON {
        ["jsonrpc": "2.0", "id": id, "error": error.json]
    }
}

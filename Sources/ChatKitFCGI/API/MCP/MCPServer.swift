/// The Model Context Protocol over Streamable HTTP, stateless: every POST stands alone, no
/// session ids, JSON replies. Serves the same tool definitions the chat agent uses.
public struct MCPServer {
    /// The first is what we answer when a client asks for a version we do not speak.
    public static let protocolVersions = ["2025-11-25", "2025-06-18", "2025-03-26"]

    public struct Reply: Equatable {
        public var status: Int
        /// nil for 202 Accepted.
        public var body: JSON?
    }

    public let toolbox: Toolbox

    public init(toolbox: Toolbox) { self.toolbox = toolbox }

    /// `context` opens the user's store only when a tool actually runs.
    public func respond(to body: [UInt8], protocolVersionHeader: String?, context: () throws -> ToolContext) -> Reply {
        let message: JSONRPCMessage
        do throws(JSONRPCError) {
            message = try JSONRPCMessage(body: body)
        } catch {
            return Reply(status: error.httpStatus, body: JSONRPCMessage.error(id: nil, error))
        }
        guard case .request(let id, let method, let params) = message else {
            return Reply(status: 202, body: nil)  // notifications and responses need no answer
        }
        // server/discover is how 2026-era clients probe; they fall back to initialize on -32601.
        if let version = protocolVersionHeader, !Self.protocolVersions.contains(version), method != "server/discover" {
            let error = JSONRPCError.invalidRequest("unsupported MCP-Protocol-Version \(version)")
            return Reply(status: 400, body: JSONRPCMessage.error(id: id, error))
        }
        do throws(JSONRPCError) {
            return Reply(status: 200, body: JSONRPCMessage.result(id: id, try handle(method, params, context: context)))
        } catch {
            return Reply(status: error.httpStatus, body: JSONRPCMessage.error(id: id, error))
        }
    }

    private func handle(_ method: String, _ params: JSON?, context: () throws -> ToolContext) throws(JSONRPCError) -> JSON {
        switch method {
        case "initialize":
            let requested = params?["protocolVersion"]?.stringValue
            let version = requested.flatMap { Self.protocolVersions.contains($0) ? $0 : nil } ?? Self.protocolVersions[0]
            return [
                "protocolVersion": .string(version),
                "capabilities": ["tools": ["listChanged": false]],
                "serverInfo": ["name": "chatkit-fcgi", "title": "Todo list", "version": .string(ChatKitCommand.version)],
                "instructions": "Tools to manage the signed-in user's todo list.",
            ]
        case "ping":
            return [:]
        case "tools/list":
            // Five tools fit one page; we never hand out a cursor, so any cursor is invalid.
            if params?["cursor"] != nil { throw .invalidParams("invalid cursor") }
            return ["tools": .array(toolbox.tools.map(Self.definition))]
        case "tools/call":
            return try call(params, context: context)
        default:
            throw .methodNotFound(method)
        }
    }

    static func definition(_ tool: Tool) -> JSON {
        [
            "name": .string(tool.name),
            "title": .string(tool.title),
            "description": .string(tool.description),
            "inputSchema": tool.parameters,
            "outputSchema": tool.outputSchema,
            "annotations": [
                "title": .string(tool.title),
                "readOnlyHint": .bool(tool.hints.readOnly),
                "destructiveHint": .bool(tool.hints.destructive),
                "idempotentHint": .bool(tool.hints.idempotent),
                "openWorldHint": false,
            ],
        ]
    }

    private func call(_ params: JSON?, context: () throws -> ToolContext) throws(JSONRPCError) -> JSON {
        guard let params, case .object = params else { throw .invalidParams("tools/call needs params {name, arguments}") }
        guard let name = params["name"]?.stringValue else { throw .invalidParams("tools/call params.name must be a string") }
        guard let tool = toolbox.tool(named: name) else { throw .invalidParams("Unknown tool: \(name)") }
        let arguments = params["arguments"] ?? [:]
        guard case .object = arguments else { throw .invalidParams("tools/call params.arguments must be an object") }
        let toolContext: ToolContext
        do {
            toolContext = try context()
        } catch {
            Log.error("MCP tools/call: \(error)")
            throw .internalError
        }
        // Tool failures, bad arguments included, are results the caller can read (MCP 2025-11-25).
        switch toolbox.run(name: name, arguments: arguments, context: toolContext) {
        case .success(let result):
            return ["content": [["type": "text", "text": .string(result.serialized)]],
                    "structuredContent": tool.structuredContent(result), "isError": false]
        case .failure(let error):
            return ["content": [["type": "text", "text": .string(error.message)]], "isError": true]
        }
    }
}

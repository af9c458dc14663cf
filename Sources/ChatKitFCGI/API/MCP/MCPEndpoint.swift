/// `POST /api/mcp` and the protected-resource metadata that tells MCP clients how to authenticate.
struct MCPEndpoint {
    let worker: Worker

    static let metadataPaths: Set<String> = [
        "/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/api/mcp",
    ]

    func handle(_ request: HTTPRequest, writer: ResponseWriter) throws {
        let config = worker.app.config
        // DNS rebinding: a browser page may not drive the user's tools unless its origin is allowed.
        if let origin = request.headers["origin"], !config.mcpAllowedOrigins.contains(origin) {
            throw APIError.forbidden("origin \(origin) is not allowed")
        }
        let user: VerifiedToken
        do throws(AuthError) {
            user = try worker.app.verifier.verify(authorizationHeader: request.headers["authorization"])
        } catch {
            throw APIError.unauthorized(error, resourceMetadata: metadataURL(for: request))
        }
        guard request.hasJSONBody else { throw APIError.unsupportedMediaType }
        let reply = MCPServer(toolbox: worker.app.toolbox).respond(
            to: request.body, protocolVersionHeader: request.headers["mcp-protocol-version"]
        ) { ToolContext(userID: user.subject, store: try worker.store()) }
        writer.writeJSON(status: reply.status, reply.body, headers: Self.corsHeaders(for: request, config: config))
    }

    /// A browser asks before it sends `Authorization` cross-origin.
    func preflight(_ request: HTTPRequest, writer: ResponseWriter) throws {
        let headers = Self.corsHeaders(for: request, config: worker.app.config)
        guard !headers.isEmpty else { throw APIError.forbidden("origin \(request.headers["origin"] ?? "") is not allowed") }
        writer.writeJSON(status: 204, nil, headers: headers + [
            ("Access-Control-Allow-Methods", "POST"),
            ("Access-Control-Allow-Headers", "Authorization, Content-Type, MCP-Protocol-Version, Mcp-Session-Id"),
            ("Access-Control-Max-Age", "600"),
        ])
    }

    /// CORS for the origins an operator allowed on /api/mcp; nothing for anyone else.
    static func corsHeaders(for request: HTTPRequest, config: Config) -> [(String, String)] {
        guard request.path == "/api/mcp", let origin = request.headers["origin"], config.mcpAllowedOrigins.contains(origin)
        else { return [] }
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", "WWW-Authenticate")]
    }

    /// RFC 9728: what this resource is and which authorization server issues its tokens.
    func metadata(for request: HTTPRequest) -> JSON {
        let base = baseURL(for: request)
        return [
            "resource": .string(base + "/api/mcp"),
            "authorization_servers": [.string(worker.app.config.jwtIssuer ?? base)],
            "bearer_methods_supported": ["header"],
            "resource_name": "chatkit-fcgi todo tools",
        ]
    }

    private func metadataURL(for request: HTTPRequest) -> String {
        baseURL(for: request) + "/.well-known/oauth-protected-resource/api/mcp"
    }

    private func baseURL(for request: HTTPRequest) -> String { worker.app.config.publicURL ?? request.origin }
}

/// `POST /api/mcp`: the todo tools for MCP clients. Browsers reach it only from the origins an
/// operator allowed, and every answer to those carries CORS headers.
struct MCPEndpoint: Endpoint {
    let worker: Worker

    var face: String { "mcp" }
    var allowedMethods: [String] { ["POST"] }

    /// A browser asks (`OPTIONS` with an `Origin`) before it sends `Authorization` cross-origin.
    func accepts(_ request: HTTPRequest) -> Bool {
        request.method == "POST" || (request.method == "OPTIONS" && request.headers["origin"] != nil)
    }

    /// CORS for the origins an operator allowed; nothing for anyone else. A browser may only read
    /// an error (a 401 challenge, say) with them.
    func headers(for request: HTTPRequest) -> [(String, String)] {
        guard let origin = request.headers["origin"], worker.app.config.mcpAllowedOrigins.contains(origin) else { return [] }
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", "WWW-Authenticate")]
    }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) throws {
        // DNS rebinding: a browser page may not drive the user's tools unless its origin is allowed.
        if let origin = request.headers["origin"], !worker.app.config.mcpAllowedOrigins.contains(origin) {
            throw APIError.forbidden("origin \(origin) is not allowed")
        }
        if request.method == "OPTIONS" { return preflight(request, writer: writer) }
        let user: VerifiedToken
        do throws(AuthError) {
            user = try worker.app.verifier.verify(authorizationHeader: request.headers["authorization"])
        } catch {
            let metadata = ResourceMetadataEndpoint(config: worker.app.config).documentURL(for: request)
            throw APIError.unauthorized(error, resourceMetadata: metadata)
        }
        try worker.admit(user: user.subject, writer: writer)
        guard request.hasJSONBody else { throw APIError.unsupportedMediaType }
        let reply = MCPServer(toolbox: worker.app.toolbox).respond(
            to: request.body, protocolVersionHeader: request.headers["mcp-protocol-version"]
        ) { worker.toolContext(for: user.subject, store: try worker.store()) }
        writer.writeJSON(status: reply.status, reply.body, headers: headers(for: request))
    }

    private func preflight(_ request: HTTPRequest, writer: ResponseWriter) {
        writer.writeJSON(status: 204, nil, headers: headers(for: request) + [
            ("Access-Control-Allow-Methods", "POST"),
            ("Access-Control-Allow-Headers", "Authorization, Content-Type, MCP-Protocol-Version, Mcp-Session-Id"),
            ("Access-Control-Max-Age", "600"),
        ])
    }
}

/// RFC 9728's protected-resource metadata: what `/api/mcp` is and which authorization server
/// issues its tokens, so MCP clients learn how to authenticate.
struct ResourceMetadataEndpoint: Endpoint {
    let config: Config

    var face: String { "metadata" }
    static let paths: Set<String> = [
        "/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/api/mcp",
    ]

    var allowedMethods: [String] { ["GET"] }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) throws {
        let base = baseURL(for: request)
        writer.writeJSON(status: 200, [
            "resource": .string(base + "/api/mcp"),
            "authorization_servers": [.string(config.jwtIssuer ?? base)],
            "bearer_methods_supported": ["header"],
            "resource_name": "chatkit-fcgi todo tools",
        ])
    }

    func documentURL(for request: HTTPRequest) -> String {
        baseURL(for: request) + "/.well-known/oauth-protected-resource/api/mcp"
    }

    private func baseURL(for request: HTTPRequest) -> String { config.publicURL ?? request.origin }
}

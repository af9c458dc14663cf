/// What one worker thread owns: its SQLite connection and its libcurl handles, opened on first
/// use and reused for every request the thread serves. Routing happens here.
public final class Worker {
    public let app: Application
    private var openStore: SQLiteStore?

    public init(app: Application) {
        self.app = app
    }

    func store() throws -> any Store {
        if let openStore { return openStore }
        let store = try SQLiteStore(database: app.database)
        openStore = store
        return store
    }

    /// /api/chat offers the server's tools; ChatKit adds the operator's client tools. Both are
    /// made on first use and kept: the tool list they send is encoded once.
    private(set) lazy var chatAgent = makeAgent(clientTools: [])
    private(set) lazy var chatKitAgent = makeAgent(clientTools: app.config.clientTools)

    private lazy var modelClient: ModelClient = {
        var settings = ModelClient.Settings(baseURL: app.config.openAIBaseURL, apiKey: app.config.openAIAPIKey, model: app.config.model)
        settings.connectTimeoutMilliseconds = app.config.connectTimeoutMilliseconds
        settings.stallTimeoutSeconds = app.config.stallTimeoutSeconds
        return ModelClient(settings: settings, http: HTTPClient())
    }()

    private func makeAgent(clientTools: [ClientTool]) -> Agent {
        Agent(model: modelClient, toolbox: app.toolbox, systemPrompt: app.config.systemPrompt, maxRounds: app.config.maxToolRounds,
              clientTools: clientTools)
    }

    /// Serves one request. Every failure ends as a JSON error before the stream starts, or as an
    /// in-band error record after it; nothing escapes to the edge.
    public func handle(_ request: HTTPRequest, writer: ResponseWriter) -> RequestLog {
        var log = RequestLog(method: request.method, path: request.path)
        do {
            try route(request, writer: writer, log: &log)
        } catch {
            let apiError: APIError
            switch error {
            case let known as APIError: apiError = known
            case let auth as AuthError: apiError = .unauthorized(auth)
            case StoreError.conversationDeleted: apiError = .notFound("the conversation was deleted")
            default:
                Log.error("\(request.method) \(request.path): \(error)")
                apiError = .storageUnavailable
            }
            if case .unauthorized(let reason, _) = apiError { log.note = reason.description }
            if writer.headWritten {
                // Each face reports in-band errors in its own protocol's terms.
                let sse = SSEWriter(writer: writer)
                if request.path == "/api/chatkit" {
                    sse.send(["type": "error", "code": "stream.error", "allow_retry": true])
                } else {
                    sse.send(["type": "error", "code": "internal_error", "detail": .string(apiError.detail)])
                    sse.done()
                }
            } else {
                // A browser may only read the error (a 401 challenge, say) with CORS headers.
                apiError.write(to: writer, headers: MCPEndpoint.corsHeaders(for: request, config: app.config))
            }
        }
        return log
    }

    private func route(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) throws {
        switch request.path {
        case "/api/chat":
            try require("POST", request)
            if app.lifecycle.isDraining { throw APIError.shuttingDown }
            let user = try app.verifier.verify(authorizationHeader: request.headers["authorization"])
            try ChatEndpoint(worker: self).handle(request, user: user.subject, writer: writer, log: &log)
        case "/api/chatkit":
            try require("POST", request)
            let user = try app.verifier.verify(authorizationHeader: request.headers["authorization"])
            try ChatKitEndpoint(worker: self, user: user.subject).handle(request, writer: writer, log: &log)
        case "/api/mcp" where request.method == "OPTIONS" && request.headers["origin"] != nil:
            try MCPEndpoint(worker: self).preflight(request, writer: writer)
        case "/api/mcp":
            try require("POST", request)
            try MCPEndpoint(worker: self).handle(request, writer: writer)
        case let path where MCPEndpoint.metadataPaths.contains(path):
            try require("GET", request)
            writer.writeJSON(status: 200, MCPEndpoint(worker: self).metadata(for: request))
        default:
            throw APIError.notFound("no such endpoint: \(request.path)")
        }
    }

    private func require(_ method: String, _ request: HTTPRequest) throws {
        guard request.method == method else { throw APIError.methodNotAllowed(allowed: [method]) }
    }
}

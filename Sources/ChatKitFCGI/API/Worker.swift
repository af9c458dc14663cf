/// What one worker thread owns: its store connection and its libcurl handle, opened on first
/// use and reused for every request the thread serves; and the router, which picks the face.
public final class Worker {
    public let app: Application
    private var openStore: (any Store)?

    public init(app: Application) {
        self.app = app
    }

    func store() throws -> any Store {
        if let openStore { return openStore }
        let store = try app.database.makeStore()
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

    /// Serves one request. Every failure ends as the face's JSON error before the stream
    /// starts, or as its in-band error after; nothing escapes to the edge.
    public func handle(_ request: HTTPRequest, writer: ResponseWriter) -> RequestLog {
        var log = RequestLog(method: request.method, path: request.path)
        let endpoint = endpoint(for: request.path)
        do {
            guard let endpoint else { throw APIError.notFound("no such endpoint: \(request.path)") }
            guard endpoint.accepts(request) else { throw APIError.methodNotAllowed(allowed: endpoint.allowedMethods) }
            // Once draining, this instance starts nothing new: the client retries on the next.
            if app.lifecycle.isDraining { throw APIError.shuttingDown }
            try endpoint.handle(request, writer: writer, log: &log)
        } catch {
            let apiError = APIError.reporting(error, of: request)
            if case .unauthorized(let reason, _) = apiError { log.note = reason.description }
            if let endpoint {
                endpoint.fail(apiError, request: request, writer: writer)
            } else {
                apiError.write(to: writer)
            }
        }
        return log
    }

    private func endpoint(for path: String) -> (any Endpoint)? {
        switch path {
        case "/api/chat": ChatEndpoint(worker: self)
        case "/api/chatkit": ChatKitEndpoint(worker: self)
        case "/api/mcp": MCPEndpoint(worker: self)
        case let path where ResourceMetadataEndpoint.paths.contains(path): ResourceMetadataEndpoint(config: app.config)
        default: nil
        }
    }
}

/// The server's side of one request: its store and its libcurl handle, made on first use; and
/// the router, which picks the face. A request may move between the worker pool's threads at
/// each wait, and is served by one thread at a time.
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

    /// /api/chat offers the server's tools; ChatKit adds the operator's client tools.
    private(set) lazy var chatAgent = makeAgent(clientTools: [], tools: app.chatTools)
    private(set) lazy var chatKitAgent = makeAgent(clientTools: app.config.clientTools, tools: app.chatKitTools)

    private(set) lazy var modelClient: ModelClient = {
        let config = app.config
        var settings = ModelClient.Settings(baseURL: config.openAIBaseURL, apiKey: config.openAIAPIKey, model: config.model,
                                            connectTimeoutMilliseconds: config.connectTimeoutMilliseconds,
                                            stallTimeoutSeconds: config.stallTimeoutSeconds, retries: config.upstreamRetries)
        settings.transcribeModel = config.transcribeModel
        return ModelClient(settings: settings, http: HTTPClient(), metrics: app.metrics)
    }()

    private func makeAgent(clientTools: [ClientTool], tools: ToolDefinitions) -> Agent {
        Agent(model: modelClient, toolbox: app.toolbox, systemPrompt: app.config.systemPrompt, maxRounds: app.config.maxToolRounds,
              clientTools: clientTools, toolDefinitions: tools, historyMaxBytes: app.config.historyMaxBytes,
              toolResultMaxBytes: app.config.toolResultMaxBytes)
    }

    /// Serves one request. Every failure ends as the face's JSON error before the stream
    /// starts, or as its in-band error after; nothing escapes to the edge.
    public func handle(_ request: HTTPRequest, writer: ResponseWriter) async -> RequestLog {
        var log = RequestLog(method: request.method, path: request.path)
        let endpoint = endpoint(for: request.path)
        log.face = endpoint?.face ?? "none"
        do {
            guard let endpoint else { throw APIError.notFound("no such endpoint: \(request.path)") }
            guard endpoint.accepts(request) else { throw APIError.methodNotAllowed(allowed: endpoint.allowedMethods) }
            // Once draining, this instance starts nothing new: the client retries on the next.
            if app.lifecycle.isDraining, !endpoint.servedWhileDraining { throw APIError.shuttingDown }
            try await endpoint.handle(request, writer: writer, log: &log)
        } catch {
            let apiError = APIError.reporting(error, of: request)
            if case .unauthorized(let reason, _) = apiError { log.note = reason.description }
            if case .limitReached(let limit) = apiError {
                log.note = "limit: \(limit.limit)"
                app.metrics.rateLimited.add(labels: [limit.limit])
            }
            if let endpoint {
                endpoint.fail(apiError, request: request, writer: writer)
            } else {
                apiError.write(to: writer)
            }
        }
        return log
    }

    /// The token's user, counted against their requests a minute; the rate-limit headers go on
    /// whatever answer follows.
    func admit(_ request: HTTPRequest, writer: ResponseWriter) throws -> String {
        let user = try app.verifier.verify(authorizationHeader: request.headers["authorization"]).subject
        try admit(user: user, writer: writer)
        return user
    }

    func admit(user: String, writer: ResponseWriter) throws {
        writer.extraHeaders += try app.limits.admitRequest(from: user)
    }

    /// Before a request that calls the model stores anything: takes one of the user's stream
    /// places (give it back with `endModelUse`) and checks the day's token budget.
    func beginModelUse(by user: String, store: any Store, writer: ResponseWriter) throws {
        let budget = app.config.userTokensPerDay
        if budget > 0 {
            let (day, resetSeconds) = Self.utcDay()
            let used = try store.tokensUsed(userID: user, day: day)
            guard used < budget else {
                throw LimitReached(limit: "tokens", detail: "the daily token budget (\(budget)) is used up",
                                   retryAfterSeconds: resetSeconds)
            }
            writer.extraHeaders += [("X-RateLimit-Limit-Tokens", String(budget)),
                                    ("X-RateLimit-Remaining-Tokens", String(budget - used)),
                                    ("X-RateLimit-Reset-Tokens", "\(resetSeconds)s")]
        }
        try app.limits.openStream(for: user)
    }

    /// Gives the stream place back, and charges what the turn used to the day's budget.
    func endModelUse(by user: String, store: any Store, usage: ChatCompletionChunk.Usage) {
        app.limits.closeStream(for: user)
        let tokens = usage.promptTokens + usage.completionTokens
        guard app.config.userTokensPerDay > 0, tokens > 0 else { return }
        do {
            try store.chargeTokens(userID: user, day: Self.utcDay().day, tokens: tokens)
        } catch {
            Log.error("could not charge \(tokens) tokens: \(error)")
        }
    }

    /// Today in UTC as `YYYY-MM-DD`, and the seconds until it ends.
    static func utcDay() -> (day: String, resetSeconds: Int) {
        let now = Clock.unixTime()
        let day = String(Clock.iso8601(unixMilliseconds: Int64(now * 1000)).prefix(10))
        return (day, Int(86_400 - now.truncatingRemainder(dividingBy: 86_400)) + 1)
    }

    /// The signed URLs `user` is handed for attachments, on the public URL or the request's origin.
    func attachmentLinks(for request: HTTPRequest, user: String) -> AttachmentLinks {
        AttachmentLinks(signer: app.urlSigner, baseURL: app.config.publicURL ?? request.origin, user: user,
                        lifetimeSeconds: app.config.attachmentURLSeconds)
    }

    func toolContext(for user: String, store: any Store) -> ToolContext {
        ToolContext(userID: user, store: store, maxTasks: app.config.userMaxTasks)
    }

    private func endpoint(for path: String) -> (any Endpoint)? {
        switch path {
        case "/api/chat": ChatEndpoint(worker: self)
        case "/api/chatkit": ChatKitEndpoint(worker: self)
        case "/api/mcp": MCPEndpoint(worker: self)
        case let path where path.hasPrefix(AttachmentLinks.path): AttachmentEndpoint.Route(path: path).map { AttachmentEndpoint(worker: self, route: $0) }
        case let path where ResourceMetadataEndpoint.paths.contains(path): ResourceMetadataEndpoint(config: app.config)
        case "/livez", "/readyz": HealthEndpoint(worker: self, checksReadiness: path == "/readyz")
        case "/metrics": MetricsEndpoint(app: app)
        default: nil
        }
    }
}

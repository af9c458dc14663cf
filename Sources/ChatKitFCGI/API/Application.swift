import Synchronization

/// Process-wide state shared by every request: configuration, the token verifier, the
/// database, the tools and the shutdown state. What one request uses alone (a store, libcurl)
/// lives in its `Worker`.
public final class Application: Sendable {
    public let config: Config
    public let verifier: JWTVerifier
    public let toolbox: Toolbox
    /// The tools each face offers the model, encoded once: /api/chat offers the server's
    /// tools, ChatKit adds the operator's client tools.
    let chatTools: ToolDefinitions
    let chatKitTools: ToolDefinitions
    public let lifecycle = Lifecycle()
    public let database: any StoreDatabase
    public let metrics = ServerMetrics()
    let limits: UserLimits
    /// Signs attachment URLs; the key is every host's when configured.
    let urlSigner: URLSigner

    public init(config: Config, verifier: JWTVerifier, database: any StoreDatabase, toolbox: Toolbox = TaskTools.toolbox) {
        self.config = config
        self.database = database
        self.verifier = verifier
        urlSigner = URLSigner(config: config)
        limits = UserLimits(maxStreams: config.userMaxStreams, requests: config.userRequests,
                            windowSeconds: config.userRequestsWindowSeconds)
        let metrics = metrics
        self.toolbox = toolbox.recording { tool, succeeded in
            metrics.toolCalls.add(labels: [tool, succeeded ? "ok" : "error"])
        }
        chatTools = Agent.toolDefinitions(toolbox: toolbox, clientTools: [])
        chatKitTools = Agent.toolDefinitions(toolbox: toolbox, clientTools: config.clientTools)
    }

    /// The verifier the configuration asks for; a JWKS URL is fetched with libcurl.
    public static func verifier(for config: Config) -> JWTVerifier {
        var keySource: JWKSource?
        let cooldown = Double(config.jwksCooldownSeconds)
        if let path = config.jwksFile {
            keySource = JWKSource(cooldown: cooldown) { () throws(AuthError) -> [UInt8] in
                do throws(FileSystem.Failure) {
                    return try FileSystem.read(path)
                } catch {
                    throw .keySetUnavailable(error.description)
                }
            }
        } else if let url = config.jwksURL {
            keySource = JWKSource(cooldown: cooldown) { () throws(AuthError) -> [UInt8] in try JWKSFetch.get(url) }
        }
        return JWTVerifier(
            hmacKey: config.betterAuthSecret.map { Array($0.utf8) }, keySource: keySource, issuer: config.jwtIssuer,
            audience: config.jwtAudience, leewaySeconds: Double(config.jwtLeewaySeconds))
    }
}

/// Drain on SIGTERM: stop taking work, let streams finish, then cut what remains.
public final class Lifecycle: Sendable {
    private let draining = Atomic(false)
    private let expired = Atomic(false)
    private let active = Atomic(0)

    public var isDraining: Bool { draining.load(ordering: .acquiring) }
    /// Set when the drain deadline passes: streams still running end with an error record.
    public var graceExpired: Bool { expired.load(ordering: .acquiring) }
    public var activeRequests: Int { active.load(ordering: .acquiring) }

    public func beginDraining() { draining.store(true, ordering: .releasing) }
    public func expireGrace() { expired.store(true, ordering: .releasing) }
    func requestStarted() { active.add(1, ordering: .acquiringAndReleasing) }
    func requestEnded() { active.subtract(1, ordering: .acquiringAndReleasing) }
}

import Glibc

/// Every setting, validated once. Built from the environment (and systemd credentials) plus
/// command-line flags; `check-config` prints the problems this collects.
public struct Config: Sendable {
    public var database = DatabaseLocation.sqlite(path: "chatkit.db")
    /// PostgreSQL: the most connections this process opens, how long a request waits for one,
    /// and how long one statement may run.
    public var databasePoolSize = 8
    public var databasePoolWaitMilliseconds = 2_000
    public var databaseStatementTimeoutMilliseconds = 10_000
    public var openAIAPIKey: String?
    public var openAIBaseURL = "https://api.openai.com/v1"
    public var model = "gpt-4o-mini"
    /// For ChatKit's dictation (`input.transcribe`).
    public var transcribeModel = "gpt-4o-mini-transcribe"
    public var systemPrompt = Config.defaultSystemPrompt
    public var betterAuthSecret: String?
    public var jwksURL: String?
    public var jwksFile: String?
    public var jwtIssuer: String?
    public var jwtAudience: String?
    public var jwtLeewaySeconds = 60
    public var jwksCooldownSeconds = 30
    /// Requests served at once; more wait in the listen backlog. A request waiting for the
    /// model holds no thread.
    public var maxRequests = 1024
    /// The threads that run requests between their waits: enough that a few blocked in the
    /// store leave the CPUs busy.
    public var threads = 32
    public var threadStackKiB = 1024
    public var socketPath: String?
    public var socketMode: UInt32 = 0o660
    public var listenBacklog = 4096
    public var historyLimit = 50
    public var historyMaxBytes = 256 << 10
    public var toolResultMaxBytes = 16 << 10
    public var upstreamRetries = 2
    /// Per user (the token's `sub`); 0 means no limit.
    public var userMaxStreams = 4
    public var userRequests = 120
    public var userRequestsWindowSeconds = 60
    public var userTokensPerDay = 0
    public var userMaxTasks = 1000
    public var maxToolRounds = 8
    public var maxBodyBytes = 1 << 20
    public var connectTimeoutMilliseconds = 5_000
    public var stallTimeoutSeconds = 60
    public var keepaliveSeconds = 15
    public var shutdownGraceSeconds = 30
    public var publicURL: String?
    public var attachments = AttachmentRules()
    /// How long an attachment's signed upload and preview URLs work.
    public var attachmentURLSeconds = 3600
    public var urlSigningKey: String?
    public var mcpAllowedOrigins: [String] = []
    public var clientTools: [ClientTool] = []
    public var titleStyle = TitleStyle.truncate

    public static let defaultSystemPrompt = """
        You are a helpful assistant that manages the user's todo list. Use the tools to add, list, \
        complete, delete and update tasks, and answer briefly.
        """

    /// Every variable this program reads, with what it means; `--help` and the README print it.
    public static let variables: [(name: String, meaning: String)] = [
        ("DATABASE_URL", "sqlite:///absolute/path.db, a plain path (default ./chatkit.db), or postgresql://... (or credential database_url)"),
        ("CHATKIT_DB_POOL_SIZE", "database connections this process may open: SQLite readers, or PostgreSQL connections (default 8)"),
        ("CHATKIT_DB_POOL_WAIT_MS", "how long a request waits for a free connection before a 503 (default 2000)"),
        ("CHATKIT_DB_STATEMENT_TIMEOUT_MS", "PostgreSQL statement timeout (default 10000; 0: none)"),
        ("OPENAI_API_KEY", "API key for the model server (or credential openai_api_key)"),
        ("OPENAI_BASE_URL", "OpenAI-compatible base URL (default https://api.openai.com/v1)"),
        ("OPENAI_MODEL", "model name (default gpt-4o-mini)"),
        ("OPENAI_TRANSCRIBE_MODEL", "model that transcribes ChatKit's dictation at {base}/audio/transcriptions (default gpt-4o-mini-transcribe)"),
        ("CHATKIT_SYSTEM_PROMPT", "system prompt sent first on every model call"),
        ("BETTER_AUTH_SECRET", "HS256 secret for Bearer tokens (or credential better_auth_secret)"),
        ("JWT_JWKS_URL", "JWKS URL for EdDSA/ES256/RS256 tokens, e.g. https://app/api/auth/jwks"),
        ("JWT_JWKS_FILE", "JWKS file instead of a URL (re-read on unknown kid)"),
        ("JWT_ISSUER", "required iss claim, when set"),
        ("JWT_AUDIENCE", "required aud claim, when set"),
        ("JWT_LEEWAY_SECONDS", "clock skew allowed on exp/nbf (default 60)"),
        ("JWT_JWKS_COOLDOWN_SECONDS", "least time between JWKS refetches for unknown kids (default 30, at least 1)"),
        ("CHATKIT_MAX_REQUESTS", "requests served at once, streams included; more wait in the listen backlog (default 1024)"),
        ("CHATKIT_THREADS", "threads that run requests between their waits for the model (default 32)"),
        ("CHATKIT_THREAD_STACK_KIB", "each worker thread's stack (default 1024; sanitizer builds need more)"),
        ("CHATKIT_SOCKET", "socket path when not socket-activated (same as --socket)"),
        ("CHATKIT_SOCKET_MODE", "octal mode of a socket we create (default 0660)"),
        ("CHATKIT_LISTEN_BACKLOG", "listen backlog of a socket we create (default 4096)"),
        ("CHATKIT_HISTORY_LIMIT", "most recent messages replayed to the model (default 50)"),
        ("CHATKIT_HISTORY_MAX_BYTES", "most bytes of history replayed to the model (default 262144)"),
        ("CHATKIT_TOOL_RESULT_MAX_BYTES", "largest tool result sent back to the model (default 16384)"),
        ("CHATKIT_MAX_TOOL_ROUNDS", "model calls per turn before giving up (default 8)"),
        ("CHATKIT_UPSTREAM_RETRIES", "retries of a model call that failed before any output (default 2)"),
        ("CHATKIT_USER_MAX_STREAMS", "concurrent streams per user on this host (default 4; 0: no limit)"),
        ("CHATKIT_USER_REQUESTS", "requests per user per window on this host (default 120; 0: no limit)"),
        ("CHATKIT_USER_REQUESTS_WINDOW_SECONDS", "the window CHATKIT_USER_REQUESTS counts in (default 60)"),
        ("CHATKIT_USER_TOKENS_PER_DAY", "model tokens per user per UTC day, on every host (default 0: no limit)"),
        ("CHATKIT_USER_MAX_TASKS", "tasks one user may keep (default 1000)"),
        ("CHATKIT_MAX_BODY_BYTES", "largest accepted request body (default 1048576)"),
        ("CHATKIT_CONNECT_TIMEOUT_MS", "connect timeout to the model server (default 5000)"),
        ("CHATKIT_STALL_TIMEOUT_SECONDS", "abort a model stream silent this long (default 60)"),
        ("CHATKIT_KEEPALIVE_SECONDS", "SSE comment interval while waiting (default 15)"),
        ("CHATKIT_SHUTDOWN_GRACE_SECONDS", "how long SIGTERM waits for streams (default 30)"),
        ("CHATKIT_PUBLIC_URL", "public base URL, e.g. https://app.example (default: from the request)"),
        ("CHATKIT_ATTACHMENT_MAX_BYTES", "largest attachment (default 10485760); nginx's upload location must allow a little more"),
        ("CHATKIT_ATTACHMENT_TYPES", "comma-separated attachment types: image/png, image/jpeg, image/gif, image/webp, application/pdf, text/* (default: the images, application/pdf, text/plain)"),
        ("CHATKIT_ATTACHMENTS_PER_MESSAGE", "attachments one message may carry (default 10)"),
        ("CHATKIT_ATTACHMENT_USER_MAX_BYTES", "what one user's attachments may take together, on every host (default 104857600)"),
        ("CHATKIT_ATTACHMENT_UNATTACHED_SECONDS", "attachments never sent with a message are removed after this long (default 86400)"),
        ("CHATKIT_ATTACHMENT_URL_SECONDS", "how long signed upload and preview URLs work (default 3600)"),
        ("CHATKIT_HISTORY_ATTACHMENT_BYTES", "most bytes of earlier messages' attachments replayed to the model (default 20971520)"),
        ("CHATKIT_URL_SIGNING_KEY", "key that signs attachment URLs, the same on every host (or credential url_signing_key; default: derived from BETTER_AUTH_SECRET)"),
        ("CHATKIT_MCP_ALLOWED_ORIGINS", "comma-separated browser Origins allowed on /api/mcp (default none)"),
        ("CHATKIT_CLIENT_TOOLS", "JSON list of {name, description, parameters} tools the browser runs"),
        ("CHATKIT_TITLES", "thread titles: truncate (default) or model"),
    ]

    /// How a new conversation gets its title: the first message cut short, or a few words the
    /// model writes.
    public enum TitleStyle: String, Sendable { case truncate, model }

    public init() {}

    public struct Invalid: Error, CustomStringConvertible {
        public let problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    public static func load(
        environment: [String: String] = Environment.current(), workingDirectory: String = Environment.workingDirectory()
    ) throws(Invalid) -> Config {
        var config = Config()
        var problems: [String] = []
        func value(_ name: String) -> String? {
            guard let raw = environment[name] else { return nil }
            let trimmed = String(raw.trimmed())
            return trimmed.isEmpty ? nil : trimmed
        }
        func credential(_ id: String) -> String? {
            guard let directory = value("CREDENTIALS_DIRECTORY"),
                let text = try? FileSystem.read("\(directory)/\(id)")
            else { return nil }
            let secret = String(String(decoding: text, as: UTF8.self).trimmed())
            return secret.isEmpty ? nil : secret
        }
        func integer(_ name: String, _ target: inout Int, range: ClosedRange<Int>) {
            guard let text = value(name) else { return }
            guard let parsed = Int(text), range.contains(parsed) else {
                problems.append("\(name)=\(text) must be an integer in \(range.lowerBound)...\(range.upperBound)")
                return
            }
            target = parsed
        }

        switch DatabaseLocation.parse(value("DATABASE_URL") ?? credential("database_url") ?? "chatkit.db",
                                      workingDirectory: workingDirectory) {
        case .success(let location): config.database = location
        case .failure(let problem): problems.append("DATABASE_URL: \(problem.description)")
        }
        integer("CHATKIT_DB_POOL_SIZE", &config.databasePoolSize, range: 1...1000)
        integer("CHATKIT_DB_POOL_WAIT_MS", &config.databasePoolWaitMilliseconds, range: 0...120_000)
        integer("CHATKIT_DB_STATEMENT_TIMEOUT_MS", &config.databaseStatementTimeoutMilliseconds, range: 0...3_600_000)
        config.openAIAPIKey = value("OPENAI_API_KEY") ?? credential("openai_api_key")
        if let base = value("OPENAI_BASE_URL") {
            if base.hasPrefix("http://") || base.hasPrefix("https://") {
                config.openAIBaseURL = base.hasSuffix("/") ? String(base.dropLast()) : base
            } else {
                problems.append("OPENAI_BASE_URL=\(base) must start with http:// or https://")
            }
        }
        config.model = value("OPENAI_MODEL") ?? config.model
        config.transcribeModel = value("OPENAI_TRANSCRIBE_MODEL") ?? config.transcribeModel
        config.systemPrompt = value("CHATKIT_SYSTEM_PROMPT") ?? config.systemPrompt
        config.betterAuthSecret = value("BETTER_AUTH_SECRET") ?? credential("better_auth_secret")
        config.jwksURL = value("JWT_JWKS_URL")
        config.jwksFile = value("JWT_JWKS_FILE")
        config.jwtIssuer = value("JWT_ISSUER")
        config.jwtAudience = value("JWT_AUDIENCE")
        integer("JWT_LEEWAY_SECONDS", &config.jwtLeewaySeconds, range: 0...300)
        // 0 would let every token with a made-up kid make its own fetch.
        integer("JWT_JWKS_COOLDOWN_SECONDS", &config.jwksCooldownSeconds, range: 1...3600)
        integer("CHATKIT_MAX_REQUESTS", &config.maxRequests, range: 1...100_000)
        integer("CHATKIT_THREADS", &config.threads, range: 1...1024)
        integer("CHATKIT_THREAD_STACK_KIB", &config.threadStackKiB, range: 64...65_536)
        config.socketPath = value("CHATKIT_SOCKET")
        if let mode = value("CHATKIT_SOCKET_MODE") {
            if let parsed = UInt32(mode, radix: 8), parsed <= 0o777 {
                config.socketMode = parsed
            } else {
                problems.append("CHATKIT_SOCKET_MODE=\(mode) must be an octal mode such as 0660")
            }
        }
        integer("CHATKIT_LISTEN_BACKLOG", &config.listenBacklog, range: 16...65535)
        integer("CHATKIT_HISTORY_LIMIT", &config.historyLimit, range: 1...10_000)
        integer("CHATKIT_MAX_TOOL_ROUNDS", &config.maxToolRounds, range: 1...100)
        integer("CHATKIT_HISTORY_MAX_BYTES", &config.historyMaxBytes, range: 1024...(64 << 20))
        integer("CHATKIT_TOOL_RESULT_MAX_BYTES", &config.toolResultMaxBytes, range: 256...(16 << 20))
        integer("CHATKIT_UPSTREAM_RETRIES", &config.upstreamRetries, range: 0...10)
        integer("CHATKIT_USER_MAX_STREAMS", &config.userMaxStreams, range: 0...10_000)
        integer("CHATKIT_USER_REQUESTS", &config.userRequests, range: 0...1_000_000)
        integer("CHATKIT_USER_REQUESTS_WINDOW_SECONDS", &config.userRequestsWindowSeconds, range: 1...86_400)
        integer("CHATKIT_USER_TOKENS_PER_DAY", &config.userTokensPerDay, range: 0...1_000_000_000)
        integer("CHATKIT_USER_MAX_TASKS", &config.userMaxTasks, range: 1...1_000_000)
        integer("CHATKIT_MAX_BODY_BYTES", &config.maxBodyBytes, range: 1024...(64 << 20))
        integer("CHATKIT_CONNECT_TIMEOUT_MS", &config.connectTimeoutMilliseconds, range: 100...120_000)
        integer("CHATKIT_STALL_TIMEOUT_SECONDS", &config.stallTimeoutSeconds, range: 1...3600)
        integer("CHATKIT_KEEPALIVE_SECONDS", &config.keepaliveSeconds, range: 1...300)
        integer("CHATKIT_SHUTDOWN_GRACE_SECONDS", &config.shutdownGraceSeconds, range: 0...3600)

        if let url = value("CHATKIT_PUBLIC_URL") {
            if url.hasPrefix("http://") || url.hasPrefix("https://") {
                config.publicURL = url.hasSuffix("/") ? String(url.dropLast()) : url
            } else {
                problems.append("CHATKIT_PUBLIC_URL=\(url) must start with http:// or https://")
            }
        }
        integer("CHATKIT_ATTACHMENT_MAX_BYTES", &config.attachments.maxBytes, range: 1024...(512 << 20))
        integer("CHATKIT_ATTACHMENTS_PER_MESSAGE", &config.attachments.perMessage, range: 1...100)
        integer("CHATKIT_ATTACHMENT_USER_MAX_BYTES", &config.attachments.userMaxBytes, range: 0...(1 << 50))
        integer("CHATKIT_ATTACHMENT_UNATTACHED_SECONDS", &config.attachments.unattachedSeconds, range: 60...(365 * 86_400))
        integer("CHATKIT_ATTACHMENT_URL_SECONDS", &config.attachmentURLSeconds, range: 10...86_400)
        integer("CHATKIT_HISTORY_ATTACHMENT_BYTES", &config.attachments.historyBytes, range: 0...(1 << 40))
        if let types = value("CHATKIT_ATTACHMENT_TYPES") {
            let list = types.split(separator: ",").map { $0.trimmed().lowercased() }.filter { !$0.isEmpty }
            let unknown = list.filter { AttachmentRules.kind(of: $0) == nil }
            if unknown.isEmpty {
                config.attachments.allowedTypes = list
            } else {
                problems.append("CHATKIT_ATTACHMENT_TYPES: \(unknown.joined(separator: ", ")) cannot reach the model; use image/png, image/jpeg, image/gif, image/webp, application/pdf or text/*")
            }
        }
        config.urlSigningKey = value("CHATKIT_URL_SIGNING_KEY") ?? credential("url_signing_key")
        if let key = config.urlSigningKey, key.utf8.count < 32 {
            problems.append("CHATKIT_URL_SIGNING_KEY must be at least 32 bytes")
        }
        config.mcpAllowedOrigins = (value("CHATKIT_MCP_ALLOWED_ORIGINS") ?? "").split(separator: ",")
            .map { String($0.trimmed()) }.filter { !$0.isEmpty }

        if let text = value("CHATKIT_CLIENT_TOOLS") {
            switch ClientTool.parseList(text, takenNames: Set(TaskTools.toolbox.tools.map(\.name))) {
            case .success(let tools): config.clientTools = tools
            case .failure(let problem): problems.append("CHATKIT_CLIENT_TOOLS: \(problem.message)")
            }
        }
        if let style = value("CHATKIT_TITLES") {
            if let parsed = TitleStyle(rawValue: style) {
                config.titleStyle = parsed
            } else {
                problems.append("CHATKIT_TITLES=\(style) must be truncate or model")
            }
        }

        if config.betterAuthSecret == nil, config.jwksURL == nil, config.jwksFile == nil {
            problems.append("no token verification configured: set BETTER_AUTH_SECRET, JWT_JWKS_URL or JWT_JWKS_FILE")
        }
        if config.jwksURL != nil, config.jwksFile != nil {
            problems.append("set only one of JWT_JWKS_URL and JWT_JWKS_FILE")
        }
        // Without them, any token the same identity provider signed for another application passes.
        if config.jwksURL != nil || config.jwksFile != nil, config.jwtIssuer == nil || config.jwtAudience == nil {
            problems.append("with JWT_JWKS_URL or JWT_JWKS_FILE, set JWT_ISSUER and JWT_AUDIENCE too (Better Auth: its base URL)")
        }
        if let secret = config.betterAuthSecret, secret.utf8.count < 32 {
            problems.append("BETTER_AUTH_SECRET must be at least 32 bytes (RFC 7518 §3.2)")
        }
        if let url = config.jwksURL, !(url.hasPrefix("https://") || url.hasPrefix("http://")) {
            problems.append("JWT_JWKS_URL=\(url) must be an http(s) URL")
        }
        guard problems.isEmpty else { throw Invalid(problems: problems) }
        return config
    }

    /// The largest body a request to `path` may have: an upload carries a whole attachment and
    /// its multipart framing; everything else is JSON.
    public func bodyLimit(forPath path: String) -> Int {
        path.hasPrefix(AttachmentLinks.path) ? attachments.maxBytes + Self.multipartAllowance : maxBodyBytes
    }

    /// A form's boundaries and part headers around one file.
    static let multipartAllowance = 16 << 10

    /// What `check-config` shows: every setting, secrets reduced to whether they are set.
    public var summary: [String] {
        [
            "database: \(database)" + (database.isPostgres
                ? " (pool \(databasePoolSize), wait \(databasePoolWaitMilliseconds) ms, statement timeout \(databaseStatementTimeoutMilliseconds) ms)"
                : " (\(databasePoolSize) readers, wait \(databasePoolWaitMilliseconds) ms)"),
            "model: \(model), dictation \(transcribeModel), at \(openAIBaseURL) (API key \(openAIAPIKey == nil ? "not set" : "set"))",
            "auth: HS256 secret \(betterAuthSecret == nil ? "not set" : "set")"
                + ", JWKS \(jwksURL ?? jwksFile ?? "not set")"
                + ", issuer \(jwtIssuer ?? "not checked"), audience \(jwtAudience ?? "not checked")",
            "requests at once: \(maxRequests), threads: \(threads), history limit: \(historyLimit) messages and \(historyMaxBytes) bytes, max tool rounds: \(maxToolRounds), upstream retries: \(upstreamRetries)",
            "per user: \(userMaxStreams == 0 ? "any number of" : String(userMaxStreams)) streams, "
                + "\(userRequests == 0 ? "no request limit" : "\(userRequests) requests per \(userRequestsWindowSeconds) s"), "
                + "\(userTokensPerDay == 0 ? "no token budget" : "\(userTokensPerDay) tokens a day"), \(userMaxTasks) tasks",
            "attachments: \(attachments.allowedTypes.joined(separator: ", ")), up to \(attachments.maxBytes) bytes each, "
                + "\(attachments.perMessage) a message, \(attachments.userMaxBytes) bytes a user; URLs signed with "
                + (urlSigningKey != nil ? "CHATKIT_URL_SIGNING_KEY" : betterAuthSecret != nil ? "a key derived from BETTER_AUTH_SECRET" : "a key of this process only"),
            "max body: \(maxBodyBytes) bytes, model connect timeout: \(connectTimeoutMilliseconds) ms, stall timeout: \(stallTimeoutSeconds) s",
        ]
    }
}

/// Where the store lives: an SQLite file, or a PostgreSQL server many hosts may share.
public enum DatabaseLocation: Equatable, Sendable, CustomStringConvertible {
    case sqlite(path: String)
    /// A libpq connection URI, as given.
    case postgres(url: String)

    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    public var isPostgres: Bool { if case .postgres = self { true } else { false } }

    /// `sqlite:///abs/path.db`, a plain path (relative to the working directory), or a
    /// `postgres://` / `postgresql://` URI, which libpq reads itself.
    public static func parse(_ url: String, workingDirectory: String) -> Result<DatabaseLocation, Problem> {
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") { return .success(.postgres(url: url)) }
        var path = url
        if url.hasPrefix("sqlite://") {
            path = String(url.dropFirst("sqlite://".count))
            guard path.hasPrefix("/") else {
                return .failure(Problem(description: "use sqlite:///absolute/path.db (three slashes)"))
            }
        } else if url.contains("://") {
            return .failure(Problem(description: "unsupported scheme in \(Self.redacting(url)); use sqlite:// or postgresql://"))
        }
        guard !path.isEmpty else { return .failure(Problem(description: "empty path")) }
        return .success(.sqlite(path: path.hasPrefix("/") ? path : "\(workingDirectory)/\(path)"))
    }

    /// Safe for logs and `check-config`: a password in the URL is shown as `***`.
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let url): Self.redacting(url)
        }
    }

    /// Hides `user:password@` and a `password=` query parameter.
    static func redacting(_ url: String) -> String {
        var text = url
        if let scheme = text.firstRange(of: "://") {
            let authorityEnd = text[scheme.upperBound...].firstIndex(where: { $0 == "/" || $0 == "?" }) ?? text.endIndex
            if let at = text[scheme.upperBound..<authorityEnd].lastIndex(of: "@"),
                let colon = text[scheme.upperBound..<at].firstIndex(of: ":") {
                text.replaceSubrange(text.index(after: colon)..<at, with: "***")
            }
        }
        if let query = text.firstIndex(of: "?") {
            let parameters = text[text.index(after: query)...].split(separator: "&", omittingEmptySubsequences: false).map { parameter in
                parameter.lowercased().hasPrefix("password=") ? "password=***" : String(parameter)
            }
            text = String(text[...query]) + parameters.joined(separator: "&")
        }
        return text
    }
}

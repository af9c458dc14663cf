import CFastCGI
import CLinux
import Glibc

/// `chatkit-fcgi serve | token | migrate | check-config`. Returns the exit status.
public enum ChatKitCommand {
    public static let version = "0.1.0"

    public static func run(_ arguments: [String]) -> Int32 {
        var arguments = Array(arguments.dropFirst())
        let command = arguments.isEmpty ? "serve" : arguments.removeFirst()
        do {
            switch command {
            case "serve": try serve(Flags(arguments, allowed: ["--socket", "--max-requests", "--threads"]))
            case "token": return try token(Flags(arguments, allowed: ["--sub", "--ttl"]))
            case "migrate": return try migrate(Flags(arguments, allowed: []))
            case "check-config": return try checkConfig(Flags(arguments, allowed: []))
            case "--help", "-h", "help": print(usage); return 0
            case "--version", "-V": print("chatkit-fcgi \(version)"); return 0
            default: throw UsageError("unknown command \(command)")
            }
        } catch let error as UsageError {
            printError("\(error.message)\n\n\(usage)")
            return 64
        } catch let error as Config.Invalid {
            printError("invalid configuration:\n" + error.problems.map { "  - \($0)" }.joined(separator: "\n"))
            return 78
        } catch {
            printError("\(error)")
            return 1
        }
    }

    static var usage: String {
        """
        usage: chatkit-fcgi <command> [options]

        commands:
          serve [--socket PATH] [--max-requests N] [--threads N]
                                                run the FastCGI responder (default command). The
                                                socket comes from systemd (LISTEN_FDS), else an
                                                inherited fd 0, else PATH, created with mode
                                                CHATKIT_SOCKET_MODE
          token --sub USER [--ttl SECONDS]      print an HS256 dev token signed with BETTER_AUTH_SECRET
          migrate                               create or upgrade the database schema
          check-config                          validate the environment and say what is wrong
          --help, --version

        environment:
        """ + "\n" + Config.variables.map { "  \($0.name.padding(30))\($0.meaning)" }.joined(separator: "\n")
    }

    // MARK: Commands

    private static func serve(_ flags: Flags) throws -> Never {
        var config = try Config.load()
        if let path = flags["--socket"] { config.socketPath = path }
        if let requests = flags["--max-requests"] {
            guard let count = Int(requests), (1...100_000).contains(count) else { throw UsageError("--max-requests must be 1...100000") }
            config.maxRequests = count
        }
        if let threads = flags["--threads"] {
            guard let count = Int(threads), (1...1024).contains(count) else { throw UsageError("--threads must be 1...1024") }
            config.threads = count
        }
        let database = config.database.open(config, forServing: true)
        do {
            try database.makeStore().migrate()
        } catch {
            throw ServeError("database \(config.database): \(error)")
        }
        raiseOpenFileLimit()
        Capacity.warnings(for: config).forEach { Log.warning($0) }
        keepFreedMemory()
        Curl.globalInit()
        let app = Application(config: config, verifier: Application.verifier(for: config), database: database)
        do {
            try app.verifier.preloadKeys()
        } catch {
            // The identity server may still be starting; keys are fetched again on demand.
            Log.warning("\(error)")
        }

        // Block the stop signals before any other thread exists, so only `sigwait` below sees them
        // (libfcgi's own SIGTERM handler would otherwise just set a flag).
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        try database.startMaintenance()
        signal(SIGPIPE, SIG_IGN)
        FastCGIServer.installWakeSignalHandler()
        guard FCGX_Init() == 0 else { throw ServeError("FCGX_Init failed") }

        let (listenFD, origin) = try ListenSocket.acquire(
            path: config.socketPath, mode: config.socketMode, backlog: config.listenBacklog)
        let server = FastCGIServer(listenFD: listenFD, app: app)
        server.startAccepting()
        Log.info("serving up to \(config.maxRequests) requests at once on \(config.threads) threads (\(origin)), database \(config.database), model \(config.model) at \(config.openAIBaseURL)")
        SystemdNotify.send("READY=1\nSTATUS=serving")
        startWatchdog()

        var received: Int32 = 0
        sigwait(&stopSignals, &received)
        Log.info("signal \(received): draining \(app.lifecycle.activeRequests) requests for up to \(config.shutdownGraceSeconds) s")
        SystemdNotify.send("STOPPING=1")
        app.lifecycle.beginDraining()
        FCGX_ShutdownPending()
        if case .created(let path) = origin {
            // Our own socket goes away with us; an inherited one belongs to systemd, which
            // keeps queueing connections for the next instance.
            shutdown(listenFD, Int32(SHUT_RDWR))
            unlink(path)
        }
        // The acceptors are woken out of accept() (again and again, in case one was between
        // checks); running requests finish their stream.
        func waitForRequests(until deadline: Double) {
            while server.runningAcceptors + app.lifecycle.activeRequests > 0, Clock.monotonicMilliseconds() < deadline {
                server.wakeAcceptors()
                usleep(20_000)
            }
        }
        waitForRequests(until: Clock.monotonicMilliseconds() + Double(config.shutdownGraceSeconds) * 1000)
        if app.lifecycle.activeRequests > 0 {
            app.lifecycle.expireGrace()
            // Running streams notice within one 100 ms tick and send their closing records.
            waitForRequests(until: Clock.monotonicMilliseconds() + 2_000)
        }
        let stragglers = app.lifecycle.activeRequests
        Log.info(stragglers == 0 ? "stopped" : "stopped with \(stragglers) requests still running")
        // Threads may still be running: leave without running exit handlers under them.
        _exit(0)
    }

    /// Under systemd's `WatchdogSec=`, pings `WATCHDOG=1` at half the interval while the
    /// transfer loop, which every stream of the process goes through, still answers; a wedged
    /// loop goes unpinged and systemd restarts the service.
    private static func startWatchdog() {
        guard let text = getenv("WATCHDOG_USEC").map({ String(cString: $0) }), let microseconds = Int(text), microseconds > 0
        else { return }
        if let pid = getenv("WATCHDOG_PID").flatMap({ pid_t(String(cString: $0)) }), pid != getpid() { return }
        let interval = max(microseconds / 2, 10_000)
        let started = DetachedThread.start(stackBytes: 256 << 10) {
            while true {
                usleep(UInt32(clamping: interval))
                if TransferLoop.shared.answers(within: interval / 2000) {
                    SystemdNotify.send("WATCHDOG=1")
                } else {
                    Log.error("the transfer loop did not answer within \(interval / 2000) ms: no watchdog ping")
                }
            }
        }
        if !started { Log.warning("could not start the watchdog thread") }
    }

    /// glibc gives memory back to the kernel as soon as 128 KiB lie free at the top of an arena;
    /// with hundreds of threads sharing a few arenas that happens on most requests, and the next
    /// one faults the pages back in. Only a surplus of 32 MiB goes back. An operator's own
    /// `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` wins.
    private static func keepFreedMemory() {
        guard getenv("MALLOC_TRIM_THRESHOLD_") == nil, getenv("GLIBC_TUNABLES") == nil else { return }
        _ = mallopt(M_TRIM_THRESHOLD, 32 << 20)
    }

    /// Every open stream holds two descriptors (its FastCGI connection and its connection to the
    /// model); the usual soft limit of 1024 would cap the server at about 500 streams. Nothing
    /// here uses select(), so the hard limit is safe to take.
    private static func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 {
            Log.warning("could not raise the open file limit: \(String(cString: strerror(errno)))")
        }
    }

    private static func token(_ flags: Flags) throws -> Int32 {
        let config = try Config.load()
        guard let secret = config.betterAuthSecret else { throw UsageError("BETTER_AUTH_SECRET is not set") }
        guard let subject = flags["--sub"], !subject.isEmpty else { throw UsageError("token needs --sub USER") }
        let ttl = try flags["--ttl"].map { text in
            guard let seconds = Int(text), seconds > 0 else { throw UsageError("--ttl must be a positive number of seconds") }
            return seconds
        } ?? 3600
        print(DevToken.mint(subject: subject, secret: secret, ttlSeconds: ttl, issuer: config.jwtIssuer, audience: config.jwtAudience))
        return 0
    }

    private static func migrate(_ flags: Flags) throws -> Int32 {
        let config = try Config.load()
        do {
            let store = try config.database.open(config).makeStore()
            let before = try store.schemaVersion
            try store.migrate()
            print("database \(config.database): schema version \(before) -> \(try store.schemaVersion)")
            return 0
        } catch {
            throw ServeError("database \(config.database): \(error)")
        }
    }

    private static func checkConfig(_ flags: Flags) throws -> Int32 {
        let config = try Config.load()
        var problems: [String] = []
        do {
            let database = config.database.open(config)
            let store = try database.makeStore()
            let version = try store.schemaVersion
            if let postgres = database as? PostgresDatabase {
                let connections = try postgres.serverConnections()
                print("note: the server allows \(connections.limit) connections (\(connections.open) open now); with a pool of "
                      + "\(config.databasePoolSize) per host, at most \(connections.limit / config.databasePoolSize) hosts fit")
            }
            if version < store.latestSchemaVersion {
                print("note: database schema \(version) will be migrated to \(store.latestSchemaVersion) at start")
            } else if version > store.latestSchemaVersion {
                problems.append("database \(config.database): schema \(version) is newer than this binary (\(store.latestSchemaVersion))")
            }
        } catch {
            problems.append("database \(config.database): \(error)")
        }
        Curl.globalInit()
        do {
            try Application.verifier(for: config).preloadKeys()
        } catch {
            problems.append("\(error)")
        }
        if config.openAIAPIKey == nil, config.openAIBaseURL.hasPrefix("https://api.openai.com") {
            problems.append("OPENAI_API_KEY is not set but OPENAI_BASE_URL is OpenAI's API")
        }
        config.summary.forEach { print($0) }
        Capacity.warnings(for: config).forEach { print("warning: \($0)") }
        guard problems.isEmpty else {
            printError("invalid configuration:\n" + problems.map { "  - \($0)" }.joined(separator: "\n"))
            return 78
        }
        print("configuration OK")
        return 0
    }

    private static func printError(_ message: String) {
        Log.toStandardError(Array("chatkit-fcgi: \(message)\n".utf8))
    }
}

struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

struct ServeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `--name value` pairs; anything unknown is a usage error rather than silently ignored.
struct Flags {
    private var values: [String: String] = [:]

    init(_ arguments: [String], allowed: Set<String>) throws {
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            var name = argument
            var value: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            guard allowed.contains(name) else { throw UsageError("unknown option \(argument)") }
            guard let given = value ?? iterator.next() else { throw UsageError("\(name) needs a value") }
            values[name] = given
        }
    }

    subscript(name: String) -> String? { values[name] }
}

extension String {
    func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(1, width - count)) }
}

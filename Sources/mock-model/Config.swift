import Glibc

/// Command line + environment settings, resolved once at startup.
struct Config: Sendable {
    var host = "127.0.0.1"
    var port = 8090
    /// MOCK_DELAY_MS: pause between streamed chunks.
    var delayMs = 0
    /// MOCK_API_KEY: when set, chat endpoints require `Authorization: Bearer <key>`.
    var apiKey: String?

    static let usage = """
        usage: mock-model [--host 127.0.0.1] [--port N]
          --host   loopback address to bind (127.0.0.0/8, ::1 or localhost); default 127.0.0.1
          --port   TCP port (0 = pick a free one); default $MOCK_MODEL_PORT or 8090
        env: MOCK_MODEL_PORT, MOCK_DELAY_MS (default 0), MOCK_API_KEY (optional)
        """

    static func load(arguments: [String]) -> Config {
        var config = Config()
        if let port = environment("MOCK_MODEL_PORT") {
            config.port = parsePort(port, source: "MOCK_MODEL_PORT")
        }
        if let delay = environment("MOCK_DELAY_MS") {
            guard let ms = Int(delay), ms >= 0 else { fail("MOCK_DELAY_MS must be a non-negative integer, got '\(delay)'") }
            config.delayMs = ms
        }
        config.apiKey = environment("MOCK_API_KEY")

        var args = arguments.dropFirst()[...]
        while let arg = args.popFirst() {
            // Accept both `--flag value` and `--flag=value`.
            var name = arg
            var inlineValue: String?
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                name = String(arg[..<eq])
                inlineValue = String(arg[arg.index(after: eq)...])
            }
            switch name {
            case "--host":
                guard let value = inlineValue ?? args.popFirst() else { fail("--host needs a value") }
                config.host = value
            case "--port":
                guard let value = inlineValue ?? args.popFirst() else { fail("--port needs a value") }
                config.port = parsePort(value, source: "--port")
            case "-h", "--help":
                printError(usage)
                exit(0)
            default:
                fail("unknown argument '\(arg)'")
            }
        }
        return config
    }

    private static func parsePort(_ text: String, source: String) -> Int {
        guard let port = Int(text), (0...65535).contains(port) else { fail("\(source) must be a port number, got '\(text)'") }
        return port
    }

    private static func environment(_ name: String) -> String? {
        guard let raw = getenv(name) else { return nil }
        let value = String(cString: raw)
        return value.isEmpty ? nil : value
    }

    static func fail(_ message: String) -> Never {
        printError("mock-model: \(message)\n\(usage)")
        exit(2)
    }
}

/// Writes a line to stderr with write(2), avoiding the C `stderr` global
/// (a shared mutable C variable Swift 6 treats as concurrency-unsafe).
func printError(_ message: String) {
    var line = message
    line += "\n"
    line.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if n <= 0 { if n < 0 && errno == EINTR { continue } else { return } }
            offset += n
        }
    }
}

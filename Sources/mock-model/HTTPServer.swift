import ChatKitFCGI
import Glibc

/// Minimal blocking HTTP/1.1 server: one detached pthread per connection, which reads the
/// requests and answers them; the paced records of a stream go out from the `Pacer`'s thread.
/// A few hundred threads with small stacks are cheap for a local mock.
struct HTTPServer: Sendable {
    let config: Config
    let router: Router

    /// Parsing, serializing and freeing a request body all recurse once per
    /// nesting level; `JSON.maximumDepth` (64) keeps that well inside 256 KB.
    static let threadStackSize = 256 * 1024

    func run() -> Never {
        // Writes to closed sockets must fail with EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        raiseFileDescriptorLimit()

        let (listener, port) = openListener()
        let shownHost = config.host.contains(":") ? "[\(config.host)]" : config.host
        printError("mock-model listening on http://\(shownHost):\(port)")

        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                let err = errno
                if err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM {
                    usleep(10_000)  // out of resources: back off instead of spinning
                } else if err != EINTR && err != ECONNABORTED {
                    printError("mock-model: accept failed: \(String(cString: strerror(err)))")
                }
                continue
            }
            configureClientSocket(fd)
            let router = self.router
            let started = DetachedThread.start(stackBytes: HTTPServer.threadStackSize) {
                ClientConnection(fd: fd).serve(router: router)
            }
            if !started {
                printError("mock-model: could not start a connection thread")
                close(fd)
            }
        }
    }

    private func openListener() -> (fd: Int32, port: Int) {
        guard let address = BindAddress(loopbackHost: config.host) else {
            printError("mock-model: refusing to bind non-loopback host '\(config.host)' (use 127.0.0.0/8 or ::1)")
            exit(2)
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { fatal("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard address.bind(fd, port: config.port) == 0 else { fatal("bind \(config.host):\(config.port)") }
        guard listen(fd, 1024) == 0 else { fatal("listen") }
        return (fd, BindAddress.localPort(of: fd) ?? config.port)
    }

    private func configureClientSocket(_ fd: Int32) {
        var one: Int32 = 1
        // Every SSE record must leave immediately, not wait for Nagle.
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // A client that stops reading must not pin a thread forever.
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private func raiseFileDescriptorLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    private func fatal(_ what: String) -> Never {
        printError("mock-model: \(what) failed: \(String(cString: strerror(errno)))")
        exit(1)
    }
}

/// A parsed loopback address; construction fails for anything non-loopback.
enum BindAddress {
    case v4(in_addr)
    case v6(in6_addr)

    init?(loopbackHost host: String) {
        var name = host
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        if name.lowercased() == "localhost" { name = "127.0.0.1" }
        var v4 = in_addr()
        if inet_pton(AF_INET, name, &v4) == 1 {
            // s_addr is in network order: the first octet is the lowest byte.
            guard UInt32(bigEndian: v4.s_addr) >> 24 == 127 else { return nil }
            self = .v4(v4)
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, name, &v6) == 1 {
            let isLoopback = withUnsafeBytes(of: &v6) { bytes in
                bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1
            }
            guard isLoopback else { return nil }
            self = .v6(v6)
            return
        }
        return nil
    }

    var family: Int32 {
        switch self {
        case .v4: return AF_INET
        case .v6: return AF_INET6
        }
    }

    func bind(_ fd: Int32, port: Int) -> Int32 {
        switch self {
        case .v4(let address):
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = in_port_t(UInt16(port)).bigEndian
            sa.sin_addr = address
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .v6(let address):
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = in_port_t(UInt16(port)).bigEndian
            sa.sin6_addr = address
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }

    /// The bound port (differs from the requested one for `--port 0`).
    static func localPort(of fd: Int32) -> Int? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        return withUnsafeBytes(of: &storage) { bytes in
            // sin_port and sin6_port both sit at offset 2, in network order.
            Int(UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
        }
    }
}

// MARK: - Connections

struct HTTPRequest {
    let method: String
    let target: String
    let version: String
    /// Header names are lowercased; values are trimmed.
    let headers: [(name: String, value: String)]
    let body: [UInt8]

    var path: Substring {
        target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    }

    var isHTTP11: Bool { version == "HTTP/1.1" }

    func header(_ name: String) -> String? {
        headers.first(where: { $0.name == name })?.value
    }

    /// HTTP/1.1 defaults to keep-alive, HTTP/1.0 to close.
    var wantsKeepAlive: Bool {
        let tokens = (header("connection") ?? "").lowercased()
            .split(separator: ",").map { String($0).trimmingWhitespace() }
        if tokens.contains("close") { return false }
        return isHTTP11 || tokens.contains("keep-alive")
    }
}

struct HTTPResponse {
    var status: Int
    var headers: [(String, String)] = []
    var body: [UInt8] = []

    static func json(_ status: Int, _ value: JSON, headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: value.serializedBytes)
    }

    /// OpenAI-style error body.
    static func error(_ status: Int, message: String, type: String, param: String? = nil, code: String? = nil,
                      headers: [(String, String)] = []) -> HTTPResponse {
        let body: JSON = [
            "error": [
                "message": .string(message),
                "type": .string(type),
                "param": JSON(param),
                "code": JSON(code),
            ]
        ]
        return json(status, body, headers: headers)
    }

    /// Status line and headers; a body is framed by Content-Length (none for 204).
    func head(keepAlive: Bool) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(HTTPResponse.reason(status))\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if status != 204 { text += "Content-Length: \(body.count)\r\n" }
        text += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return Array(text.utf8)
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 411: return "Length Required"
        case 413: return "Payload Too Large"
        case 422: return "Unprocessable Entity"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return status < 500 ? "Client Error" : "Server Error"
        }
    }
}

/// One client socket, owned by exactly one thread (hence not Sendable).
final class ClientConnection {
    enum ReadOutcome {
        case request(HTTPRequest)
        case closed
        case malformed(status: Int, message: String)
    }

    static let maxHeaderBytes = 64 * 1024
    static let maxBodyBytes = 64 * 1024 * 1024

    let fd: Int32
    private var buffer: [UInt8] = []
    private var position = 0
    private var scratch = [UInt8](repeating: 0, count: 16 * 1024)

    init(fd: Int32) { self.fd = fd }

    /// Request loop for keep-alive connections; returns when the connection closes.
    func serve(router: Router) {
        defer { close(fd) }
        while true {
            switch readRequest() {
            case .closed:
                return
            case .malformed(let status, let message):
                _ = send(.error(status, message: message, type: "invalid_request_error"), keepAlive: false)
                return
            case .request(let request):
                guard router.handle(request, on: self) else { return }
            }
        }
    }

    // MARK: Writing

    /// Writes everything or reports failure (peer gone, or send timeout). When the socket is
    /// full, `waiting` hears that the write waits for the peer to read (true), and when that
    /// wait ends (false).
    func write(_ bytes: [UInt8], waiting: ((Bool) -> Void)? = nil) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            var waitingForPeer = false
            defer { if waitingForPeer { waiting?(false) } }
            while offset < raw.count {
                // Without waiting first, so that a full socket is noticed; then blocking, which
                // SO_SNDTIMEO bounds.
                let flags = waitingForPeer ? MSG_NOSIGNAL : MSG_NOSIGNAL | MSG_DONTWAIT
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(flags))
                if n > 0 {
                    offset += n
                    if waitingForPeer {
                        waitingForPeer = false
                        waiting?(false)
                    }
                } else if n < 0 && errno == EINTR {
                    continue
                } else if n < 0 && errno == EAGAIN && !waitingForPeer {
                    waitingForPeer = true
                    waiting?(true)
                } else {
                    return false
                }
            }
            return true
        }
    }

    func send(_ response: HTTPResponse, keepAlive: Bool) -> Bool {
        write(response.head(keepAlive: keepAlive) + response.body)
    }

    /// Waits up to `milliseconds`, returning false as soon as the peer closes (poll() on
    /// POLLRDHUP notices a close during the wait itself).
    func waitUnlessClosed(milliseconds: Int) -> Bool {
        let deadline = Clock.monotonicNanoseconds() + UInt64(max(milliseconds, 0)) * 1_000_000
        var events = Int16(POLLIN) | pollReadHangup
        while true {
            let now = Clock.monotonicNanoseconds()
            if now >= deadline { return true }
            let remainingMilliseconds = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&entry, 1, remainingMilliseconds)
            if rc < 0 {
                if errno == EINTR { continue }
                return true  // cannot watch; a write failure will still catch a close
            }
            if rc == 0 { return true }
            if entry.revents & (pollReadHangup | Int16(POLLHUP) | Int16(POLLERR) | Int16(POLLNVAL)) != 0 {
                return false
            }
            if entry.revents & Int16(POLLIN) != 0 {
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
                if n == 0 { return false }
                if n < 0 && errno != EAGAIN && errno != EINTR { return false }
                // A pipelined next request: leave it unread and stop polling for
                // readability (it is level-triggered and would spin); RDHUP still works.
                events = pollReadHangup
            }
        }
    }

    // MARK: Reading

    private func fill() -> Bool {
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                return true
            }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    private func ensureBuffered(_ count: Int) -> Bool {
        while buffer.count - position < count {
            if !fill() { return false }
        }
        return true
    }

    /// Index just past the blank line ending the header block (CRLF or bare LF).
    private func headerEnd() -> Int? {
        var i = position
        while i < buffer.count {
            if buffer[i] == 0x0A {
                if i + 1 < buffer.count && buffer[i + 1] == 0x0A { return i + 2 }
                if i + 2 < buffer.count && buffer[i + 1] == 0x0D && buffer[i + 2] == 0x0A { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    /// Reads one line (without its CR LF); nil on EOF or an overlong line.
    private func readLine(maxLength: Int = 8 * 1024) -> String? {
        var searchFrom = position
        while true {
            if let lf = buffer[searchFrom...].firstIndex(of: 0x0A) {
                var end = lf
                if end > position && buffer[end - 1] == 0x0D { end -= 1 }
                let line = String(decoding: buffer[position..<end], as: UTF8.self)
                position = lf + 1
                return line
            }
            if buffer.count - position > maxLength { return nil }
            searchFrom = buffer.count
            if !fill() { return nil }
        }
    }

    func readRequest() -> ReadOutcome {
        // Drop the previous request's bytes; usually nothing is left over.
        if position > 0 {
            buffer.removeFirst(position)
            position = 0
        }
        var end: Int?
        while true {
            // Tolerate stray blank lines between requests (RFC 9112 2.2).
            while position < buffer.count && (buffer[position] == 0x0D || buffer[position] == 0x0A) { position += 1 }
            end = headerEnd()
            if end != nil { break }
            if buffer.count - position > ClientConnection.maxHeaderBytes {
                return .malformed(status: 431, message: "Request headers too large")
            }
            if !fill() { return .closed }
        }
        // The head is parsed as bytes: splitting, trimming and lowercasing Strings cost the mock
        // a fifth of its instructions per request, on the benchmark's two shared cores.
        var lines = buffer[position..<end!].split(separator: 0x0A)
            .map { line in line.last == 0x0D ? line.dropLast() : line }
            .filter { !$0.isEmpty }[...]
        position = end!
        let requestLine = (lines.popFirst() ?? []).split(separator: UInt8(ascii: " "))
        guard requestLine.count == 3, requestLine[2].starts(with: "HTTP/1.".utf8) else {
            return .malformed(status: 400, message: "Malformed request line")
        }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                return .malformed(status: 400, message: "Malformed header line")
            }
            let name = Self.trimmingSpaces(line[..<colon]).map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }
            headers.append((String(decoding: name, as: UTF8.self),
                            String(decoding: Self.trimmingSpaces(line[(colon + 1)...]), as: UTF8.self)))
        }
        let version = String(decoding: requestLine[2], as: UTF8.self)
        let header = { (name: String) in headers.first(where: { $0.name == name })?.value }

        // curl sends `Expect: 100-continue` for larger bodies and would otherwise
        // stall for a second before sending them.
        if version == "HTTP/1.1", header("expect")?.lowercased() == "100-continue" {
            _ = write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }

        var body: [UInt8] = []
        if let encoding = header("transfer-encoding")?.lowercased() {
            guard encoding == "chunked" else {
                return .malformed(status: 501, message: "Unsupported Transfer-Encoding '\(encoding)'")
            }
            switch readChunkedBody() {
            case .success(let bytes): body = bytes
            case .failure(let outcome): return outcome
            }
        } else if let lengthText = header("content-length") {
            guard let length = Int(lengthText), length >= 0 else {
                return .malformed(status: 400, message: "Invalid Content-Length")
            }
            guard length <= ClientConnection.maxBodyBytes else {
                return .malformed(status: 413, message: "Request body too large")
            }
            guard ensureBuffered(length) else { return .closed }
            body = Array(buffer[position..<(position + length)])
            position += length
        }
        return .request(HTTPRequest(method: String(decoding: requestLine[0], as: UTF8.self),
                                    target: String(decoding: requestLine[1], as: UTF8.self),
                                    version: version, headers: headers, body: body))
    }

    /// Without the spaces and tabs around a header's name or value (HTTP's optional whitespace).
    private static func trimmingSpaces(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isSpace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else {
            return []
        }
        return bytes[first...last]
    }

    private enum ChunkedResult {
        case success([UInt8])
        case failure(ReadOutcome)
    }

    /// Decodes a chunked request body (cheap to support, and avoids surprising
    /// clients that stream their uploads).
    private func readChunkedBody() -> ChunkedResult {
        var body: [UInt8] = []
        while true {
            guard let line = readLine() else { return .failure(.closed) }
            let sizeText = line.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            guard let size = Int(String(sizeText).trimmingWhitespace(), radix: 16), size >= 0 else {
                return .failure(.malformed(status: 400, message: "Invalid chunk size"))
            }
            if size == 0 {
                // Skip trailer fields up to the final blank line.
                while true {
                    guard let trailer = readLine() else { return .failure(.closed) }
                    if trailer.isEmpty { return .success(body) }
                }
            }
            guard body.count + size <= ClientConnection.maxBodyBytes else {
                return .failure(.malformed(status: 413, message: "Request body too large"))
            }
            guard ensureBuffered(size) else { return .failure(.closed) }
            body.append(contentsOf: buffer[position..<(position + size)])
            position += size
            guard let terminator = readLine(), terminator.isEmpty else {
                return .failure(.malformed(status: 400, message: "Malformed chunk"))
            }
        }
    }
}

/// POLLRDHUP (peer shut down its write side) is a GNU extension Glibc's
/// Swift module does not export; the value is fixed in the Linux ABI.
private let pollReadHangup: Int16 = 0x2000

import CFastCGI
import Glibc

/// One accepted FastCGI request: reads the CGI params and body, writes the CGI response.
/// The only place that knows what libfcgi's return codes mean.
///
/// Used by one thread at a time: the worker that accepted the request reads it and writes the
/// head, then, while the worker waits for a model call, the transfer loop writes the records
/// that call produces (`hasRoom`, `write`), then the worker again.
final class FastCGIExchange: ResponseWriter {
    private let request: UnsafeMutablePointer<FCGX_Request>
    private var pendingHead: [UInt8] = []
    private(set) var headWritten = false
    var extraHeaders: [(String, String)] = []
    private(set) var status = 0
    /// A write failed: the client is gone, or read nothing for the write wait.
    private(set) var failed = false
    /// The request body was read to its end: nothing from the server is left unread.
    private(set) var inputFullyRead = false
    /// What may still be written without blocking, by the reckoning in `hasRoom`.
    private var provenRoom = 0
    /// nginx's `$request_id` (the `REQUEST_ID` param) when it is a plausible id, else a new one.
    let requestID: String
    private let metrics: ServerMetrics
    /// The response is an event stream: counted among the open streams until it finishes.
    private var streaming = false

    /// A write that can send nothing for `writeWaitSeconds` fails, as to a client gone: a worker
    /// thread writing to a client that reads nothing is back within that time. (The transfer
    /// loop writes only when there is room.)
    init(_ request: UnsafeMutablePointer<FCGX_Request>, metrics: ServerMetrics, writeWaitSeconds: Int) {
        self.request = request
        self.metrics = metrics
        let given = FCGX_GetParam("REQUEST_ID", request.pointee.envp).map { String(cString: $0) }
        requestID = given.flatMap(FastCGIParams.plausibleRequestID) ?? Self.newRequestID()
        if let socket = clientDescriptor {
            do {
                try System.limitWriteWaits(socket, seconds: writeWaitSeconds)
            } catch {
                Log.warning("our client's socket: \(error)")
            }
        }
    }

    /// 32 hex digits, as nginx makes `$request_id`.
    static func newRequestID() -> String {
        var generator = SystemRandomNumberGenerator()
        let halves: (UInt64, UInt64) = (generator.next(), generator.next())
        return String(unsafeUninitializedCapacity: 32) { text in
            for index in 0..<32 {
                let half = index < 16 ? halves.0 : halves.1
                let nibble = UInt8(truncatingIfNeeded: half >> UInt64(60 - 4 * (index % 16))) & 0xF
                text[index] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
            }
            return 32
        }
    }

    var clientDescriptor: Int32? { request.pointee.ipcFd >= 0 ? request.pointee.ipcFd : nil }

    /// A Unix socket that polls writable has three quarters of its send buffer free (TCP a
    /// third). Writes are charged against a quarter of it, at twice their size plus a kilobyte
    /// per system call (more than the kernel's own accounting per buffer), before the socket is
    /// polled again; so half (TCP: a twelfth) stays free for what one chunk of the model's
    /// answer writes, and a poll serves a few dozen records instead of one.
    var hasRoom: Bool {
        if provenRoom > 0 { return true }
        guard let socket = clientDescriptor else { return true }
        do {
            guard try System.isReady(socket, for: Int16(POLLOUT)) else { return false }
            provenRoom = Int(try System.socketOption(socket, level: SOL_SOCKET, SO_SNDBUF)) / 4
        } catch {
            // The write that follows finds out what is wrong with the socket.
            Log.warning("our client's socket: \(error)")
        }
        return true
    }

    /// libfcgi writes from an 8 KiB buffer: one system call per 8 KiB, plus FastCGI's framing.
    private static func charge(_ bytes: Int) -> Int { 2 * (bytes + 16) + 1024 * (1 + bytes / 8192) }

    func param(_ name: String) -> String? {
        guard let value = FCGX_GetParam(name, request.pointee.envp) else { return nil }
        return String(cString: value)
    }

    /// Builds the core's request, or the error that ends it before any handler runs.
    func readRequest(maxBodyBytes: Int) -> Result<HTTPRequest, APIError> {
        let method = param("REQUEST_METHOD") ?? "GET"
        let rawURI = param("REQUEST_URI") ?? ""
        let path = param("DOCUMENT_URI")
            ?? param("SCRIPT_NAME").map { $0 + (param("PATH_INFO") ?? "") }
            ?? String(rawURI.split(separator: "?", maxSplits: 1).first ?? "/")
        var headers: [String: String] = [:]
        var cursor = request.pointee.envp
        while let entry = cursor?.pointee {
            if let (name, value) = FastCGIParams.header(fromParam: entry) { headers[name] = value }
            cursor = cursor?.advanced(by: 1)
        }
        var httpRequest = HTTPRequest(
            method: method, path: path.isEmpty ? "/" : path,
            contentType: param("CONTENT_TYPE").flatMap { $0.isEmpty ? nil : $0 }, headers: headers)
        httpRequest.requestID = requestID
        if param("REQUEST_SCHEME") == "https" || param("HTTPS") == "on" { httpRequest.scheme = "https" }

        let declaredLength = param("CONTENT_LENGTH").flatMap { Int($0) } ?? 0
        if declaredLength > maxBodyBytes { return .failure(.payloadTooLarge(limit: maxBodyBytes)) }
        // Read to the end of STDIN (nginx may send no length), never keeping more than the limit.
        var body: [UInt8] = []
        body.reserveCapacity(max(0, declaredLength))
        // An uninitialised buffer: zeroing 16 KiB per request costs more than reading the body.
        let withinLimit = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 16 << 10) { chunk in
            while true {
                let count = Int(FCGX_GetStr(chunk.baseAddress, Int32(chunk.count), request.pointee.in))
                if count <= 0 {
                    inputFullyRead = FCGX_GetError(request.pointee.in) == 0
                    return true
                }
                body.append(contentsOf: UnsafeRawBufferPointer(start: chunk.baseAddress, count: count))
                if body.count > maxBodyBytes { return false }
            }
        }
        guard withinLimit else { return .failure(.payloadTooLarge(limit: maxBodyBytes)) }
        httpRequest.body = body
        return .success(httpRequest)
    }

    func writeHead(status: Int, headers: [(String, String)]) {
        precondition(!headWritten, "a response head is written once")
        headWritten = true
        self.status = status
        var head = Array("Status: \(status) \(HTTPStatus.reason(status))\r\n".utf8)
        if headers.contains(where: { $0.0 == "Content-Type" && $0.1.hasPrefix("text/event-stream") }) {
            streaming = true
            metrics.streamsChanged(by: 1)
        }
        head.reserveCapacity(256)
        for (name, value) in headers + extraHeaders + [("X-Request-Id", requestID)] {
            head += name.utf8
            head += ": ".utf8
            // A value relayed from upstream (Retry-After) must never be able to end the head.
            if value.utf8.contains(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }) {
                head += value.utf8.lazy.filter { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }
            } else {
                head += value.utf8
            }
            head += "\r\n".utf8
        }
        head += "\r\n".utf8
        pendingHead = head
    }

    /// Writes and flushes; the first call also carries the head.
    func write(_ bytes: [UInt8]) -> Bool {
        guard !failed else { return false }
        provenRoom -= Self.charge(pendingHead.count + bytes.count)
        if !pendingHead.isEmpty {
            guard put(pendingHead) else { return false }
            pendingHead.removeAll()
        }
        guard put(bytes), FCGX_FFlush(request.pointee.out) == 0 else {
            failed = true
            return false
        }
        return true
    }

    private func put(_ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return true }
        let written = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                FCGX_PutStr($0, Int32(buffer.count), request.pointee.out)
            }
        }
        if written != Int32(bytes.count) { failed = true }
        return !failed
    }

    /// A head with no body yet (a 204, say) still has to reach the client.
    func finish() {
        if !pendingHead.isEmpty { _ = write([]) }
        if streaming { metrics.streamsChanged(by: -1) }
    }
}


/// What the responder itself reads out of FastCGI parameters (libfcgi splits them; their
/// values are the client's bytes).
public enum FastCGIParams {
    /// `HTTP_X_USER_ID=v` becomes `("x-user-id", "v")`; other params are not headers. Read as
    /// bytes: this runs for every parameter of every request.
    public static func header(fromParam entry: UnsafePointer<CChar>) -> (String, String)? {
        let param = UnsafeRawBufferPointer(start: entry, count: strlen(entry))
        guard param.starts(with: "HTTP_".utf8), let equals = param.firstIndex(of: UInt8(ascii: "=")) else { return nil }
        let name = param[5..<equals].map { byte -> UInt8 in
            switch byte {
            case UInt8(ascii: "_"): UInt8(ascii: "-")
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): byte + 32
            default: byte
            }
        }
        return (String(decoding: name, as: UTF8.self), String(decoding: param[(equals + 1)...], as: UTF8.self))
    }

    /// Letters, digits, `-`, `_` and `.`, at most 64: it is echoed in a header and a log line.
    public static func plausibleRequestID(_ text: String) -> String? {
        let allowed = text.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
        return allowed && (1...64).contains(text.utf8.count) ? text : nil
    }
}

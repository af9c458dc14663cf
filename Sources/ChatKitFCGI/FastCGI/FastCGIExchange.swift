import CFastCGI
import Glibc

/// One accepted FastCGI request: reads the CGI params and body, writes the CGI response.
/// The only place that knows what libfcgi's return codes mean.
///
/// libfcgi accepts the connection and reads the request; then its state is freed (two 8 KiB
/// stream buffers were a third of what an open stream held) and the response leaves in
/// records framed here (`FastCGIRecords`), each write in one system call as a rule. The
/// connection is closed after every request: nginx's `fastcgi_keep_conn` is not served.
///
/// Used by one thread at a time: the request's task reads the request and writes the head,
/// then, while the task waits for a model call, the transfer loop writes the records that call
/// produces (`hasRoom`, `write`), then the task again.
final class FastCGIExchange: ResponseWriter {
    /// The connection from nginx, ours to write to and close once the request is read.
    private let connection: Int32
    /// FastCGI's number for the request on that connection, repeated in every record.
    private let recordID: UInt16
    /// The request, or the error that ends it before any handler runs.
    let incoming: Result<HTTPRequest, APIError>
    /// For the log line of a request that could not be read.
    let method: String
    let path: String
    private var pendingHead: [UInt8] = []
    private(set) var headWritten = false
    var extraHeaders: [(String, String)] = []
    private(set) var status = 0
    /// A write failed: the client is gone, or read nothing for the write wait.
    private var failed = false
    private var closed = false
    /// Said once per process: kept connections are closed all the same.
    private static let keptConnectionsNoted = Locked(false)
    /// The request body was read to its end: nothing from the server is left unread.
    private var inputFullyRead = false
    /// What may still be written without blocking, by the reckoning in `hasRoom`.
    private var provenRoom = 0
    /// nginx's `$request_id` (the `REQUEST_ID` param) when it is a plausible id, else a new one.
    let requestID: String
    private let metrics: ServerMetrics
    private let writeWaitSeconds: Int
    /// The response is an event stream: counted among the open streams until it finishes.
    private var streaming = false

    /// Reads the request, then frees libfcgi's `request` (its memory too). A write that can
    /// send nothing for `writeWaitSeconds` fails, as to a client gone: a task writing to a
    /// client that reads nothing is back within that time. (The transfer loop writes only when
    /// there is room.)
    init(reading request: UnsafeMutablePointer<FCGX_Request>, bodyLimit: (_ path: String) -> Int, metrics: ServerMetrics,
         writeWaitSeconds: Int) {
        connection = request.pointee.ipcFd
        recordID = UInt16(truncatingIfNeeded: request.pointee.requestId)
        if request.pointee.keepConnection != 0, Self.keptConnectionsNoted.withLock({ noted in
            defer { noted = true }
            return !noted
        }) {
            Log.warning("nginx asks to keep FastCGI connections open (fastcgi_keep_conn on); each is closed after its request")
        }
        self.metrics = metrics
        self.writeWaitSeconds = writeWaitSeconds
        let envp = request.pointee.envp
        func param(_ name: String) -> String? { FCGX_GetParam(name, envp).map { String(cString: $0) } }
        requestID = param("REQUEST_ID").flatMap(FastCGIParams.plausibleRequestID) ?? Self.newRequestID()
        method = param("REQUEST_METHOD") ?? "GET"
        let rawURI = param("REQUEST_URI") ?? ""
        path = param("DOCUMENT_URI")
            ?? param("SCRIPT_NAME").map { $0 + (param("PATH_INFO") ?? "") }
            ?? String(rawURI.split(separator: "?", maxSplits: 1).first ?? "/")
        var headers: [String: String] = [:]
        var cursor = envp
        while let entry = cursor?.pointee {
            if let (name, value) = FastCGIParams.header(fromParam: entry) { headers[name] = value }
            cursor = cursor?.advanced(by: 1)
        }
        var httpRequest = HTTPRequest(
            method: method, path: path.isEmpty ? "/" : path,
            contentType: param("CONTENT_TYPE").flatMap { $0.isEmpty ? nil : $0 }, headers: headers)
        httpRequest.requestID = requestID
        httpRequest.query = param("QUERY_STRING") ?? ""
        if param("REQUEST_SCHEME") == "https" || param("HTTPS") == "on" { httpRequest.scheme = "https" }

        let declaredLength = param("CONTENT_LENGTH").flatMap { Int($0) } ?? 0
        let maxBodyBytes = bodyLimit(httpRequest.path)
        switch declaredLength > maxBodyBytes ? .tooLarge : Self.readBody(request.pointee.in, declaredLength: declaredLength, limit: maxBodyBytes) {
        case .complete(let body):
            httpRequest.body = body
            incoming = .success(httpRequest)
            inputFullyRead = true
        case .tooLarge:
            incoming = .failure(.payloadTooLarge(limit: maxBodyBytes))
        case .broken:
            incoming = .failure(.badRequest("the request body ended early"))
        }
        FCGX_Free(request, 0)  // streams and params; the connection stays open
        request.deallocate()
        do {
            try System.limitWriteWaits(connection, seconds: writeWaitSeconds)
        } catch {
            Log.warning("our client's socket: \(error)")
        }
    }

    private enum Body {
        case complete([UInt8])
        /// More than the limit: the rest is left unread.
        case tooLarge
        /// The connection failed before STDIN ended.
        case broken
    }

    /// Reads to the end of STDIN (nginx may send no length), never keeping more than `limit`.
    private static func readBody(_ input: UnsafeMutablePointer<FCGX_Stream>?, declaredLength: Int, limit: Int) -> Body {
        var body: [UInt8] = []
        body.reserveCapacity(max(0, declaredLength))
        // An uninitialised buffer: zeroing 16 KiB per request costs more than reading the body.
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 16 << 10) { chunk in
            while true {
                let count = Int(FCGX_GetStr(chunk.baseAddress, Int32(chunk.count), input))
                if count <= 0 { return FCGX_GetError(input) == 0 ? .complete(body) : .broken }
                body.append(contentsOf: UnsafeRawBufferPointer(start: chunk.baseAddress, count: count))
                if body.count > limit { return .tooLarge }
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

    var clientDescriptor: Int32? { connection }

    /// A Unix socket that polls writable has three quarters of its send buffer free (TCP a
    /// third). Writes are charged against a quarter of it, at twice their size plus a kilobyte
    /// per system call (more than the kernel's own accounting per buffer), before the socket is
    /// polled again; so half (TCP: a twelfth) stays free for what one chunk of the model's
    /// answer writes, and a poll serves a few dozen records instead of one.
    var hasRoom: Bool {
        if provenRoom > 0 { return true }
        do {
            guard try System.isReady(connection, for: Int16(POLLOUT)) else { return false }
            provenRoom = Int(try System.socketOption(connection, level: SOL_SOCKET, SO_SNDBUF)) / 4
        } catch {
            // The write that follows finds out what is wrong with the socket.
            Log.warning("our client's socket: \(error)")
        }
        return true
    }

    /// Twice the bytes, a record header, and a kilobyte per 8 KiB the kernel may take as a
    /// buffer of its own: more than its own accounting.
    private static func charge(_ bytes: Int) -> Int { 2 * (bytes + 16) + 1024 * (1 + bytes / 8192) }

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

    /// Writes at once (one system call unless the kernel takes it in parts); the first call
    /// also carries the head.
    func write(_ bytes: [UInt8]) -> Bool {
        guard !failed else { return false }
        let contentCount = pendingHead.count + bytes.count
        guard contentCount > 0 else { return true }
        // Made to size and freed after the write: a buffer kept for reuse would hold its
        // largest record for as long as the stream lasts.
        var records: [UInt8] = []
        if pendingHead.isEmpty {
            FastCGIRecords.appendStdout(bytes, requestID: recordID, to: &records)
        } else {
            FastCGIRecords.appendStdout(pendingHead + bytes, requestID: recordID, to: &records)
            pendingHead = []
        }
        provenRoom -= Self.charge(contentCount)
        return send(records)
    }

    private func send(_ records: [UInt8]) -> Bool {
        do {
            try records.withUnsafeBytes { try System.writeAll(connection, $0, waitLimitSeconds: writeWaitSeconds) }
        } catch {
            failed = true
        }
        return !failed
    }

    /// Ends the response: the head alone if nothing followed it (a 204, say), FastCGI's closing
    /// records, and the connection closed. Called once.
    func finish() {
        precondition(!closed, "an exchange is finished once")
        closed = true
        if streaming { metrics.streamsChanged(by: -1) }
        // After a failed write nothing more can reach the client: the closing records would
        // only wait out the write wait again.
        if !failed {
            let head = pendingHead.isEmpty ? [] : FastCGIRecords.stdout(pendingHead, requestID: recordID)
            _ = send(head + FastCGIRecords.end(requestID: recordID))
        }
        if inputFullyRead || failed {
            close(connection)
        } else {
            Self.closeAfterInput(connection)
        }
    }

    /// Closes once nginx has sent everything: a close with input unread resets the connection,
    /// and the reset can overtake the answer. Gives up after 2 s without input, as libfcgi's own
    /// close does.
    private static func closeAfterInput(_ connection: Int32) {
        shutdown(connection, Int32(SHUT_WR))
        var entry = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { discard in
            while poll(&entry, 1, 2000) > 0, read(connection, discard.baseAddress, discard.count) > 0 {}
        }
        close(connection)
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


/// The records the responder sends (FastCGI 1.0, section 5): its answer as `FCGI_STDOUT`
/// records, then an empty one that ends that stream and an `FCGI_END_REQUEST`. Bytes only, so
/// they are tested without a socket.
public enum FastCGIRecords {
    static let version: UInt8 = 1
    static let stdoutType: UInt8 = 6
    static let endRequestType: UInt8 = 3
    /// A record's content length is 16 bits.
    public static let maxContent = 65535

    /// `content` in as many records as its length needs, unpadded (padding is optional). None
    /// for no content: an empty record would end the stream.
    public static func stdout(_ content: [UInt8], requestID: UInt16) -> [UInt8] {
        var records: [UInt8] = []
        appendStdout(content, requestID: requestID, to: &records)
        return records
    }

    static func appendStdout(_ content: [UInt8], requestID: UInt16, to records: inout [UInt8]) {
        guard !content.isEmpty else { return }
        records.reserveCapacity(records.count + content.count + 8 * (1 + content.count / maxContent))
        var start = 0
        repeat {
            let length = min(maxContent, content.count - start)
            appendHeader(type: stdoutType, requestID: requestID, contentLength: length, to: &records)
            records += content[start..<(start + length)]
            start += length
        } while start < content.count
    }

    /// The end of STDOUT, then the request complete with exit status 0.
    public static func end(requestID: UInt16) -> [UInt8] {
        var records: [UInt8] = []
        appendHeader(type: stdoutType, requestID: requestID, contentLength: 0, to: &records)
        appendHeader(type: endRequestType, requestID: requestID, contentLength: 8, to: &records)
        records += [0, 0, 0, 0, 0 /* FCGI_REQUEST_COMPLETE */, 0, 0, 0]
        return records
    }

    private static func appendHeader(type: UInt8, requestID: UInt16, contentLength: Int, to records: inout [UInt8]) {
        let header = (version, type, UInt8(requestID >> 8), UInt8(requestID & 0xFF),
                      UInt8(contentLength >> 8), UInt8(contentLength & 0xFF), UInt8(0), UInt8(0))
        withUnsafeBytes(of: header) { records.append(contentsOf: $0) }
    }
}

import CFastCGI
import Glibc

/// One accepted FastCGI request: reads the CGI params and body, writes the CGI response.
/// The only place that knows what libfcgi's return codes mean.
final class FastCGIExchange: ResponseWriter {
    private let request: UnsafeMutablePointer<FCGX_Request>
    private var pendingHead: [UInt8] = []
    private(set) var headWritten = false
    private(set) var status = 0
    private var failed = false
    /// The request body was read to its end: nothing from the server is left unread.
    private(set) var inputFullyRead = false

    init(_ request: UnsafeMutablePointer<FCGX_Request>) {
        self.request = request
    }

    var clientDescriptor: Int32? { request.pointee.ipcFd >= 0 ? request.pointee.ipcFd : nil }

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
            let text = String(cString: entry)
            if text.hasPrefix("HTTP_"), let equals = text.firstIndex(of: "=") {
                let name = text[text.index(text.startIndex, offsetBy: 5)..<equals].lowercased()
                    .replacingAll("_", with: "-")
                headers[name] = String(text[text.index(after: equals)...])
            }
            cursor = cursor?.advanced(by: 1)
        }
        var httpRequest = HTTPRequest(
            method: method, path: path.isEmpty ? "/" : path,
            contentType: param("CONTENT_TYPE").flatMap { $0.isEmpty ? nil : $0 }, headers: headers)
        if param("REQUEST_SCHEME") == "https" || param("HTTPS") == "on" { httpRequest.scheme = "https" }

        let declaredLength = param("CONTENT_LENGTH").flatMap { Int($0) } ?? 0
        if declaredLength > maxBodyBytes { return .failure(.payloadTooLarge(limit: maxBodyBytes)) }
        // Read to the end of STDIN (nginx may send no length), never keeping more than the limit.
        var body: [UInt8] = []
        body.reserveCapacity(max(0, declaredLength))
        var chunk = [CChar](repeating: 0, count: 16 << 10)
        while true {
            let count = Int(FCGX_GetStr(&chunk, Int32(chunk.count), request.pointee.in))
            if count <= 0 {
                inputFullyRead = FCGX_GetError(request.pointee.in) == 0
                break
            }
            chunk.withUnsafeBytes { body.append(contentsOf: $0.prefix(count)) }
            if body.count > maxBodyBytes { return .failure(.payloadTooLarge(limit: maxBodyBytes)) }
        }
        httpRequest.body = body
        return .success(httpRequest)
    }

    func writeHead(status: Int, headers: [(String, String)]) {
        precondition(!headWritten, "a response head is written once")
        headWritten = true
        self.status = status
        var head = "Status: \(status) \(HTTPStatus.reason(status))\r\n"
        for (name, value) in headers {
            // A value relayed from upstream (Retry-After) must never be able to end the head.
            head += "\(name): \(String(value.unicodeScalars.filter { $0 != "\r" && $0 != "\n" }))\r\n"
        }
        head += "\r\n"
        pendingHead = Array(head.utf8)
    }

    /// Writes and flushes; the first call also carries the head.
    func write(_ bytes: [UInt8]) -> Bool {
        guard !failed else { return false }
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
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }
}

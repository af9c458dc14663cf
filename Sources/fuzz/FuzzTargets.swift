import ChatKitFCGI

/// The parsers that read untrusted bytes, each fed whatever the fuzzer makes. Parsing may fail;
/// it may never crash, and what parses must read back the same (the properties checked here).
///
/// Built with `-sanitize=fuzzer,address -DFUZZING` (Tests/fuzz), libFuzzer drives one target
/// per run, named by CHATKIT_FUZZ_TARGET. Built normally, `fuzz TARGET FILE...` runs files
/// through a target: how the found inputs kept under Tests/Fuzz are replayed by the tests.
enum FuzzTarget: String, CaseIterable {
    case json, sse, chunk, jwt, jwks, chatRequest = "chat-request", chatkitInput = "chatkit-input",
        fastcgiParams = "fastcgi-params", jsonrpc, multipart

    /// An HS256 verifier whose secret the fuzzer has to guess; an EdDSA key set from the input.
    private static let verifier = JWTVerifier(
        hmacKey: Array("fuzzing-secret-0123456789abcdef012345".utf8), keySource: nil, issuer: "https://issuer.example",
        audience: "https://app.example")

    func run(_ bytes: [UInt8]) {
        switch self {
        case .json:
            // What parses serializes to text that parses to the same value.
            guard let parsed = try? JSON.parse(bytes) else { return }
            precondition((try? JSON.parse(parsed.serializedBytes)) == parsed, "JSON does not read back as written")
        case .sse:
            // The same events however the bytes are split: here, at every length the first byte picks.
            guard let first = bytes.first else { return }
            let stream = Array(bytes.dropFirst())
            var whole = SSEDecoder()
            var expected: [SSEEvent] = []
            whole.feed(stream) { expected.append($0) }
            var pieces = SSEDecoder()
            var received: [SSEEvent] = []
            let size = Int(first % 16) + 1
            var start = 0
            while start < stream.count {
                pieces.feed(Array(stream[start..<min(start + size, stream.count)])) { received.append($0) }
                start += size
            }
            precondition(received == expected, "SSE events depend on how the bytes were split")
        case .chunk:
            var accumulator = ToolCallAccumulator()
            if let chunk = try? bytes.withUnsafeBufferPointer({ try ChatCompletionChunk(bytes: $0) }) {
                accumulator.add(chunk.toolCalls)
                _ = accumulator.finish()
            }
        case .jwt:
            _ = try? Self.verifier.verify(authorizationHeader: "Bearer " + String(decoding: bytes, as: UTF8.self))
        case .jwks:
            guard let set = try? JSONWebKeySet(document: bytes) else { return }
            for key in set.keys { _ = key.verify(signature: Array(bytes.prefix(64)), signingInput: bytes) }
        case .chatRequest:
            _ = try? ChatRequest(body: bytes)
        case .chatkitInput:
            guard let envelope = try? JSON.parse(bytes) else { return }
            _ = try? UserInput(envelope["params"]?["input"] ?? envelope)
            // Dictation: base64 audio and its type.
            if let audio = envelope["params"]?["audio_base64"]?.stringValue, let decoded = Base64.decode(audio) {
                _ = AudioClip(bytes: decoded, mimeType: envelope["params"]?["mime_type"]?.stringValue ?? "")
            }
        case .fastcgiParams:
            var param = bytes.filter { $0 != 0 }
            param.append(0)
            param.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { _ = FastCGIParams.header(fromParam: $0.baseAddress!) }
            }
            _ = FastCGIParams.plausibleRequestID(String(decoding: bytes, as: UTF8.self))
        case .jsonrpc:
            struct NoStore: Error {}
            _ = MCPServer(toolbox: TaskTools.toolbox).respond(to: bytes, protocolVersionHeader: nil) { throw NoStore() }
        case .multipart:
            // The bytes as a whole form, and as the one file of a form: then they must read back
            // unchanged, unless they hold the delimiter themselves. Also as a query and a data URL.
            let contentType = "multipart/form-data; boundary=fuzz"
            if let form = MultipartForm(body: bytes, contentType: contentType) {
                for field in form.fields { precondition(field.bytes.endIndex <= bytes.count, "a field outside the body") }
            }
            let framed = Array("--fuzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\n".utf8) + bytes
                + Array("\r\n--fuzz--\r\n".utf8)
            let file = MultipartForm(body: framed, contentType: contentType)?.field("file")
            let padded = Array("\r\n".utf8) + bytes + Array("\r\n".utf8)
            let holdsDelimiter = padded.indices.dropLast(7).contains { padded[$0..<($0 + 8)].elementsEqual("\r\n--fuzz".utf8) }
            precondition(holdsDelimiter || file.map { Array($0.bytes) } == bytes, "a form's file does not read back")
            var request = HTTPRequest(method: "GET", path: "/")
            request.query = String(decoding: bytes, as: UTF8.self)
            _ = request.queryParameter("signature")
            if let (mimeType, decoded) = ChatRequest.dataURL(String(decoding: bytes, as: UTF8.self)) {
                _ = AttachmentRules.content(decoded, matches: mimeType)
            }
        }
    }
}

#if FUZZING
import Glibc

nonisolated(unsafe) private var target = FuzzTarget.json

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    guard let name = getenv("CHATKIT_FUZZ_TARGET").map({ String(cString: $0) }), let chosen = FuzzTarget(rawValue: name) else {
        fatalError("set CHATKIT_FUZZ_TARGET to one of " + FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))
    }
    target = chosen
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// SwiftPM links an executable's entry point under the target's name; here it hands over to
/// libFuzzer's driver.
@_cdecl("fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzerTestOneInput(data, size) }
}
#else
import Glibc

@main
enum Replay {
    /// `fuzz TARGET FILE_OR_DIRECTORY...`: every file through the target; a crash is a failure.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name), arguments.count > 1 else {
            print("usage: fuzz TARGET FILE_OR_DIRECTORY...; targets: " + FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))
            exit(64)
        }
        var count = 0
        for path in arguments.dropFirst() {
            for file in files(at: path) {
                guard let bytes = try? FileSystem.read(file, limit: 16 << 20) else { continue }
                target.run(bytes)
                count += 1
            }
        }
        print("\(name): \(count) inputs replayed")
    }

    private static func files(at path: String) -> [String] {
        guard let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var found: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if !name.hasPrefix(".") { found.append(path + "/" + name) }
        }
        return found.sorted()
    }
}
#endif

@testable import ChatKitFCGI
import Testing

/// The router and each face's own error answers, driven without sockets.
@Suite struct RouterTests {
    static let secret = "router-test-secret-0123456789abcdef"
    let database = TemporaryDatabase()
    let worker: Worker

    init() throws {
        var config = Config()
        config.betterAuthSecret = Self.secret
        config.mcpAllowedOrigins = ["https://app.example"]
        config.publicURL = "https://app.example"
        _ = try database.store()
        let app = Application(config: config, verifier: Application.verifier(for: config),
                              database: SQLiteDatabase(path: database.path))
        worker = Worker(app: app)
    }

    final class Answer: ResponseWriter {
        private(set) var status = 0
        private(set) var headers: [String: String] = [:]
        private(set) var body = ""
        private(set) var headWritten = false
        var extraHeaders: [(String, String)] = []
        func writeHead(status: Int, headers: [(String, String)]) {
            headWritten = true
            self.status = status
            for (name, value) in headers + extraHeaders { self.headers[name] = value }
        }
        func write(_ bytes: [UInt8]) -> Bool {
            body += String(decoding: bytes, as: UTF8.self)
            return true
        }
        var clientDescriptor: Int32? { nil }
        var hasRoom: Bool { true }
        var detail: String? { (try? JSON.parse(body))?["detail"]?.stringValue }
    }

    func send(_ path: String, method: String = "POST", body: String = "", headers: [String: String] = [:],
              token: String? = DevToken.mint(subject: "alice", secret: secret, ttlSeconds: 60, issuer: nil, audience: nil)) async -> Answer {
        var allHeaders = headers
        if let token { allHeaders["authorization"] = "Bearer \(token)" }
        let request = HTTPRequest(method: method, path: path, contentType: "application/json", headers: allHeaders,
                                  body: Array(body.utf8))
        let answer = Answer()
        _ = await worker.handle(request, writer: answer)
        return answer
    }

    @Test func aDrainingServerTurnsEveryFaceAwayWithRetryAfter() async {
        worker.app.lifecycle.beginDraining()
        for path in ["/api/chat", "/api/chatkit", "/api/mcp"] {
            let answer = await send(path, body: "{}")
            #expect(answer.status == 503 && answer.headers["Retry-After"] == "1", "\(path)")
            #expect(answer.detail == "the server is restarting; retry", "\(path)")
        }
        #expect(await send("/api/nowhere").status == 404, "an unknown path is still unknown")
    }

    @Test func whileDrainingTheProcessIsLiveButNotReady() async {
        #expect(await send("/readyz", method: "GET", token: nil).status == 200)
        worker.app.lifecycle.beginDraining()
        #expect(await send("/livez", method: "GET", token: nil).status == 200)
        let ready = await send("/readyz", method: "GET", token: nil)
        #expect(ready.status == 503 && ready.detail == "the server is draining for a restart")
        #expect(await send("/metrics", method: "GET", token: nil).status == 200)
    }

    @Test func aLimitReachedIsA429WithRetryAfterAndTheRequestsStandingIsInTheHeaders() async throws {
        var config = Config()
        config.betterAuthSecret = Self.secret
        config.userRequests = 2
        config.userRequestsWindowSeconds = 86_400  // all three fall in one window
        let limited = Worker(app: Application(config: config, verifier: Application.verifier(for: config),
                                              database: SQLiteDatabase(path: database.path)))
        func list() async -> Answer {
            let answer = Answer()
            let token = DevToken.mint(subject: "limited", secret: Self.secret, ttlSeconds: 60, issuer: nil, audience: nil)
            _ = await limited.handle(HTTPRequest(method: "POST", path: "/api/chatkit", contentType: "application/json",
                                           headers: ["authorization": "Bearer \(token)"],
                                           body: Array(#"{"type":"threads.list","params":{}}"#.utf8)), writer: answer)
            return answer
        }
        let first = await list(), second = await list(), third = await list()
        #expect(first.status == 200 && first.headers["X-RateLimit-Remaining-Requests"] == "1")
        #expect(second.status == 200 && second.headers["X-RateLimit-Remaining-Requests"] == "0")
        #expect(third.status == 429 && third.detail == "too many requests: at most 2 in 86400 s")
        #expect(Int(third.headers["Retry-After"] ?? "") ?? 0 >= 1)
        #expect(limited.app.metrics.rateLimited.value(labels: ["requests"]) == 1)
    }

    @Test func theMCPChallengeNamesItsMetadataAfterTheScheme() async {
        let missing = await send("/api/mcp", body: "{}", token: nil)
        #expect(missing.status == 401)
        #expect(missing.headers["WWW-Authenticate"]
                == #"Bearer resource_metadata="https://app.example/.well-known/oauth-protected-resource/api/mcp""#)
        let bad = await send("/api/mcp", body: "{}", token: "not.a.token")
        #expect(bad.headers["WWW-Authenticate"]
                == #"Bearer error="invalid_token", resource_metadata="https://app.example/.well-known/oauth-protected-resource/api/mcp""#)
        #expect(await send("/api/chat", body: "{}", token: nil).headers["WWW-Authenticate"] == "Bearer")
    }

    @Test func mcpErrorsCarryCORSForAnAllowedOriginOnly() async {
        let allowed = await send("/api/mcp", method: "GET", headers: ["origin": "https://app.example"])
        #expect(allowed.status == 405 && allowed.headers["Allow"] == "POST")
        #expect(allowed.headers["Access-Control-Allow-Origin"] == "https://app.example")
        let other = await send("/api/mcp", body: "{}", headers: ["origin": "https://evil.example"])
        #expect(other.status == 403 && other.headers["Access-Control-Allow-Origin"] == nil)
        let preflight = await send("/api/mcp", method: "OPTIONS", headers: ["origin": "https://app.example"], token: nil)
        #expect(preflight.status == 204 && preflight.headers["Access-Control-Allow-Methods"] == "POST")
    }

    @Test func aChatKitRequestWithoutParamsIsToldTheShapeItNeeds() async {
        let list = await send("/api/chatkit", body: #"{"type":"threads.list"}"#)
        #expect(list.status == 422)
        #expect(list.detail?.contains(#"{"type":"threads.list","params":{}}"#) == true, "\(list.body)")
        let create = await send("/api/chatkit", body: #"{"type":"threads.create"}"#)
        #expect(create.status == 422 && create.detail?.contains(#""input":{"content":[{"type":"input_text""#) == true)
        let listed = await send("/api/chatkit", body: #"{"type":"threads.list","params":{}}"#)
        #expect(listed.status == 200 && (try? JSON.parse(listed.body))?["data"] == [])
    }

    @Test func unknownPathsAndMethodsAreRefusedAsSuch() async {
        #expect(await send("/api/other").status == 404)
        let wrongMethod = await send("/api/chat", method: "GET")
        #expect(wrongMethod.status == 405 && wrongMethod.headers["Allow"] == "POST")
        let metadata = await send("/.well-known/oauth-protected-resource", method: "GET", token: nil)
        #expect(metadata.status == 200 && (try? JSON.parse(metadata.body))?["resource"] == "https://app.example/api/mcp")
    }

    @Test func attachmentPathsAreRoutedByTheirShape() {
        #expect(AttachmentEndpoint.Route(path: "/api/chatkit/attachments") == .direct)
        #expect(AttachmentEndpoint.Route(path: "/api/chatkit/attachments/atc_1/upload") == .upload(id: "atc_1"))
        #expect(AttachmentEndpoint.Route(path: "/api/chatkit/attachments/atc_1/preview") == .preview(id: "atc_1"))
        for path in ["/api/chatkit/attachments/", "/api/chatkit/attachmentsX", "/api/chatkit/attachments//upload",
                     "/api/chatkit/attachments/atc_1", "/api/chatkit/attachments/atc_1/upload/x", "/api/chatkit/attachments/atc_1/delete"] {
            #expect(AttachmentEndpoint.Route(path: path) == nil, "\(path)")
        }
    }

    @Test func anAttachmentsSignedURLsAreOnThePublicURLAndWorkOnlyAsSigned() async throws {
        let created = await send("/api/chatkit", body: #"{"type":"attachments.create","params":{"name":"a.png","size":8,"mime_type":"image/png"}}"#)
        #expect(created.status == 200, "\(created.body)")
        let json = try JSON.parse(created.body)
        let upload = try #require(json["upload_descriptor"]?["url"]?.stringValue)
        #expect(upload.hasPrefix("https://app.example/api/chatkit/attachments/atc_"))
        #expect(json["preview_url"]?.stringValue?.contains("/preview?expires=") == true)
        let path = String(upload.dropFirst("https://app.example".count).prefix { $0 != "?" })
        var request = HTTPRequest(method: "PUT", path: path, body: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        request.query = String(upload[upload.index(after: upload.firstIndex(of: "?")!)...])
        let answer = Answer()
        _ = await worker.handle(request, writer: answer)
        #expect(answer.status == 200 && (try? JSON.parse(answer.body))?["upload_descriptor"] == nil, "\(answer.body)")
        request.query = "expires=1" + request.query.dropFirst("expires=".count)  // another time, the same signature
        let forged = Answer()
        _ = await worker.handle(request, writer: forged)
        #expect(forged.status == 403)
    }
}

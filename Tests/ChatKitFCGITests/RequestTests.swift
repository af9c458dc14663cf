@testable import ChatKitFCGI
import Glibc
import Testing

@Suite struct ChatRequestTests {
    func parse(_ body: String) throws(APIError) -> ChatRequest { try ChatRequest(body: Array(body.utf8)) }

    @Test func takesTheLastUserMessageAndTheConversation() throws {
        let request = try parse(#"{"messages":[{"role":"user","content":"old"},{"role":"assistant","content":"x"},{"role":"user","content":"new"}],"conversation_id":7}"#)
        #expect(request.message == "new")
        #expect(request.conversationID == 7)
        let parts = try parse(#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"conversation_id":null}"#)
        #expect(parts.message == "ab")
        #expect(parts.conversationID == nil)
    }

    @Test(arguments: [
        ("{", 400), ("[]", 422), ("{}", 422), (#"{"messages":[]}"#, 422), (#"{"messages":"hi"}"#, 422),
        (#"{"messages":[{"role":"assistant","content":"hi"}]}"#, 422),
        (#"{"messages":[{"role":"user","content":""}]}"#, 422),
        (#"{"messages":[{"role":"user","content":5}]}"#, 422),
        (#"{"messages":[{"role":"wizard","content":"x"},{"role":"user","content":"hi"}]}"#, 422),
        (#"{"messages":[{"role":"user","content":"hi"}],"conversation_id":"7"}"#, 422),
        (#"{"messages":[{"role":"user","content":"hi"}],"conversation_id":-1}"#, 422),
        (#"{"messages":[{"role":"user","content":"hi"}],"conversation_id":1.5}"#, 422),
    ])
    func badBodiesGetA4xxWithADetail(body: String, status: Int) {
        do {
            _ = try parse(body)
            Issue.record("\(body) was accepted")
        } catch {
            #expect(error.status == status, "\(body)")
            #expect(!error.detail.isEmpty)
        }
    }

    @Test func titlesAreShortTruncations() {
        #expect(Titles.truncate( "  Add milk\nplease ") == "Add milk please")
        let long = Titles.truncate( String(repeating: "word ", count: 30))
        #expect(long.count <= 61 && long.hasSuffix("…"))
        #expect(long == String(repeating: "word ", count: 12).dropLast() + "…", "cut on the last space within the limit")
        #expect(Titles.truncate(String(repeating: "a", count: 60)) == String(repeating: "a", count: 60))
        #expect(Titles.truncate(String(repeating: "a", count: 61)) == String(repeating: "a", count: 60) + "…")
        // A space too early to keep half the limit is not used: the cut falls mid-word.
        #expect(Titles.truncate("ab " + String(repeating: "x", count: 70)) == "ab " + String(repeating: "x", count: 57) + "…")
        #expect(Titles.truncate(String(repeating: "👍🏽", count: 61)) == String(repeating: "👍🏽", count: 60) + "…")
        #expect(Titles.truncate("a\r\nb\u{2028}c\u{85}d é") == "a b c d é")
        #expect(Titles.truncate(String(repeating: "word\n", count: 30)) == long, "a newline is a place to cut too")
        // One character can carry any number of combining marks; the title stays small all the same.
        let heavy = Titles.truncate("a" + String(repeating: "\u{301}", count: 100_000) + " rest")
        #expect(heavy.unicodeScalars.count == 4 * 60 + 1 && heavy.hasSuffix("…"))
        let kept = Titles.prefix(Substring("é" + String(repeating: "\u{301}", count: 10)), characters: 2)
        #expect(kept.0 == "é" + String(repeating: "\u{301}", count: 7) && kept.cut, "é and seven of its ten marks")
        // A cut inside an emoji sequence drops the whole sequence: 240 code points hold 34 of 7.
        let family = "👨‍👩‍👧‍👦"
        #expect(family.unicodeScalars.count == 7)
        #expect(Titles.truncate(String(repeating: family, count: 40)) == String(repeating: family, count: 34) + "…")
    }
}

@Suite struct APIErrorTests {
    @Test func mapsEveryFailureToOneStatus() {
        #expect(APIError.unauthorized(.expired).status == 401)
        #expect(APIError.unauthorized(.missingToken).headers.first! == ("WWW-Authenticate", "Bearer"))
        #expect(APIError.model(.http(status: 429, message: "slow", retryAfter: "7")).status == 429)
        #expect(APIError.model(.http(status: 429, message: "slow", retryAfter: "7")).headers.first! == ("Retry-After", "7"))
        #expect(APIError.model(.http(status: 401, message: "bad key", retryAfter: nil)).status == 502)
        #expect(APIError.model(.unreachable("refused")).status == 502)
        #expect(APIError.model(.timedOut("slow")).status == 504)
        #expect(APIError.payloadTooLarge(limit: 10).status == 413)
        #expect(APIError.methodNotAllowed(allowed: ["POST"]).headers.first! == ("Allow", "POST"))
    }
}

@Suite struct ConfigTests {
    let base = ["BETTER_AUTH_SECRET": String(repeating: "s", count: 32)]

    @Test func defaultsFollowTheDocumentedValues() throws {
        let config = try Config.load(environment: base, workingDirectory: "/srv")
        #expect(config.database == .sqlite(path: "/srv/chatkit.db"))
        #expect(config.databasePoolSize == 8 && config.databasePoolWaitMilliseconds == 2_000)
        #expect(config.databaseStatementTimeoutMilliseconds == 10_000)
        #expect(config.userMaxStreams == 4 && config.userRequests == 120 && config.userRequestsWindowSeconds == 60)
        #expect(config.userTokensPerDay == 0 && config.userMaxTasks == 1000 && config.upstreamRetries == 2)
        #expect(config.historyMaxBytes == 256 << 10 && config.toolResultMaxBytes == 16 << 10)
        #expect(config.openAIBaseURL == "https://api.openai.com/v1")
        #expect(config.maxToolRounds == 8)
        #expect(config.maxBodyBytes == 1 << 20)
        #expect(config.maxRequests == 1024 && config.threads == 32 && config.threadStackKiB == 1024)
    }

    @Test func warnsWhenTheLimitsCannotHoldTheConfiguredRequests() throws {
        var environment = base
        environment["CHATKIT_MAX_REQUESTS"] = "2000"
        let config = try Config.load(environment: environment, workingDirectory: "/srv")
        // Two per request, three per SQLite connection (8 readers, the writer, the checkpointer).
        #expect(Capacity.descriptorsNeeded(config) == 4000 + 30 + 16)
        #expect(Capacity.warnings(for: config, openFileLimit: 65_536, backlogCap: 4096).isEmpty)
        let short = Capacity.warnings(for: config, openFileLimit: 1024, backlogCap: 4096)
        #expect(short.count == 1 && short[0].contains("needs about 4046 open files") && short[0].contains("LimitNOFILE="))
        let capped = Capacity.warnings(for: config, openFileLimit: 65_536, backlogCap: 128)
        #expect(capped.count == 1 && capped[0].contains("net.core.somaxconn (128)"))
    }

    @Test func readsDatabaseURLs() throws {
        var environment = base
        environment["DATABASE_URL"] = "sqlite:///var/lib/chatkit/x.db"
        #expect(try Config.load(environment: environment, workingDirectory: "/").database == .sqlite(path: "/var/lib/chatkit/x.db"))
        environment["DATABASE_URL"] = "data/x.db"
        #expect(try Config.load(environment: environment, workingDirectory: "/srv").database == .sqlite(path: "/srv/data/x.db"))
        for url in ["postgresql://todo:p%40ss@db.example:5432/todo_db?sslmode=require&channel_binding=require",
                    "postgres:///todo_db?host=/run/postgresql", "postgresql://"] {
            environment["DATABASE_URL"] = url
            #expect(try Config.load(environment: environment, workingDirectory: "/").database == .postgres(url: url))
        }
        environment["DATABASE_URL"] = "mysql://x"
        #expect(throws: Config.Invalid.self) { try Config.load(environment: environment, workingDirectory: "/") }
    }

    @Test func aDatabaseURLMayComeAsACredential() throws {
        var template = Array("/tmp/chatkit-credentials-XXXXXX".utf8CString)
        let directory = String(cString: mkdtemp(&template)!)
        let url = "postgresql://todo:pw@db.example/todo_db"
        let fd = open(directory + "/database_url", O_WRONLY | O_CREAT, 0o600)
        _ = (url + "\n").withCString { write(fd, $0, strlen($0)) }
        close(fd)
        defer {
            unlink(directory + "/database_url")
            rmdir(directory)
        }
        var environment = base
        environment["CREDENTIALS_DIRECTORY"] = directory
        #expect(try Config.load(environment: environment, workingDirectory: "/").database == .postgres(url: url))
        environment["DATABASE_URL"] = "sqlite:///x.db"
        #expect(try Config.load(environment: environment, workingDirectory: "/").database == .sqlite(path: "/x.db"),
                "a variable that is set wins over the credential")
    }

    @Test func theDatabasePasswordNeverShows() throws {
        let secret = "s3cr%40t"
        for url in ["postgresql://todo:\(secret)@db.example:5432/todo_db?sslmode=require",
                    "postgresql://db.example/todo_db?user=todo&password=\(secret)&application_name=x",
                    "postgresql://todo:\(secret)@/todo_db?host=/run/postgresql"] {
            var environment = base
            environment["DATABASE_URL"] = url
            let config = try Config.load(environment: environment, workingDirectory: "/")
            #expect(!config.summary.joined().contains(secret), "\(config.summary)")
            #expect(config.database.description.contains("***"))
        }
        var environment = base
        environment["DATABASE_URL"] = "mysql://todo:\(secret)@db/x"
        do {
            _ = try Config.load(environment: environment, workingDirectory: "/")
            Issue.record("a mysql URL was taken")
        } catch {
            #expect(!error.description.contains(secret))
        }
    }

    @Test func reportsEveryProblemAtOnce() {
        let environment = ["DATABASE_URL": "sqlite://relative.db", "CHATKIT_THREADS": "lots", "BETTER_AUTH_SECRET": "short",
                           "OPENAI_BASE_URL": "ftp://x", "CHATKIT_SOCKET_MODE": "999"]
        #expect {
            try Config.load(environment: environment, workingDirectory: "/")
        } throws: { error in
            (error as? Config.Invalid)?.problems.count == 5
        }
        #expect(throws: Config.Invalid.self) { try Config.load(environment: [:], workingDirectory: "/") }
    }
}

@Suite struct DocumentationTests {
    @Test func theREADMEDocumentsEveryVariable() throws {
        let readme = String(decoding: try FileSystem.read(Fixture.directory + "/../../../README.md"), as: UTF8.self)
        for variable in Config.variables {
            #expect(readme.contains("| `\(variable.name)` |"), "\(variable.name) is not in the README's table")
        }
    }
}

@Suite struct FastCGIParamTests {
    static func header(_ param: String) -> (String, String)? {
        param.withCString { FastCGIParams.header(fromParam: $0) }
    }

    @Test func httpParamsBecomeLowerCaseHeadersWithDashes() {
        #expect(Self.header("HTTP_X_USER_ID=mallory").map { [$0.0, $0.1] } == ["x-user-id", "mallory"])
        #expect(Self.header("HTTP_AUTHORIZATION=Bearer a.b=c").map { [$0.0, $0.1] } == ["authorization", "Bearer a.b=c"])
        #expect(Self.header("HTTP_ACCEPT=").map { [$0.0, $0.1] } == ["accept", ""])
    }

    @Test func otherParamsAreNotHeaders() {
        #expect(Self.header("CONTENT_TYPE=application/json") == nil)
        #expect(Self.header("HTTP") == nil)
        #expect(Self.header("HTTP_NO_EQUALS") == nil)
    }
}

@Suite struct FastCGIRecordTests {
    @Test func contentLeavesInOneStdoutRecordWithItsRequestNumber() {
        let records = FastCGIRecords.stdout(Array("Status: 200 OK\r\n\r\nhi".utf8), requestID: 0x0102)
        #expect(Array(records.prefix(8)) == [1, 6, 0x01, 0x02, 0, 20, 0, 0])
        #expect(String(decoding: records.dropFirst(8), as: UTF8.self) == "Status: 200 OK\r\n\r\nhi")
    }

    @Test func contentLongerThanARecordIsSplit() {
        let content = (0..<(FastCGIRecords.maxContent + 10)).map { UInt8(truncatingIfNeeded: $0) }
        let records = FastCGIRecords.stdout(content, requestID: 1)
        #expect(Array(records.prefix(8)) == [1, 6, 0, 1, 0xFF, 0xFF, 0, 0])
        let second = 8 + FastCGIRecords.maxContent
        #expect(Array(records[second..<(second + 8)]) == [1, 6, 0, 1, 0, 10, 0, 0])
        #expect(Array(records[8..<second] + records[(second + 8)...]) == content)
    }

    @Test func noContentIsNoRecordAndAFullRecordIsOne() {
        #expect(FastCGIRecords.stdout([], requestID: 1) == [])
        let full = [UInt8](repeating: 7, count: FastCGIRecords.maxContent)
        #expect(FastCGIRecords.stdout(full, requestID: 1).count == 8 + FastCGIRecords.maxContent)
        #expect(FastCGIRecords.stdout(full + full, requestID: 1).count == 2 * (8 + FastCGIRecords.maxContent))
    }

    @Test func theEndIsAnEmptyStdoutAndACompletedRequest() {
        #expect(FastCGIRecords.end(requestID: 7) == [1, 6, 0, 7, 0, 0, 0, 0, 1, 3, 0, 7, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }
}

@Suite struct SSEWriterTests {
    /// Keeps every write, to see what left together.
    final class RecordingWriter: ResponseWriter {
        var writes: [String] = []
        private(set) var headWritten = false
        var extraHeaders: [(String, String)] = []
        func writeHead(status: Int, headers: [(String, String)]) { headWritten = true }
        func write(_ bytes: [UInt8]) -> Bool {
            writes.append(String(decoding: bytes, as: UTF8.self))
            return true
        }
        var clientDescriptor: Int32? { nil }
        var hasRoom: Bool { true }
    }

    @Test func aHeldRecordLeavesInOneWriteWithTheNext() {
        let writer = RecordingWriter()
        let sse = SSEWriter(writer: writer)
        sse.send(["type": "conversation"], flush: false)
        #expect(writer.writes.isEmpty)
        sse.send(payload: Array(#"{"n":1}"#.utf8))
        sse.keepalive()
        sse.done()
        #expect(writer.writes == ["data: {\"type\":\"conversation\"}\n\ndata: {\"n\":1}\n\n", ": keepalive\n\n", "data: [DONE]\n\n"])
    }
}

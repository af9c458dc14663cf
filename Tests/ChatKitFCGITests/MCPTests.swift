@testable import ChatKitFCGI
import Testing

@Suite struct JSONRPCTests {
    func parse(_ text: String) throws(JSONRPCError) -> JSONRPCMessage { try JSONRPCMessage(body: Array(text.utf8)) }

    @Test func readsRequestsNotificationsAndResponses() throws {
        #expect(try parse(#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#) == .request(id: 7, method: "ping", params: nil))
        #expect(try parse(#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}"#)
            == .request(id: "a", method: "tools/list", params: [:]))
        #expect(try parse(#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            == .notification(method: "notifications/initialized", params: nil))
        #expect(try parse(#"{"jsonrpc":"2.0","id":1,"result":{}}"#) == .response)
    }

    @Test(arguments: [
        ("{", -32700), ("", -32700), ("[]", -32600), (#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
        ("42", -32600), (#"{"id":1,"method":"ping"}"#, -32600), (#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
        (#"{"jsonrpc":"2.0","id":1}"#, -32600), (#"{"jsonrpc":"2.0","id":1,"method":5}"#, -32600),
        (#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, -32600), (#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, -32600),
        (#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#, -32600),
    ])
    func rejectsWhatIsNotOneJSONRPCMessage(body: String, code: Int) {
        #expect(throws: JSONRPCError.self) { try parse(body) }
        do { _ = try parse(body) } catch { #expect(error.code == code && error.httpStatus == 400, "\(body)") }
    }
}

@Suite struct MCPServerTests {
    let database = TemporaryDatabase()
    let store: SQLiteStore
    let server = MCPServer(toolbox: TaskTools.toolbox)

    init() throws { store = try database.store() }

    func send(_ body: JSON, version: String? = "2025-11-25", user: String = "alice") -> MCPServer.Reply {
        server.respond(to: body.serializedBytes, protocolVersionHeader: version) {
            ToolContext(userID: user, store: store)
        }
    }

    func request(_ method: String, _ params: JSON? = nil, id: JSON = 1) -> JSON {
        var members: [(String, JSON)] = [("jsonrpc", "2.0"), ("id", id), ("method", .string(method))]
        if let params { members.append(("params", params)) }
        return .object(members)
    }

    @Test func initializeNegotiatesTheVersion() {
        for (asked, answered) in [("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"), ("2099-01-01", "2025-11-25")] {
            let reply = send(request("initialize", ["protocolVersion": .string(asked), "capabilities": [:]]), version: nil)
            #expect(reply.status == 200)
            #expect(reply.body?["result"]?["protocolVersion"] == .string(answered))
            #expect(reply.body?["result"]?["capabilities"]?["tools"] != nil)
        }
    }

    @Test func notificationsAreAcceptedWithoutABody() {
        #expect(send(["jsonrpc": "2.0", "method": "notifications/initialized"]) == MCPServer.Reply(status: 202, body: nil))
    }

    @Test func pingAndUnknownMethods() {
        #expect(send(request("ping", id: "p")).body == ["jsonrpc": "2.0", "id": "p", "result": [:]])
        let probe = send(request("server/discover"), version: "2026-07-28")
        #expect(probe.status == 200 && probe.body?["error"]?["code"] == -32601)
        #expect(send(request("resources/list")).body?["error"]?["code"] == -32601)
    }

    @Test func anUnsupportedProtocolVersionHeaderIsA400() {
        let reply = send(request("tools/list"), version: "2019-01-01")
        #expect(reply.status == 400 && reply.body?["error"]?["code"] == -32600)
    }

    @Test func listsEveryToolFromTheSharedDefinitions() throws {
        let tools = try #require(send(request("tools/list")).body?["result"]?["tools"]?.arrayValue)
        #expect(tools.map { $0["name"]! } == TaskTools.toolbox.tools.map { .string($0.name) })
        for (listed, tool) in zip(tools, TaskTools.toolbox.tools) {
            #expect(listed["inputSchema"] == tool.parameters)
            #expect(listed["outputSchema"]?["type"] == "object")
            #expect(listed["annotations"]?["openWorldHint"] == false)
        }
        #expect(tools[1]["annotations"]?["readOnlyHint"] == true)
        #expect(tools[3]["annotations"]?["destructiveHint"] == true)
        #expect(send(request("tools/list", ["cursor": "x"])).body?["error"]?["code"] == -32602)
    }

    @Test func callsToolsWithStructuredContent() throws {
        let added = send(request("tools/call", ["name": "add_task", "arguments": ["title": "milk"]]))
        #expect(added.body?["result"]?["structuredContent"] == ["task_id": 1, "status": "created", "title": "milk"])
        #expect(added.body?["result"]?["isError"] == false)
        let text = try #require(added.body?["result"]?["content"]?.arrayValue?.first?["text"]?.stringValue)
        #expect(try JSON.parse(text) == ["task_id": 1, "status": "created", "title": "milk"])
        let listed = send(request("tools/call", ["name": "list_tasks"]))
        #expect(listed.body?["result"]?["structuredContent"]?["tasks"]?.arrayValue?.count == 1)
    }

    @Test func toolFailuresAreResultsAndProtocolMistakesAreErrors() {
        let missing = send(request("tools/call", ["name": "complete_task", "arguments": ["task_id": 99]]))
        #expect(missing.body?["result"]?["isError"] == true)
        let invalid = send(request("tools/call", ["name": "add_task", "arguments": ["title": 5]]))
        #expect(invalid.body?["result"]?["isError"] == true)
        for params: JSON in [["name": "launch_rocket"], ["arguments": [:]], ["name": "add_task", "arguments": "x"], []] {
            let reply = send(request("tools/call", params))
            #expect(reply.status == 200 && reply.body?["error"]?["code"] == -32602, "\(params.serialized)")
        }
        #expect(send(request("tools/call")).body?["error"]?["code"] == -32602)
    }

    @Test func toolsActOnlyForTheCallingUser() {
        _ = send(request("tools/call", ["name": "add_task", "arguments": ["title": "alice's"]]), user: "alice")
        let bobs = send(request("tools/call", ["name": "list_tasks"]), user: "bob")
        #expect(bobs.body?["result"]?["structuredContent"] == ["tasks": []])
        let steal = send(request("tools/call", ["name": "delete_task", "arguments": ["task_id": 1]]), user: "bob")
        #expect(steal.body?["result"]?["isError"] == true)
    }
}

@testable import ChatKitFCGI
import Testing

@Suite struct ChatCompletionChunkTests {
    @Test func theRequestOffersTheToolsEncodedOnceAsItsLastMember() throws {
        let client = ModelClient(settings: .init(baseURL: "http://127.0.0.1:9/v1", apiKey: nil, model: "m",
                                                       connectTimeoutMilliseconds: 5_000, stallTimeoutSeconds: 60, retries: 2), http: HTTPClient())
        let messages = [ChatMessage(role: .system, content: "sys"), .user("hi \"there\"")]
        let tools = ToolDefinitions(TaskTools.toolbox.tools.map(\.chatCompletionsDefinition))
        let body = try JSON.parse(client.requestBody(messages: messages, tools: tools))
        #expect(body == ["model": "m", "stream": true, "stream_options": ["include_usage": true],
                         "messages": .array(messages.map(\.json)), "tools": .array(tools.definitions)])
        // No tools, no `tools` member: some servers refuse an empty list.
        #expect(try JSON.parse(client.requestBody(messages: messages, tools: .none))["tools"] == nil)
    }

    @Test func readsContentToolFragmentsFinishReasonAndUsage() throws {
        let chunk = try ChatCompletionChunk(JSON.parse(#"""
            {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi","tool_calls":[
             {"index":1,"id":"call_1","type":"function","function":{"name":"add_task","arguments":"{\"ti"}}]},
             "finish_reason":null}],"usage":null}
            """#))
        #expect(chunk.content == "Hi")
        #expect(chunk.toolCalls == [.init(index: 1, id: "call_1", name: "add_task", arguments: "{\"ti")])
        #expect(chunk.finishReason == nil)
        let usage = try ChatCompletionChunk(JSON.parse(#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#))
        #expect(usage.usage == .init(promptTokens: 9, completionTokens: 4))
    }

    @Test func usageCountsFromTheServerAreClamped() throws {
        let chunk = try ChatCompletionChunk(JSON.parse(#"{"choices":[],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":-5}}"#))
        #expect(chunk.usage == .init(promptTokens: Int(Int32.max), completionTokens: 0))
    }

    @Test func anInBandErrorIsAStreamError() {
        #expect(throws: ModelError.streamError("boom")) {
            try ChatCompletionChunk(JSON.parse(#"{"error":{"message":"boom","type":"server_error"}}"#))
        }
        #expect(throws: ModelError.streamError("plain")) { try ChatCompletionChunk(JSON.parse(#"{"error":"plain"}"#)) }
    }
}

/// The chunk reader decodes fields in place; these compare it with reading a full JSON tree.
@Suite struct ChunkReaderTests {
    static func fields(_ chunk: ChatCompletionChunk) -> [String?] {
        [chunk.content, chunk.refusal, chunk.finishReason, chunk.usage.map { "\($0.promptTokens)/\($0.completionTokens)" },
         chunk.toolCalls.map { "\($0.index ?? -1) \($0.id ?? "-") \($0.name ?? "-") \($0.arguments ?? "-")" }.joined(separator: ";")]
    }

    /// The same fields read from a JSON tree, where the last of duplicate names wins.
    static func fieldsFromTree(_ text: String) throws -> [String?] {
        let json = try JSON.parse(text)
        let usage: JSON? = if case .object? = json["usage"] { json["usage"] } else { nil }
        let choice = json["choices"]?.arrayValue?.first { ($0["index"]?.intValue ?? 0) == 0 }
        let delta = choice?["delta"]
        let calls = (delta?["tool_calls"]?.arrayValue ?? []).map { call in
            "\(call["index"]?.intValue ?? -1) \(call["id"]?.stringValue ?? "-") "
                + "\(call["function"]?["name"]?.stringValue ?? "-") \(call["function"]?["arguments"]?.stringValue ?? "-")"
        }
        return [delta?["content"]?.stringValue, delta?["refusal"]?.stringValue, choice?["finish_reason"]?.stringValue,
                usage.map { "\($0["prompt_tokens"]?.intValue ?? 0)/\($0["completion_tokens"]?.intValue ?? 0)" },
                calls.joined(separator: ";")]
    }

    static func read(_ text: String) throws(ModelError) -> ChatCompletionChunk {
        try Array(text.utf8).withUnsafeBufferPointer { bytes throws(ModelError) in try ChatCompletionChunk(bytes: bytes) }
    }

    @Test(arguments: [
        #"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":null}]}"#,
        #" { "choices" : [ { "delta" : { "content" : "sp\u00e9cial \"q\" \ud83d\ude00 é" } , "index" : 0 } ] } "#,
        #"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine"},"finish_reason":"stop"}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":"first"}}],"choices":[{"index":0,"delta":{"content":"last"}}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":"a","content":null}}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":"a"},"delta":7}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":{"not":"an array"}}"#,
        #"{"choices":[7,{"index":0,"delta":{"content":"late"}}]}"#,
        #"{"\u0063hoices":[{"index":0,"delta":{"\u0063ontent":"escaped names"}}]}"#,
        #"{"x":{"deep":[1,2.5e3,-0,true,false,null,{"a":["é"]}]},"choices":[{"index":0.0,"delta":{"refusal":"no","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"add_task","arguments":"{\"ti"}}]},"finish_reason":"tool_calls"}],"usage":null}"#,
        #"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
        #"{"choices":[],"usage":{"prompt_tokens":9},"usage":"not an object"}"#,
        #"{}"#,
    ])
    func readsWhatATreeWouldGive(_ text: String) throws {
        let (scanned, tree) = (Self.fields(try Self.read(text)), try Self.fieldsFromTree(text))
        #expect(scanned == tree, "\(text)")
    }

    @Test(arguments: [
        #"{"choices":[{"index":0,"delta":{"content":"a"}}]"#,  // unterminated
        #"{"choices":[]} {}"#,  // trailing data
        #"{"model":tru,"choices":[]}"#,  // a bad literal in a skipped member
        "{\"model\":\"a\u{1}b\"}",  // a control character in a skipped string
        #"{"model":"a\qb"}"#,  // a bad escape in a skipped string
        #"{"choices":[],}"#,
        #"{'choices':[]}"#,
        "{\"x\":" + String(repeating: "[", count: 70) + String(repeating: "]", count: 70) + "}",  // too deep
    ])
    func refusesWhatIsNotJSON(_ text: String) {
        #expect(throws: ModelError.self) { try Self.read(text) }
    }

    @Test func refusesInvalidUTF8EvenInASkippedMember() {
        let inValue: [UInt8] = Array(#"{"model":""#.utf8) + [0xFF, 0xFE] + Array(#"","choices":[]}"#.utf8)
        let inName: [UInt8] = Array(#"{""#.utf8) + [0xFF, 0xFE] + Array(#"":1,"choices":[]}"#.utf8)
        for bytes in [inValue, inName] {
            #expect(throws: ModelError.self) {
                try bytes.withUnsafeBufferPointer { bytes throws(ModelError) in try ChatCompletionChunk(bytes: bytes) }
            }
        }
    }

    @Test func aRecordThatIsNotAnObjectIsAStreamError() {
        #expect(throws: ModelError.streamError("a stream record is not a JSON object")) { try Self.read("[1,2]") }
        #expect(throws: ModelError.streamError("a stream record is not a JSON object")) { try Self.read(#" "text" "#) }
    }
}

@Suite struct ToolCallAccumulatorTests {
    typealias Fragment = ChatCompletionChunk.ToolCallFragment

    @Test func joinsArgumentFragmentsByIndex() {
        var accumulator = ToolCallAccumulator()
        accumulator.add([Fragment(index: 0, id: "call_a", name: "add_task", arguments: "")])
        accumulator.add([Fragment(index: 0, arguments: "{\"ti")])
        accumulator.add([Fragment(index: 1, id: "call_b", name: "add_task", arguments: "{\"title\"")])
        accumulator.add([Fragment(index: 0, arguments: "tle\": \"milk\"}")])
        accumulator.add([Fragment(index: 1, arguments: ": \"mum\"}")])
        #expect(accumulator.finish() == [
            ToolCall(id: "call_a", name: "add_task", arguments: "{\"title\": \"milk\"}"),
            ToolCall(id: "call_b", name: "add_task", arguments: "{\"title\": \"mum\"}"),
        ])
    }

    @Test func aReusedIndexWithANewIdStartsANewCall() {
        var accumulator = ToolCallAccumulator()
        accumulator.add([Fragment(index: 0, id: "one", name: "list_tasks", arguments: "{}")])
        accumulator.add([Fragment(index: 0, id: "two", name: "add_task", arguments: "{\"title\":\"x\"}")])
        #expect(accumulator.finish().map(\.id) == ["one", "two"])
    }

    @Test func missingIndexFallsBackToPositionAndEmptyIdsAreIgnored() {
        var accumulator = ToolCallAccumulator()
        accumulator.add([Fragment(id: "a", name: "list_tasks", arguments: "{}"), Fragment(id: "b", name: "add_task", arguments: "{")])
        accumulator.add([Fragment(index: 1, id: "", arguments: "}")])
        #expect(accumulator.finish() == [
            ToolCall(id: "a", name: "list_tasks", arguments: "{}"), ToolCall(id: "b", name: "add_task", arguments: "{}"),
        ])
    }

    @Test func aCallWithoutAnIdGetsOne() {
        var accumulator = ToolCallAccumulator()
        accumulator.add([Fragment(index: 0, name: "list_tasks", arguments: "{}")])
        let id = accumulator.finish()[0].id
        #expect(id.hasPrefix("call_") && id.count > 10)
    }
}

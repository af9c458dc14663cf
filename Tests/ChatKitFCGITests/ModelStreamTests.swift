@testable import ChatKitFCGI
import Testing

@Suite struct ChatCompletionChunkTests {
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

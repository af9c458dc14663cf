@testable import ChatKitFCGI
import Testing

/// Plays back one scripted answer per model call and records what it was sent.
final class ScriptedModel: ChatModel {
    var answers: [ModelTurn]
    private(set) var received: [[ChatMessage]] = []

    init(_ answers: [ModelTurn]) { self.answers = answers }

    /// Streams the answer's text a word at a time. A client that refuses a chunk cancels the
    /// turn, which then holds the words it took and no tool calls, as the real client's does.
    func stream(messages: [ChatMessage], tools: ToolDefinitions, observer: ModelStreamObserver) async -> ModelTurn {
        received.append(messages)
        let answer = answers.removeFirst()
        var delivered = ""
        for (index, word) in answer.text.split(separator: " ").enumerated() {
            let piece = index == 0 ? String(word) : " " + word
            let chunk = try! ChatCompletionChunk(["choices": [["index": 0, "delta": ["content": .string(piece)]]]])
            guard observer.modelChunk(payload: Array("{}".utf8), parsed: chunk) else {
                var cut = ModelTurn()
                cut.text = delivered
                cut.failure = .cancelled
                return cut
            }
            delivered += piece
        }
        return answer
    }
}

final class RecordingObserver: AgentObserver {
    var chunks = 0
    var toolResults: [(ToolCall, Result<JSON, ToolError>)] = []
    /// How many chunks the client takes before it goes away.
    var chunksAccepted = Int.max
    var clientDescriptor: Int32? { nil }
    var outputHasRoom: Bool { true }
    func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool {
        chunks += 1
        return chunks <= chunksAccepted
    }
    func idle(canWrite: @autoclosure () -> Bool) -> Bool { true }
    func toolFinished(call: ToolCall, result: Result<JSON, ToolError>) { toolResults.append((call, result)) }
}

@Suite struct AgentLoopTests {
    let database = TemporaryDatabase()
    let store: SQLiteStore

    init() throws { store = try database.store() }

    func turn(text: String = "", calls: [ToolCall] = [], failure: ModelError? = nil) -> ModelTurn {
        var turn = ModelTurn()
        turn.text = text
        turn.toolCalls = calls
        turn.finishReason = calls.isEmpty ? "stop" : "tool_calls"
        turn.failure = failure
        return turn
    }

    func run(_ model: ScriptedModel, rounds: Int = 8, observer: RecordingObserver = RecordingObserver()) async throws
        -> (TurnSummary, [ChatMessage])
    {
        var stored: [ChatMessage] = []
        let agent = Agent(model: model, toolbox: TaskTools.toolbox, systemPrompt: "sys", maxRounds: rounds)
        let summary = try await agent.run(
            history: [.user("add milk")], context: ToolContext(userID: "alice", store: store), observer: observer
        ) { stored += $0 }
        return (summary, stored)
    }

    @Test func runsToolsAndFeedsResultsBackUntilTheModelAnswers() async throws {
        let call = ToolCall(id: "call_1", name: "add_task", arguments: "{\"title\":\"milk\"}")
        let model = ScriptedModel([turn(calls: [call]), turn(text: "Added milk.")])
        let observer = RecordingObserver()
        let (summary, stored) = try await run(model, observer: observer)
        #expect(summary.end == .answered)
        #expect(summary.rounds == 2)
        #expect(try store.tasks(userID: "alice", filter: .all).map(\.title) == ["milk"])
        #expect(stored == [
            ChatMessage(role: .assistant, content: nil, toolCalls: [call]),
            ChatMessage(role: .tool, content: #"{"task_id":1,"status":"created","title":"milk"}"#, toolCallID: "call_1"),
            ChatMessage(role: .assistant, content: "Added milk."),
        ])
        // The second call saw the system prompt, the user, the call and its result.
        #expect(model.received[1].map(\.role) == [.system, .user, .assistant, .tool])
        #expect(observer.toolResults.map(\.0) == [call])
    }

    @Test func badToolCallsGoBackToTheModelAsErrors() async throws {
        let calls = [ToolCall(id: "a", name: "add_task", arguments: "{\"title\": "),
                     ToolCall(id: "b", name: "launch_rocket", arguments: "{}")]
        let model = ScriptedModel([turn(calls: calls), turn(text: "Sorry.")])
        let (summary, stored) = try await run(model)
        #expect(summary.end == .answered)
        #expect(stored[1].content?.hasPrefix(#"{"error":"arguments are not valid JSON"#) == true)
        #expect(stored[2].content?.hasPrefix(#"{"error":"unknown tool 'launch_rocket'"#) == true)
        #expect(stored.map(\.toolCallID) == [nil, "a", "b", nil])
    }

    @Test func stopsAfterTheRoundLimit() async throws {
        let call = ToolCall(id: "x", name: "list_tasks", arguments: "{}")
        let model = ScriptedModel(Array(repeating: turn(calls: [call]), count: 3))
        let (summary, stored) = try await run(model, rounds: 3)
        #expect(summary.end == .roundLimitReached(3))
        #expect(stored.count == 6)
        #expect(model.answers.isEmpty)
    }

    @Test func aFailureKeepsTheTextAlreadyProducedButNoUnfinishedCalls() async throws {
        let model = ScriptedModel([turn(text: "partial answer", calls: [ToolCall(id: "c", name: "list_tasks", arguments: "{")],
                                        failure: .streamError("cut"))])
        let (summary, stored) = try await run(model)
        #expect(summary.end == .failed(.streamError("cut")))
        #expect(stored == [ChatMessage(role: .assistant, content: "partial answer"),
                           ChatMessage(role: .system, content: Agent.cutOffNote)])
    }

    @Test func aClientThatGoesAwayCancelsTheTurnAndKeepsThePartialText() async throws {
        let observer = RecordingObserver()
        observer.chunksAccepted = 2
        let model = ScriptedModel([turn(text: "first words never seen", calls: [ToolCall(id: "c", name: "list_tasks", arguments: "{}")])])
        let (summary, stored) = try await run(model, observer: observer)
        #expect(summary.end == .failed(.cancelled))
        #expect(stored == [ChatMessage(role: .assistant, content: "first words"), ChatMessage(role: .system, content: Agent.cutOffNote)])
        #expect(observer.toolResults.isEmpty, "no tool of a cancelled turn runs")
    }

    @Test func aClientGoneBeforeAnyTextLeavesNothingToKeep() async throws {
        let observer = RecordingObserver()
        observer.chunksAccepted = 0
        let (summary, stored) = try await run(ScriptedModel([turn(text: "unseen answer")]), observer: observer)
        #expect(summary.end == .failed(.cancelled))
        #expect(stored.isEmpty)
    }
}

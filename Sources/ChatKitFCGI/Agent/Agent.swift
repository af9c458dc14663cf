/// What the agent reports to the face that is serving the turn (the /api/chat stream today).
public protocol AgentObserver: ModelStreamObserver {
    func toolFinished(call: ToolCall, result: Result<JSON, ToolError>)
}

/// How a turn ended.
public enum TurnEnd: Equatable {
    case answered
    case roundLimitReached(Int)
    case failed(ModelError)
}

public struct TurnSummary {
    public var end: TurnEnd
    public var rounds = 0
    public var usage = ChatCompletionChunk.Usage()
}

/// The tool loop: history → model → tools → model … until the model answers in text.
/// Each round is stored as it completes, so a crash or a disconnect loses nothing finished.
public struct Agent {
    public let model: any ChatModel
    public let toolbox: Toolbox
    public let systemPrompt: String
    public let maxRounds: Int

    public init(model: any ChatModel, toolbox: Toolbox, systemPrompt: String, maxRounds: Int) {
        self.model = model
        self.toolbox = toolbox
        self.systemPrompt = systemPrompt
        self.maxRounds = maxRounds
    }

    /// `history` ends with the user's new message, already stored. `record` stores messages
    /// produced by the turn; one call per round, so tool calls and results land together.
    public func run(
        history: [ChatMessage], context: ToolContext, observer: AgentObserver,
        record: ([ChatMessage]) throws -> Void
    ) throws -> TurnSummary {
        var messages = [ChatMessage(role: .system, content: systemPrompt)] + history
        let tools = toolbox.chatCompletionsDefinitions
        var summary = TurnSummary(end: .answered)
        while summary.rounds < maxRounds {
            summary.rounds += 1
            let turn = model.stream(messages: messages, tools: tools, observer: observer)
            summary.usage.promptTokens += turn.usage.promptTokens
            summary.usage.completionTokens += turn.usage.completionTokens
            let text = turn.text.isEmpty ? turn.refusal : turn.text

            if let failure = turn.failure {
                // Keep what the user already saw; unfinished tool calls cannot be replayed.
                if !text.isEmpty { try record([ChatMessage(role: .assistant, content: text)]) }
                summary.end = .failed(failure)
                return summary
            }
            guard !turn.toolCalls.isEmpty else {
                try record([ChatMessage(role: .assistant, content: text)])
                return summary
            }

            var produced = [ChatMessage(role: .assistant, content: text.isEmpty ? nil : text, toolCalls: turn.toolCalls)]
            for call in turn.toolCalls {
                let result = toolbox.run(name: call.name, arguments: call.arguments, context: context)
                observer.toolFinished(call: call, result: result)
                produced.append(ChatMessage(role: .tool, content: Self.toolMessageContent(result), toolCallID: call.id))
            }
            try record(produced)
            messages += produced
        }
        summary.end = .roundLimitReached(maxRounds)
        return summary
    }

    /// What the model reads back: the result JSON, or `{"error": ...}` it can recover from.
    public static func toolMessageContent(_ result: Result<JSON, ToolError>) -> String {
        switch result {
        case .success(let json): json.serialized
        case .failure(let error): JSON.object([("error", .string(error.message))]).serialized
        }
    }
}

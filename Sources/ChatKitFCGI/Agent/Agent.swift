/// What the agent reports to the face that is serving the turn (/api/chat or ChatKit).
public protocol AgentObserver: ModelStreamObserver {
    /// The model's reply ended in tool calls, after `text`; they run next.
    func toolCallsArrived(after text: String) throws
    func toolStarted(call: ToolCall)
    func toolFinished(call: ToolCall, result: Result<JSON, ToolError>)
}

extension AgentObserver {
    public func toolCallsArrived(after text: String) throws {}
    public func toolStarted(call: ToolCall) {}
}

/// A tool the browser runs (ChatKit's client tools): the model may call it, and the turn then
/// waits for the client's answer.
public struct ClientTool: Equatable, Sendable {
    public let name: String
    public let description: String
    public let parameters: JSON

    public init(name: String, description: String, parameters: JSON) {
        self.name = name
        self.description = description
        self.parameters = parameters
    }

    var chatCompletionsDefinition: JSON {
        Tool.functionDefinition(name: name, description: description, parameters: parameters)
    }

    /// `[{"name": ..., "description": ..., "parameters": {JSON Schema}}]`, as operators configure
    /// them; none may reuse one of `takenNames` (the server's own tools).
    public static func parseList(_ text: String, takenNames: Set<String>) -> Result<[ClientTool], ToolError> {
        guard let list = (try? JSON.parse(text))?.arrayValue else { return .failure(ToolError("not a JSON list")) }
        var tools: [ClientTool] = []
        for entry in list {
            guard let name = entry["name"]?.stringValue, !name.isEmpty, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") })
            else { return .failure(ToolError("each tool needs a name of letters, digits, _ or -")) }
            guard !takenNames.contains(name), !tools.contains(where: { $0.name == name }) else {
                return .failure(ToolError("tool name \(name) is already taken"))
            }
            let parameters = entry["parameters"] ?? ["type": "object", "properties": [:]]
            guard parameters["type"] == "object" else { return .failure(ToolError("\(name): parameters must be an object schema")) }
            tools.append(ClientTool(name: name, description: entry["description"]?.stringValue ?? "", parameters: parameters))
        }
        return .success(tools)
    }
}

/// How a turn ended.
public enum TurnEnd: Equatable {
    case answered
    case roundLimitReached(Int)
    /// The model called a client tool; its result comes with the client's next request.
    case awaitingClientTool(ToolCall)
    case failed(ModelError)
}

public struct TurnSummary {
    public var end: TurnEnd
    public var rounds = 0
    /// Model calls sent again after failing before any output.
    public var retries = 0
    public var usage = ChatCompletionChunk.Usage()
}

/// The tool loop: history → model → tools → model … until the model answers in text.
/// Each round is stored as it completes, so a crash or a disconnect loses nothing finished.
public struct Agent {
    public let model: any ChatModel
    public let toolbox: Toolbox
    public let systemPrompt: String
    public let maxRounds: Int
    public let clientTools: [ClientTool]
    public let toolDefinitions: ToolDefinitions
    /// The history the model is sent is cut to this many bytes, the oldest messages first.
    public let historyMaxBytes: Int
    /// A tool result larger than this goes to the model (and the client) shortened.
    public let toolResultMaxBytes: Int

    /// `toolDefinitions`: the toolbox's and the client tools' definitions, when already
    /// encoded (`Agent.toolDefinitions`); they are encoded here otherwise.
    public init(model: any ChatModel, toolbox: Toolbox, systemPrompt: String, maxRounds: Int, clientTools: [ClientTool] = [],
                toolDefinitions: ToolDefinitions? = nil, historyMaxBytes: Int = .max, toolResultMaxBytes: Int = .max) {
        self.model = model
        self.toolbox = toolbox
        self.systemPrompt = systemPrompt
        self.maxRounds = maxRounds
        self.clientTools = clientTools
        self.historyMaxBytes = historyMaxBytes
        self.toolResultMaxBytes = toolResultMaxBytes
        self.toolDefinitions = toolDefinitions ?? Self.toolDefinitions(toolbox: toolbox, clientTools: clientTools)
    }

    /// What an agent with these tools offers the model.
    public static func toolDefinitions(toolbox: Toolbox, clientTools: [ClientTool]) -> ToolDefinitions {
        ToolDefinitions(toolbox.tools.map(\.chatCompletionsDefinition) + clientTools.map(\.chatCompletionsDefinition))
    }

    /// `history` ends with the user's new message, already stored. `record` stores messages
    /// produced by the turn; one call per round, so tool calls and results land together.
    public func run(
        history: [ChatMessage], context: ToolContext, observer: AgentObserver,
        record: ([ChatMessage]) throws -> Void
    ) async throws -> TurnSummary {
        let window = history.newest(fittingIn: historyMaxBytes)
        var messages = [ChatMessage(role: .system, content: systemPrompt)] + Self.answeringEveryCall(Array(window))
        var summary = TurnSummary(end: .answered)
        while summary.rounds < maxRounds {
            summary.rounds += 1
            let turn = await model.stream(messages: messages, tools: toolDefinitions, observer: observer)
            summary.retries += turn.retries
            summary.usage.promptTokens &+= turn.usage.promptTokens
            summary.usage.completionTokens &+= turn.usage.completionTokens
            let text = turn.text.isEmpty ? turn.refusal : turn.text

            if let failure = turn.failure {
                // Keep what the user already saw; unfinished tool calls cannot be replayed. A
                // note tells the model that the answer it will read back was cut short, whether
                // by an error, the client leaving or a shutdown.
                if !text.isEmpty {
                    try record([ChatMessage(role: .assistant, content: text), ChatMessage(role: .system, content: Self.cutOffNote)])
                }
                summary.end = .failed(failure)
                return summary
            }
            guard !turn.toolCalls.isEmpty else {
                try record([ChatMessage(role: .assistant, content: text)])
                return summary
            }
            try observer.toolCallsArrived(after: text)

            var produced = [ChatMessage(role: .assistant, content: text.isEmpty ? nil : text, toolCalls: turn.toolCalls)]
            var clientCall: ToolCall?
            for call in turn.toolCalls {
                if clientTools.contains(where: { $0.name == call.name }) {
                    // The browser answers one call per turn; a second gets an error it can read.
                    if clientCall == nil {
                        clientCall = call
                        continue
                    }
                    let refusal = ToolError("only one client tool call per turn; call \(call.name) again later")
                    produced.append(ChatMessage(role: .tool, content: Self.toolMessageContent(.failure(refusal)), toolCallID: call.id))
                    continue
                }
                observer.toolStarted(call: call)
                let result = bounded(toolbox.run(name: call.name, arguments: call.arguments, context: context))
                observer.toolFinished(call: call, result: result)
                produced.append(ChatMessage(role: .tool, content: Self.toolMessageContent(result), toolCallID: call.id))
            }
            try record(produced)
            if let clientCall {
                summary.end = .awaitingClientTool(clientCall)
                return summary
            }
            messages += produced
        }
        summary.end = .roundLimitReached(maxRounds)
        return summary
    }

    static let cutOffNote = "Your previous answer was cut off before it was complete."

    /// A result too large for `toolResultMaxBytes`: a list keeps its newest (last) items that
    /// fit, with a note saying how many there were; anything else is replaced by a note. So a
    /// tool that finds thousands of rows cannot fill the model's context.
    func bounded(_ result: Result<JSON, ToolError>) -> Result<JSON, ToolError> {
        guard case .success(let json) = result, json.serializedBytes.count > toolResultMaxBytes else { return result }
        guard let items = json.arrayValue else {
            return .success(["note": .string("the result (\(json.serializedBytes.count) bytes) is too large to show")])
        }
        var kept: [JSON] = []
        var size = 200  // the note and the brackets
        for item in items.reversed() {
            size += item.serializedBytes.count + 1
            guard size <= toolResultMaxBytes else { break }
            kept.append(item)
        }
        return .success(["items": .array(kept.reversed()),
                         "note": .string("showing the newest \(kept.count) of \(items.count); ask for fewer to see others")])
    }

    /// Every tool call the model sees must have a result, or the API refuses the request. A
    /// client tool call the browser never answered gets one here, so the thread keeps working.
    static func answeringEveryCall(_ history: [ChatMessage]) -> [ChatMessage] {
        var repaired: [ChatMessage] = []
        var unanswered: [String] = []
        func closeOpenCalls() {
            for id in unanswered {
                let note = ToolError("the client did not return a result for this call")
                repaired.append(ChatMessage(role: .tool, content: toolMessageContent(.failure(note)), toolCallID: id))
            }
            unanswered = []
        }
        for message in history {
            if message.role == .tool {
                // A result must answer an open call; any other (a duplicate, say) is dropped.
                guard let id = message.toolCallID, let index = unanswered.firstIndex(of: id) else { continue }
                unanswered.remove(at: index)
            } else {
                closeOpenCalls()
            }
            repaired.append(message)
            unanswered += message.toolCalls.map(\.id)
        }
        closeOpenCalls()
        return repaired
    }

    /// What the model reads back: the result JSON, or `{"error": ...}` it can recover from.
    public static func toolMessageContent(_ result: Result<JSON, ToolError>) -> String {
        switch result {
        case .success(let json): json.serialized
        case .failure(let error): JSON.object([("error", .string(error.message))]).serialized
        }
    }
}

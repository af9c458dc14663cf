/// The parts of a `chat.completion.chunk` the agent acts on. The chunk itself is forwarded
/// verbatim; this is only what we read from it.
public struct ChatCompletionChunk: Equatable {
    public struct ToolCallFragment: Equatable {
        public var index: Int?
        public var id: String?
        public var name: String?
        public var arguments: String?
    }

    public struct Usage: Equatable {
        public var promptTokens = 0
        public var completionTokens = 0
    }

    public var content: String?
    public var refusal: String?
    public var toolCalls: [ToolCallFragment] = []
    public var finishReason: String?
    public var usage: Usage?

    /// `nil` when the payload is an in-band error instead of a chunk; `error` then says why.
    public init(_ json: JSON) throws(ModelError) {
        if let error = json["error"], error != .null, error != .bool(false) {
            throw .streamError(Self.message(of: error) ?? "the model server reported an error mid-stream")
        }
        guard case .object = json else { throw .streamError("a stream record is not a JSON object") }
        if case .object = json["usage"] ?? .null {
            // Counts come from the model server: clamp them so summing rounds cannot overflow.
            let plausible = 0...Int(Int32.max)
            usage = Usage(
                promptTokens: (json["usage"]?["prompt_tokens"]?.intValue ?? 0).clamped(to: plausible),
                completionTokens: (json["usage"]?["completion_tokens"]?.intValue ?? 0).clamped(to: plausible))
        }
        // One choice is requested (n = 1); other indexes would belong to other answers.
        guard let choice = json["choices"]?.arrayValue?.first(where: { ($0["index"]?.intValue ?? 0) == 0 }) else { return }
        finishReason = choice["finish_reason"]?.stringValue
        guard let delta = choice["delta"] else { return }
        content = delta["content"]?.stringValue
        refusal = delta["refusal"]?.stringValue
        for fragment in delta["tool_calls"]?.arrayValue ?? [] {
            toolCalls.append(ToolCallFragment(
                index: fragment["index"]?.intValue, id: fragment["id"]?.stringValue,
                name: fragment["function"]?["name"]?.stringValue,
                arguments: fragment["function"]?["arguments"]?.stringValue))
        }
    }

    /// OpenAI sends `{"error":{"message":...}}`; some servers send a bare string.
    static func message(of error: JSON) -> String? {
        error.stringValue ?? error["message"]?.stringValue
    }
}

extension Comparable {
    func clamped(to range: ClosedRange<Self>) -> Self { min(max(self, range.lowerBound), range.upperBound) }
}

/// Rebuilds whole tool calls from streamed fragments, keyed by `index` (OpenAI's rules plus the
/// tolerances other servers need: missing index, reused index with a new id, empty ids).
public struct ToolCallAccumulator {
    private var calls: [ToolCall] = []
    private var slotForIndex: [Int: Int] = [:]

    public init() {}

    public mutating func add(_ fragments: [ChatCompletionChunk.ToolCallFragment]) {
        for (position, fragment) in fragments.enumerated() {
            let index = fragment.index ?? position
            let id = fragment.id.flatMap { $0.isEmpty ? nil : $0 }
            if let id, let slot = slotForIndex[index], !calls[slot].id.isEmpty, calls[slot].id != id {
                slotForIndex[index] = nil  // the same index reused for a new call (Ollama, SGLang)
            }
            let slot: Int
            if let existing = slotForIndex[index] {
                slot = existing
            } else {
                calls.append(ToolCall(id: "", name: "", arguments: ""))
                slot = calls.count - 1
                slotForIndex[index] = slot
            }
            if let id { calls[slot].id = id }
            if let name = fragment.name, !name.isEmpty, calls[slot].name.isEmpty { calls[slot].name = name }
            calls[slot].arguments += fragment.arguments ?? ""
        }
    }

    public var isEmpty: Bool { calls.isEmpty }

    /// The finished calls; a server that gave no id gets one, since replay needs it.
    public func finish() -> [ToolCall] {
        calls.map { call in
            var call = call
            if call.id.isEmpty { call.id = "call_" + Base64URL.encode(Crypto.randomBytes(18)) }
            return call
        }
    }
}

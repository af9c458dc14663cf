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

    /// Reads a chunk straight from its bytes: the fields above are decoded, the rest is checked
    /// and skipped. (Building a JSON tree of every chunk was the largest part of relaying one.)
    /// A record that is an in-band error instead of a chunk throws that error.
    public init(bytes: UnsafeBufferPointer<UInt8>) throws(ModelError) {
        var error: JSON?
        var usage: JSON?
        var choice: Choice?
        var parser = JSONParser(bytes)
        var isObject = false
        do throws(JSONParseError) {
            parser.skipWhitespace()
            isObject = parser.next == UInt8(ascii: "{")
            if isObject {
                // With duplicate names the last one wins, as `JSON`'s subscript has it.
                try parser.forEachMember(depth: 0) { name, parser throws(JSONParseError) in
                    switch Name(name) {
                    case .error?: error = try parser.parseValue(depth: 1)
                    case .usage?: usage = try parser.parseValue(depth: 1)
                    case .choices?:
                        choice = nil
                        guard parser.next == UInt8(ascii: "[") else { return try parser.skipValue(depth: 1) }
                        try parser.forEachElement(depth: 1) { parser throws(JSONParseError) in
                            // One choice is requested (n = 1); other indexes belong to other answers.
                            let candidate = try Choice(&parser, depth: 2)
                            if choice == nil, candidate.index == 0 { choice = candidate }
                        }
                    default: try parser.skipValue(depth: 1)
                    }
                }
            } else {
                try parser.skipValue(depth: 0)
            }
            parser.skipWhitespace()
            guard parser.next == nil else { throw parser.error("unexpected trailing data") }
        } catch {
            throw .streamError("a stream record is not JSON (\(error))")
        }
        guard isObject else { throw .streamError("a stream record is not a JSON object") }
        if let error, error != .null, error != .bool(false) {
            throw .streamError(Self.message(of: error) ?? "the model server reported an error mid-stream")
        }
        if case .object = usage ?? .null {
            // Counts come from the model server: clamp them so summing rounds cannot overflow.
            let plausible = 0...Int(Int32.max)
            self.usage = Usage(
                promptTokens: (usage?["prompt_tokens"]?.intValue ?? 0).clamped(to: plausible),
                completionTokens: (usage?["completion_tokens"]?.intValue ?? 0).clamped(to: plausible))
        }
        guard let choice else { return }
        finishReason = choice.finishReason
        content = choice.content
        refusal = choice.refusal
        toolCalls = choice.toolCalls
    }

    /// The member names read; any other is skipped.
    private enum Name {
        case error, usage, choices, index, finishReason, delta, content, refusal, toolCalls

        init?(_ utf8: UnsafeBufferPointer<UInt8>) {
            func equals(_ name: StaticString) -> Bool { UnsafeRawBufferPointer(utf8).equals(name) }
            switch utf8.count {
            case 5 where equals("error"): self = .error
            case 5 where equals("usage"): self = .usage
            case 5 where equals("index"): self = .index
            case 5 where equals("delta"): self = .delta
            case 7 where equals("choices"): self = .choices
            case 7 where equals("content"): self = .content
            case 7 where equals("refusal"): self = .refusal
            case 10 where equals("tool_calls"): self = .toolCalls
            case 13 where equals("finish_reason"): self = .finishReason
            default: return nil
            }
        }
    }

    /// What one element of `choices` holds for us.
    private struct Choice {
        var index = 0
        var finishReason: String?
        var content: String?
        var refusal: String?
        var toolCalls: [ToolCallFragment] = []

        init(_ parser: inout JSONParser, depth: Int) throws(JSONParseError) {
            guard parser.next == UInt8(ascii: "{") else {
                try parser.skipValue(depth: depth)
                return
            }
            try parser.forEachMember(depth: depth) { name, parser throws(JSONParseError) in
                switch Name(name) {
                case .index?: index = try parser.parseValue(depth: depth + 1).intValue ?? 0
                case .finishReason?: finishReason = try parser.parseValue(depth: depth + 1).stringValue
                case .delta?:
                    (content, refusal, toolCalls) = (nil, nil, [])
                    guard parser.next == UInt8(ascii: "{") else { return try parser.skipValue(depth: depth + 1) }
                    try parser.forEachMember(depth: depth + 1) { name, parser throws(JSONParseError) in
                        switch Name(name) {
                        case .content?: content = try parser.parseValue(depth: depth + 2).stringValue
                        case .refusal?: refusal = try parser.parseValue(depth: depth + 2).stringValue
                        case .toolCalls?: toolCalls = Self.fragments(try parser.parseValue(depth: depth + 2))
                        default: try parser.skipValue(depth: depth + 2)
                        }
                    }
                default: try parser.skipValue(depth: depth + 1)
                }
            }
        }

        static func fragments(_ json: JSON) -> [ToolCallFragment] {
            (json.arrayValue ?? []).map { fragment in
                ToolCallFragment(
                    index: fragment["index"]?.intValue, id: fragment["id"]?.stringValue,
                    name: fragment["function"]?["name"]?.stringValue,
                    arguments: fragment["function"]?["arguments"]?.stringValue)
            }
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

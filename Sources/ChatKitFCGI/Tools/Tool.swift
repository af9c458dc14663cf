/// A failure the model (or an MCP client) can read and recover from. Never a crash, never a 5xx.
public struct ToolError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What a tool runs with: the user comes from the verified token, never from the model.
public struct ToolContext {
    public let userID: String
    public let store: any Store
    /// How many tasks the user may keep.
    public let maxTasks: Int

    public init(userID: String, store: any Store, maxTasks: Int = 1000) {
        self.userID = userID
        self.store = store
        self.maxTasks = maxTasks
    }
}

/// One tool, defined once and served to the model, to ChatKit and to MCP.
public struct Tool: Sendable {
    /// MCP's annotations; defaults are MCP's own, except that our todo store is a closed world.
    public struct Hints: Sendable {
        public var readOnly = false
        public var destructive = true
        public var idempotent = false
    }

    /// What a successful call returns. MCP's structured content must be an object, so a list is
    /// served there under a key; the model and ChatKit see the list itself.
    public enum Output: Sendable {
        case object(JSON)
        case list(key: String, items: JSON)
    }

    public let name: String
    public let title: String
    public let description: String
    /// JSON Schema of the arguments; also what `run` validates against.
    public let parameters: JSON
    public let output: Output
    public let hints: Hints
    let handler: @Sendable (ToolArguments, ToolContext) throws -> JSON

    public var chatCompletionsDefinition: JSON {
        Self.functionDefinition(name: name, description: description, parameters: parameters)
    }

    /// The entry for the chat completions `tools` array.
    static func functionDefinition(name: String, description: String, parameters: JSON) -> JSON {
        ["type": "function",
         "function": ["name": .string(name), "description": .string(description), "parameters": parameters]]
    }

    public var outputSchema: JSON {
        switch output {
        case .object(let schema): schema
        case .list(let key, let items):
            ["type": "object", "properties": [key: ["type": "array", "items": items]], "required": [.string(key)],
             "additionalProperties": false]
        }
    }

    public func structuredContent(_ result: JSON) -> JSON {
        switch output {
        case .object: result
        case .list(let key, _): .object([(key, result)])
        }
    }
}

/// Arguments that already passed the tool's schema, so handlers read them without re-checking types.
public struct ToolArguments {
    public let json: JSON

    public func string(_ name: String) -> String? { json[name]?.stringValue }
    public func integer(_ name: String) -> Int64? { json[name]?.intValue.map(Int64.init) }
}

/// The set of tools offered to a model, and the one way to run a call.
public struct Toolbox: Sendable {
    public let tools: [Tool]
    /// Told of every run: the tool's name (`unknown` for a name no tool has) and whether it
    /// succeeded.
    private var recorder: (@Sendable (_ tool: String, _ succeeded: Bool) -> Void)?

    public init(_ tools: [Tool]) { self.tools = tools }

    /// The same tools, each run also reported to `recorder`.
    public func recording(_ recorder: @escaping @Sendable (_ tool: String, _ succeeded: Bool) -> Void) -> Toolbox {
        var recorded = self
        recorded.recorder = recorder
        return recorded
    }

    public func tool(named name: String) -> Tool? { tools.first { $0.name == name } }

    public var chatCompletionsDefinitions: JSON { .array(tools.map(\.chatCompletionsDefinition)) }

    /// Runs one call from its raw argument text, as a model sends it. Every failure becomes a
    /// `ToolError`, which goes back to the model as the tool's result, as the OpenAI Agents SDK does.
    public func run(name: String, arguments: String, context: ToolContext) -> Result<JSON, ToolError> {
        let text = arguments.trimmed()
        guard !text.isEmpty else { return run(name: name, arguments: [:], context: context) }
        do throws(JSONParseError) {
            return run(name: name, arguments: try JSON.parse(String(text)), context: context)
        } catch {
            guard tool(named: name) != nil else { return recorded(name, .failure(unknownTool(name))) }
            return recorded(name, .failure(ToolError("arguments are not valid JSON: \(error)")))
        }
    }

    /// Runs one call whose arguments are already JSON (MCP sends them that way).
    public func run(name: String, arguments: JSON, context: ToolContext) -> Result<JSON, ToolError> {
        recorded(name, runUnrecorded(name: name, arguments: arguments, context: context))
    }

    private func recorded(_ name: String, _ result: Result<JSON, ToolError>) -> Result<JSON, ToolError> {
        if let recorder {
            let succeeded = if case .success = result { true } else { false }
            // A name the model made up is not a label: the metrics would grow without bound.
            recorder(tool(named: name) == nil ? "unknown" : name, succeeded)
        }
        return result
    }

    private func runUnrecorded(name: String, arguments: JSON, context: ToolContext) -> Result<JSON, ToolError> {
        guard let tool = tool(named: name) else { return .failure(unknownTool(name)) }
        do throws(ToolError) {
            try SchemaValidator.validate(arguments, against: tool.parameters)
        } catch {
            return .failure(error)
        }
        do {
            return .success(try tool.handler(ToolArguments(json: arguments), context))
        } catch let error as ToolError {
            return .failure(error)
        } catch {
            Log.error("tool \(name) failed: \(error)")
            return .failure(ToolError("the tool failed because of a storage error; try again"))
        }
    }

    private func unknownTool(_ name: String) -> ToolError {
        ToolError("unknown tool '\(name)'; available: \(tools.map(\.name).joined(separator: ", "))")
    }
}

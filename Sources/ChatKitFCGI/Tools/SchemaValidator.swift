/// Checks arguments against the subset of JSON Schema our tool definitions use: object,
/// properties, required, additionalProperties, string/integer/boolean, enum, minLength,
/// maxLength, minimum. The schema stays the single source of truth for what a tool accepts.
enum SchemaValidator {
    static func validate(_ value: JSON, against schema: JSON, path: String = "arguments") throws(ToolError) {
        if let allowed = schema["enum"]?.arrayValue, !allowed.contains(value) {
            let names = allowed.map(\.serialized).joined(separator: ", ")
            throw ToolError("\(path) must be one of \(names)")
        }
        switch schema["type"]?.stringValue {
        case "object":
            guard case .object(let members) = value else { throw ToolError("\(path) must be an object") }
            let properties = schema["properties"]?.objectValue ?? []
            for case .string(let name) in schema["required"]?.arrayValue ?? [] where value[name] == nil {
                throw ToolError("missing required argument '\(name)'")
            }
            for (name, member) in members {
                guard let propertySchema = properties.first(where: { $0.0 == name })?.1 else {
                    if schema["additionalProperties"] == .bool(false) { throw ToolError("unexpected argument '\(name)'") }
                    continue
                }
                try validate(member, against: propertySchema, path: "'\(name)'")
            }
        case "string":
            guard let string = value.stringValue else { throw ToolError("\(path) must be a string, not \(value.typeName)") }
            // Lengths in code points, as JSON Schema counts them: a Character may carry any number
            // of combining marks, so counting Characters would not bound what is stored.
            if let minimum = schema["minLength"]?.intValue, string.trimmed().unicodeScalars.count < minimum {
                throw ToolError("\(path) must not be empty")
            }
            if let maximum = schema["maxLength"]?.intValue, string.unicodeScalars.count > maximum {
                throw ToolError("\(path) must be at most \(maximum) characters (Unicode code points)")
            }
        case "integer":
            guard let integer = value.intValue else { throw ToolError("\(path) must be an integer, not \(value.typeName)") }
            if let minimum = schema["minimum"]?.intValue, integer < minimum {
                throw ToolError("\(path) must be at least \(minimum)")
            }
        case "boolean":
            guard value.boolValue != nil else { throw ToolError("\(path) must be a boolean, not \(value.typeName)") }
        default:
            break
        }
    }
}

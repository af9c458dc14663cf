import ChatKitFCGI

/// The deterministic "model": maps a `messages` array to what the mock answers.
/// Pure functions only, so every rule can be reasoned about from the request alone.

struct ToolCall: Sendable {
    let name: String
    /// Raw arguments string exactly as it will be streamed (may be invalid JSON on purpose).
    let arguments: String
}

struct MockFailure: Sendable {
    let status: Int
    let message: String
    let type: String
    let code: String?
    let retryAfterSeconds: Int?
}

enum MockAnswer: Sendable {
    /// Text, pre-split into the content pieces streamed one per chunk.
    case text([String])
    case toolCalls([ToolCall])
}

enum ScriptOutcome: Sendable {
    case completion(MockPlan)
    /// Reply with an HTTP error instead of a completion (`fail NNN`).
    case failure(MockFailure)
}

enum StreamEnding: Sendable {
    /// finish chunk, optional usage chunk, `[DONE]`.
    case normal
    /// an error record, then `[DONE]` (no finish chunk).
    case midstreamError
    /// just close the socket (no finish chunk, no `[DONE]`).
    case truncate
    /// everything up to `[DONE]`, then silence for 3 s before hanging up without ending the body.
    case linger
}

struct MockPlan: Sendable {
    var answer: MockAnswer
    /// Content pieces streamed before the answer (the `say ... then` command).
    var preamble: [String] = []
    var ending: StreamEnding = .normal
    /// Overrides MOCK_DELAY_MS (the `slow` command).
    var fixedDelayMs: Int?
    /// Use `\r\n` line endings plus `: keepalive` comments (the `crlf` command).
    var crlf = false
}

/// What the last user message asks for, case-insensitively, with a closing `.`, `?` or `!` ignored:
///
/// - the todo commands of `TaskCommands` (add, list, complete, delete, rename) call the tools;
///   once their results come back, `ToolAnswers` words the answer;
/// - `use NAME` calls the tool NAME (a ChatKit client tool, say) with `{"scope":"todos"}`;
/// - `say TEXT then COMMAND` streams TEXT before what COMMAND does;
/// - `slow [N]` streams the N words `w1 w2 ...` (default 40) 50 ms apart;
/// - `fail NNN` answers with HTTP status NNN (400-599), as the OpenAI API does;
/// - `silent` sends the response head and then nothing, `silent head` not even the head, until
///   the client gives up;
/// - `flaky N STATUS` fails the first N sendings of the same request with STATUS (or, for
///   `reset`, closes the connection without an answer), then answers;
/// - `midstream error`, `truncate` and `linger` end the stream in an error record, a cut, or
///   silence after `[DONE]`; `crlf` streams with CRLF line ends and comments;
/// - `badargs` and `unknown tool` make broken tool calls; `loop` calls list_tasks after every
///   result, so the turn never settles; `history` counts the messages it was sent;
/// - `attachments` lists the files of every user message it was sent (`AttachmentParts`);
/// - anything else is echoed: `You said: TEXT`, then the files the message carried, if any.
enum Script {
    static func decide(_ messages: [JSON]) -> ScriptOutcome {
        let lastUser = messages.last(where: { role($0) == "user" })
        let turnCommand = lastUser.map { text(of: $0).trimmingWhitespace() }

        if let last = messages.last, role(last) == "tool" {
            // A `loop` turn never settles, to exercise the client's max-rounds limit.
            if turnCommand.map({ withoutClosingPunctuation($0).lowercased() }) == "loop" {
                return .completion(MockPlan(answer: .toolCalls([TaskCommands.listTasks("all")])))
            }
            return .completion(textPlan(ToolAnswers.reply(to: messages)))
        }
        // Normally the last message is the user's; for anything else (e.g. a
        // trailing assistant message) answer the most recent user message.
        let command: String
        if let last = messages.last, role(last) == "user" {
            command = text(of: last).trimmingWhitespace()
        } else {
            command = turnCommand ?? ""
        }
        if let status = integerArgument(withoutClosingPunctuation(command).lowercased(), after: "fail "),
           (400...599).contains(status) {
            return .failure(failure(status: status))
        }
        if let flaky = flaky(messages) {
            return .completion(textPlan("Recovered after \(flaky.failures) failed attempts."))
        }
        let attachments = Attachments(lastUser: lastUser.map(AttachmentParts.describe) ?? [],
                                      all: messages.filter { role($0) == "user" }.flatMap(AttachmentParts.describe))
        return .completion(planForUserCommand(command, messageCount: messages.count, attachments: attachments))
    }

    /// What the user's messages carried: the last one's, and all of the request's.
    private struct Attachments {
        var lastUser: [String] = []
        var all: [String] = []
    }

    private static func planForUserCommand(_ c: String, messageCount: Int, attachments: Attachments = Attachments()) -> MockPlan {
        let command = withoutClosingPunctuation(c)
        let lc = command.lowercased()

        // "say TEXT then COMMAND": text first, as models often write before calling tools.
        if lc.hasPrefix("say ") {
            let parts = split(String(command.dropFirst(4)), onIgnoringCase: " then ", maxSplits: 1)
            if parts.count == 2 {
                var plan = planForUserCommand(parts[1].trimmingWhitespace(), messageCount: messageCount)
                plan.preamble = words(parts[0] + " ")
                return plan
            }
        }

        if let calls = TaskCommands.toolCalls(for: command) {
            return MockPlan(answer: .toolCalls(calls))
        }
        // "use NAME": a call to any tool by name, e.g. a ChatKit client tool the browser runs.
        if lc.hasPrefix("use "), let name = command.dropFirst(4).split(separator: " ").first {
            return MockPlan(answer: .toolCalls([ToolCall(name: String(name), arguments: json(["scope": "todos"]))]))
        }
        switch lc {
        case "badargs":
            return MockPlan(answer: .toolCalls([ToolCall(name: "add_task", arguments: "{\"title\": ")]))
        case "unknown tool":
            return MockPlan(answer: .toolCalls([ToolCall(name: "launch_rocket", arguments: "{}")]))
        case "loop":
            return MockPlan(answer: .toolCalls([TaskCommands.listTasks("all")]))
        case "midstream error":
            return MockPlan(answer: .text(["partial ", "answer "]), ending: .midstreamError)
        case "truncate":
            return MockPlan(answer: .text(["partial ", "answer "]), ending: .truncate)
        case "linger":
            var plan = textPlan("complete answer")
            plan.ending = .linger
            return plan
        case "crlf":
            var plan = textPlan("crlf works")
            plan.crlf = true
            return plan
        case "history":
            return textPlan("I received \(messageCount) messages.")
        case "attachments":
            return textPlan("I received \(attachments.all.count) attachments: \(attachments.all.joined(separator: "; ")).")
        default:
            break
        }
        if lc == "slow" || lc.hasPrefix("slow ") {
            let argument = String(lc.dropFirst(4)).trimmingWhitespace()
            if let count = argument.isEmpty ? 40 : Int(argument), count >= 0 {
                var plan = textPlan((0..<count).map { "w\($0 + 1)" }.joined(separator: " "))
                plan.fixedDelayMs = 50
                return plan
            }
        }
        guard !attachments.lastUser.isEmpty else { return textPlan("You said: \(c)") }
        return textPlan("You said: \(c) Attachments: \(attachments.lastUser.joined(separator: "; ")).")
    }

    enum Silence { case afterHead, beforeHead }

    /// `silent` (a head, then nothing) or `silent head` (nothing at all) as the last message.
    static func silence(_ messages: [JSON]) -> Silence? {
        guard let last = messages.last, role(last) == "user" else { return nil }
        switch withoutClosingPunctuation(text(of: last)).lowercased().trimmingWhitespace() {
        case "silent": return .afterHead
        case "silent head": return .beforeHead
        default: return nil
        }
    }

    /// `flaky N STATUS` (STATUS a number from 400 to 599, or `reset`) as the last user message.
    static func flaky(_ messages: [JSON]) -> (failures: Int, status: Int?)? {
        guard let last = messages.last(where: { role($0) == "user" }) else { return nil }
        let words = withoutClosingPunctuation(text(of: last)).lowercased().split(separator: " ")
        guard words.count == 3, words[0] == "flaky", let failures = Int(words[1]), failures >= 0 else { return nil }
        if words[2] == "reset" { return (failures, nil) }
        guard let status = Int(words[2]), (400...599).contains(status) else { return nil }
        return (failures, status)
    }

    static func failure(status: Int) -> MockFailure {
        switch status {
        case 429:
            return MockFailure(status: 429, message: "Rate limit reached (mock)", type: "rate_limit_error",
                               code: "rate_limit_exceeded", retryAfterSeconds: 7)
        case 401:
            return MockFailure(status: 401, message: "Incorrect API key provided (mock)", type: "invalid_request_error",
                               code: "invalid_api_key", retryAfterSeconds: nil)
        case 500...599:
            return MockFailure(status: status, message: "The server had an error while processing your request (mock \(status))",
                               type: "server_error", code: nil, retryAfterSeconds: nil)
        default:
            return MockFailure(status: status, message: "Mock failure \(status)", type: "invalid_request_error",
                               code: nil, retryAfterSeconds: nil)
        }
    }

    // MARK: - Helpers

    private static func textPlan(_ text: String) -> MockPlan {
        MockPlan(answer: .text(words(text)))
    }

    private static func json(_ value: JSON) -> String { value.serialized }

    /// Word-by-word pieces: every word keeps its following space except the last,
    /// so concatenating the pieces reproduces the text exactly.
    static func words(_ text: String) -> [String] {
        // Split as UTF-8 bytes: a space is one byte and never inside a scalar, and splitting
        // Characters cost the mock 3K instructions a word, on the benchmark's two shared cores.
        let bytes = Array(text.utf8)
        var words: [String] = []
        var start = 0
        for (index, byte) in bytes.enumerated() where byte == UInt8(ascii: " ") {
            words.append(String(decoding: bytes[start...index], as: UTF8.self))
            start = index + 1
        }
        if start < bytes.count { words.append(String(decoding: bytes[start...], as: UTF8.self)) }
        return words
    }

    /// Splits into fragments of at most 7 UTF-8 bytes without cutting a scalar
    /// (a single scalar is never split, so a fragment is never empty).
    static func argumentFragments(_ arguments: String, maxBytes: Int = 7) -> [String] {
        var fragments: [String] = []
        var current = String.UnicodeScalarView()
        var currentBytes = 0
        for scalar in arguments.unicodeScalars {
            let size = UTF8.width(scalar)
            if currentBytes + size > maxBytes && currentBytes > 0 {
                fragments.append(String(current))
                current = String.UnicodeScalarView()
                currentBytes = 0
            }
            current.append(scalar)
            currentBytes += size
        }
        if currentBytes > 0 { fragments.append(String(current)) }
        return fragments
    }

    static func role(_ message: JSON) -> String {
        message["role"]?.stringValue ?? ""
    }

    /// Message content as text: a string as-is, an array of parts as its
    /// `text` parts joined with a space, anything else (null) as "".
    static func text(of message: JSON) -> String {
        switch message["content"] {
        case .string(let s)?:
            return s
        case .array(let parts)?:
            return parts.compactMap { part -> String? in
                if let type = part["type"]?.stringValue, type != "text" { return nil }
                return part["text"]?.stringValue.flatMap { AttachmentParts.isAttachedText($0) ? nil : $0 }
            }.joined(separator: " ")
        default:
            return ""
        }
    }

    /// Without the period, question mark or exclamation mark that ends a sentence (and the
    /// spaces around it): "add buy milk." adds "buy milk", "list my tasks?" lists them.
    static func withoutClosingPunctuation(_ text: String) -> String {
        guard let last = text.lastIndex(where: { !$0.isWhitespace && !".?!".contains($0) }) else { return "" }
        return String(text[...last])
    }

    private static func integerArgument(_ lc: String, after prefix: String) -> Int? {
        guard lc.hasPrefix(prefix) else { return nil }
        return Int(String(lc.dropFirst(prefix.count)).trimmingWhitespace())
    }

    /// Case-insensitive split on an ASCII separator, preserving the original
    /// casing of the pieces (task titles keep their capitalisation).
    static func split(_ text: String, onIgnoringCase separator: String, maxSplits: Int = .max) -> [String] {
        let chars = Array(text)
        let sep = Array(separator.lowercased())
        var parts: [String] = []
        var current = ""
        var i = 0
        while i < chars.count {
            if parts.count < maxSplits, i + sep.count <= chars.count,
               (0..<sep.count).allSatisfy({ chars[i + $0].lowercased() == String(sep[$0]) }) {
                parts.append(current)
                current = ""
                i += sep.count
            } else {
                current.append(chars[i])
                i += 1
            }
        }
        parts.append(current)
        return parts
    }
}

extension String {
    func trimmingWhitespace() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }),
              let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}

import ChatKitFCGI

/// The todo commands, in a small fixed grammar read word by word and case-insensitively, so the
/// phrasings a newcomer tries first work and every rule stays predictable:
///
///     add [task | a task | tasks] TITLE [and TITLE]...
///     list [all] [my] [pending | completed | done] [tasks]
///     show [me] [all] [my] [pending | completed | done] tasks
///     what are [all] [my] [pending | completed | done] tasks
///     complete REF | done REF | mark REF [as] (done | complete | completed)
///     delete REF | remove REF
///     rename REF to TITLE | update REF to TITLE
///
/// REF is `N`, `#N`, `task N` or `task #N`. After `add`, the word "task" is dropped only when a
/// title follows it ("add task" adds a task called "task"); after `list`, other words list all
/// tasks. Titles keep their casing and spacing.
enum TaskCommands {
    private static let verbs: Set<String> = ["add", "list", "show", "what", "complete", "done", "mark", "delete", "remove",
                                             "rename", "update"]

    /// The tool calls `command` asks for, or nil when it is no todo command.
    static func toolCalls(for command: String) -> [ToolCall]? {
        // Most messages are not commands, and their first word alone says so.
        let verb = command.prefix(while: { !$0.isWhitespace }).lowercased()
        guard verbs.contains(verb) else { return nil }
        var words = Words(command)
        _ = words.next()
        switch verb {
        case "add":
            return add(&words)
        case "list":
            return [listTasks(words.listStatus(tasksNamed: false) ?? "all")]
        case "show":
            _ = words.skip("me")
            return words.listStatus(tasksNamed: true).map { [listTasks($0)] }
        case "what":
            guard words.skip("are") else { return nil }
            return words.listStatus(tasksNamed: true).map { [listTasks($0)] }
        case "complete", "done":
            guard let id = words.taskReference(), words.atEnd else { return nil }
            return [call("complete_task", ["task_id": .int(id)])]
        case "mark":
            guard let id = words.taskReference() else { return nil }
            _ = words.skip("as")
            guard words.skip("done", "complete", "completed"), words.atEnd else { return nil }
            return [call("complete_task", ["task_id": .int(id)])]
        case "delete", "remove":
            guard let id = words.taskReference(), words.atEnd else { return nil }
            return [call("delete_task", ["task_id": .int(id)])]
        default:  // rename, update
            guard let id = words.taskReference(), words.skip("to"), !words.atEnd else { return nil }
            return [call("update_task", ["task_id": .int(id), "title": .string(String(words.rest))])]
        }
    }

    static func listTasks(_ status: String) -> ToolCall {
        call("list_tasks", ["status": .string(status)])
    }

    private static func add(_ words: inout Words) -> [ToolCall]? {
        guard !words.atEnd else { return nil }
        // "add task buy milk": the word says what is added, it is not part of the title.
        for lead in [["a", "task"], ["task"], ["tasks"]] {
            var afterLead = words
            if lead.allSatisfy({ afterLead.skip($0) }), !afterLead.atEnd {
                words = afterLead
                break
            }
        }
        // Never empty: the rest starts with a word, so the first title does too.
        return Script.split(String(words.rest), onIgnoringCase: " and ")
            .map { $0.trimmingWhitespace() }
            .filter { !$0.isEmpty }
            .map { call("add_task", ["title": .string($0)]) }
    }

    private static func call(_ name: String, _ arguments: JSON) -> ToolCall {
        ToolCall(name: name, arguments: arguments.serialized)
    }
}

/// A command's words, read from left to right: compared lowercased, while titles are cut from
/// the original text.
private struct Words {
    private let text: String
    private let words: [Substring]
    private var position = 0

    init(_ text: String) {
        self.text = text
        words = text.split(whereSeparator: \.isWhitespace)
    }

    var atEnd: Bool { position == words.count }

    /// The original text from the next word to the end.
    var rest: Substring { atEnd ? "" : text[words[position].startIndex...] }

    /// Takes the next word, lowercased.
    mutating func next() -> String? {
        guard !atEnd else { return nil }
        position += 1
        return words[position - 1].lowercased()
    }

    /// Takes the next word when it is one of `options`.
    mutating func skip(_ options: String...) -> Bool {
        guard !atEnd, options.contains(words[position].lowercased()) else { return false }
        position += 1
        return true
    }

    /// `N`, `#N`, `task N` or `task #N`.
    mutating func taskReference() -> Int? {
        _ = skip("task")
        guard let word = next() else { return nil }
        return Int(word.hasPrefix("#") ? String(word.dropFirst()) : word)
    }

    /// `[all] [my] [pending | completed | done] [tasks]` up to the end: the status to list, or
    /// nil when other words follow or `tasksNamed` requires the word "tasks" and it is missing.
    mutating func listStatus(tasksNamed: Bool) -> String? {
        _ = skip("all")
        _ = skip("my")
        let status = skip("pending") ? "pending" : skip("completed", "done") ? "completed" : "all"
        let named = skip("tasks")
        guard atEnd, named || !tasksNamed else { return nil }
        return status
    }
}

import ChatKitFCGI

/// What the mock says once tool results come back: a sentence for each result, worded from the
/// JSON the backend's tools return, as an assistant would put it.
enum ToolAnswers {
    /// What add, complete, delete and update did, in the words of their answers.
    private static let summaryVerbs = ["add_task": "Added", "complete_task": "Completed", "delete_task": "Deleted",
                                       "update_task": "Updated"]

    /// The answer to the tool results that end `messages`, each read along with the call it
    /// answers (the assistant message just before them).
    static func reply(to messages: [JSON]) -> String {
        let results = messages.reversed().prefix(while: { Script.role($0) == "tool" }).reversed()
        let calls = messages.dropLast(results.count).last?["tool_calls"]?.arrayValue ?? []
        return results.map { result in
            let id = result["tool_call_id"]?.stringValue
            let function = calls.first(where: { $0["id"]?.stringValue == id })?["function"]
            return sentence(tool: function?["name"]?.stringValue, arguments: function?["arguments"]?.stringValue,
                            result: Script.text(of: result))
        }.joined(separator: " ")
    }

    private static func sentence(tool: String?, arguments: String?, result text: String) -> String {
        let result = try? JSON.parse(text)
        if let error = result?["error"]?.stringValue {
            return "Sorry, that did not work: \(closed(error))"
        }
        if let verb = tool.flatMap({ summaryVerbs[$0] }), let id = result?["task_id"]?.intValue,
           let title = result?["title"]?.stringValue {
            return "\(verb) task \(id): \(closed(title))"
        }
        if tool == "list_tasks", let tasks = result?.arrayValue,
           let listed = list(tasks, status: arguments.flatMap { try? JSON.parse($0) }?["status"]?.stringValue) {
            return listed
        }
        // A list the backend shortened for the model: `{"items": [...], "note": "showing ..."}`.
        if tool == "list_tasks", let tasks = result?["items"]?.arrayValue, let note = result?["note"]?.stringValue {
            return "Your list is long (\(note)); the newest is \(tasks.last?["title"]?.stringValue ?? "none")."
        }
        // Anything else, such as what a client tool returned, is shown as it came.
        return tool.map { "The \($0) tool returned \(closed(text))" } ?? "A tool returned \(closed(text))"
    }

    /// "You have 2 tasks: 1. buy milk (pending); 2. walk the dog (done)." For a filtered list the
    /// filter is named ("You have no pending tasks."); nil when an entry is not a task.
    private static func list(_ tasks: [JSON], status: String?) -> String? {
        let kind = status == "pending" || status == "completed" ? "\(status!) " : ""
        guard !tasks.isEmpty else { return "You have no \(kind)tasks." }
        var entries: [String] = []
        for task in tasks {
            guard let id = task["id"]?.intValue, let title = task["title"]?.stringValue,
                  let completed = task["completed"]?.boolValue else { return nil }
            entries.append("\(id). \(title) (\(completed ? "done" : "pending"))")
        }
        return "You have \(tasks.count) \(kind)\(tasks.count == 1 ? "task" : "tasks"): \(entries.joined(separator: "; "))."
    }

    /// The text as the end of a sentence: with a full stop unless it already ends like one.
    private static func closed(_ text: String) -> String {
        text.hasSuffix(".") || text.hasSuffix("!") || text.hasSuffix("?") ? text : text + "."
    }
}

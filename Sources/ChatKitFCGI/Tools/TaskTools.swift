/// The todo-list tools. Each name, description, schema and handler is written here once.
public enum TaskTools {
    public static let toolbox = Toolbox([addTask, listTasks, completeTask, deleteTask, updateTask])

    private static let taskID: JSON = ["type": "integer", "minimum": 1, "description": "The task's id, as returned by add_task or list_tasks."]
    private static let title: JSON = ["type": "string", "minLength": 1, "maxLength": 500, "description": "Short task text."]
    private static let details: JSON = ["type": "string", "maxLength": 5000, "description": "Optional longer notes."]
    private static let onlyTaskID: JSON = ["type": "object", "properties": ["task_id": taskID], "required": ["task_id"],
                                           "additionalProperties": false]

    /// What add, complete, delete and update return.
    private static let summarySchema: JSON = [
        "type": "object",
        "properties": ["task_id": ["type": "integer"], "status": ["type": "string"], "title": ["type": "string"]],
        "required": ["task_id", "status", "title"],
    ]

    /// One entry of list_tasks, as `TodoTask.json` writes it.
    private static let taskSchema: JSON = [
        "type": "object",
        "properties": ["id": ["type": "integer"], "title": ["type": "string"], "description": ["type": ["string", "null"]],
                       "completed": ["type": "boolean"], "created_at": ["type": "string"]],
        "required": ["id", "title", "description", "completed", "created_at"],
    ]

    static let addTask = Tool(
        name: "add_task",
        title: "Add task",
        description: "Add a task to the user's todo list.",
        parameters: ["type": "object", "properties": ["title": title, "description": details],
                     "required": ["title"], "additionalProperties": false],
        output: .object(summarySchema),
        hints: Tool.Hints(destructive: false)
    ) { arguments, context in
        guard let task = try context.store.addTask(
            userID: context.userID, title: String(arguments.string("title")!.trimmed()),
            description: arguments.string("description"), limit: context.maxTasks)
        else {
            throw ToolError("the todo list is full (\(context.maxTasks) tasks): delete some first")
        }
        return summary(task, status: "created")
    }

    static let listTasks = Tool(
        name: "list_tasks",
        title: "List tasks",
        description: "List the user's tasks, optionally only pending or only completed ones.",
        parameters: ["type": "object",
                     "properties": ["status": ["type": "string", "enum": ["all", "pending", "completed"],
                                               "description": "Which tasks to list; default all."]],
                     "additionalProperties": false],
        output: .list(key: "tasks", items: taskSchema),
        hints: Tool.Hints(readOnly: true, destructive: false, idempotent: true)
    ) { arguments, context in
        let filter = TaskFilter(rawValue: arguments.string("status") ?? "all") ?? .all
        return .array(try context.store.tasks(userID: context.userID, filter: filter).map(\.json))
    }

    static let completeTask = Tool(
        name: "complete_task",
        title: "Complete task",
        description: "Mark one of the user's tasks as completed.",
        parameters: onlyTaskID,
        output: .object(summarySchema),
        hints: Tool.Hints(destructive: false, idempotent: true)
    ) { arguments, context in
        let id = arguments.integer("task_id")!
        guard let task = try context.store.completeTask(id: id, userID: context.userID) else { throw notFound(id) }
        return summary(task, status: "completed")
    }

    static let deleteTask = Tool(
        name: "delete_task",
        title: "Delete task",
        description: "Delete one of the user's tasks.",
        parameters: onlyTaskID,
        output: .object(summarySchema),
        hints: Tool.Hints(destructive: true, idempotent: true)
    ) { arguments, context in
        let id = arguments.integer("task_id")!
        guard let task = try context.store.deleteTask(id: id, userID: context.userID) else { throw notFound(id) }
        return summary(task, status: "deleted")
    }

    static let updateTask = Tool(
        name: "update_task",
        title: "Update task",
        description: "Change the title or description of one of the user's tasks.",
        parameters: ["type": "object", "properties": ["task_id": taskID, "title": title, "description": details],
                     "required": ["task_id"], "additionalProperties": false],
        output: .object(summarySchema),
        hints: Tool.Hints(destructive: true, idempotent: true)
    ) { arguments, context in
        let id = arguments.integer("task_id")!
        let newTitle = arguments.string("title").map { String($0.trimmed()) }
        let newDescription = arguments.string("description")
        guard newTitle != nil || newDescription != nil else { throw ToolError("give a new title or description") }
        guard let task = try context.store.updateTask(
            id: id, userID: context.userID, title: newTitle, description: newDescription)
        else { throw notFound(id) }
        return summary(task, status: "updated")
    }

    private static func summary(_ task: TodoTask, status: String) -> JSON {
        ["task_id": .int(Int(task.id)), "status": .string(status), "title": .string(task.title)]
    }

    /// The same words whether the task never existed or belongs to someone else.
    private static func notFound(_ id: Int64) -> ToolError { ToolError("task \(id) not found") }
}

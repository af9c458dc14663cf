@testable import ChatKitFCGI
import Testing

@Suite struct TaskToolTests {
    let database = TemporaryDatabase()
    let store: SQLiteStore
    let tools = TaskTools.toolbox

    init() throws { store = try database.store() }

    func run(_ name: String, _ arguments: String, as user: String = "alice") -> Result<JSON, ToolError> {
        tools.run(name: name, arguments: arguments, context: ToolContext(userID: user, store: store))
    }

    func value(_ result: Result<JSON, ToolError>) throws -> JSON { try result.get() }

    @Test func addTaskCreatesARow() throws {
        let added = try value(run("add_task", #"{"title":"  buy milk ","description":"2 litres"}"#))
        #expect(added == ["task_id": 1, "status": "created", "title": "buy milk"])
        let listed = try store.tasks(userID: "alice", filter: .all)
        #expect(listed.map(\.title) == ["buy milk"])
        #expect(listed.first?.description == "2 litres")
    }

    @Test func listTasksFiltersByStatus() throws {
        _ = run("add_task", #"{"title":"a"}"#)
        _ = run("add_task", #"{"title":"b"}"#)
        _ = run("complete_task", #"{"task_id":1}"#)
        let all = try value(run("list_tasks", #"{"status":"all"}"#)).arrayValue!
        #expect(all.map { $0["title"]! } == ["a", "b"])
        #expect(all[0]["completed"] == true)
        #expect(all[0]["created_at"]?.stringValue?.hasSuffix("Z") == true)
        #expect(all[0].objectValue!.map(\.0) == ["id", "title", "description", "completed", "created_at"])
        #expect(try value(run("list_tasks", #"{"status":"pending"}"#)).arrayValue!.map { $0["title"]! } == ["b"])
        #expect(try value(run("list_tasks", #"{"status":"completed"}"#)).arrayValue!.map { $0["title"]! } == ["a"])
        #expect(try value(run("list_tasks", "")).arrayValue!.count == 2)
    }

    @Test func completeUpdateAndDeleteReportTheirStatus() throws {
        _ = run("add_task", #"{"title":"draft"}"#)
        #expect(try value(run("complete_task", #"{"task_id":1}"#)) == ["task_id": 1, "status": "completed", "title": "draft"])
        #expect(try value(run("update_task", #"{"task_id":1,"title":"final"}"#)) == ["task_id": 1, "status": "updated", "title": "final"])
        #expect(try store.tasks(userID: "alice", filter: .all).first?.description == nil)
        _ = run("update_task", #"{"task_id":1,"description":"notes"}"#)
        #expect(try store.tasks(userID: "alice", filter: .all).first?.title == "final")
        #expect(try value(run("delete_task", #"{"task_id":1}"#)) == ["task_id": 1, "status": "deleted", "title": "final"])
        #expect(try store.tasks(userID: "alice", filter: .all).isEmpty)
        #expect(throws: ToolError("task 1 not found")) { try run("delete_task", #"{"task_id":1}"#).get() }
    }

    @Test(arguments: [
        ("add_task", "{\"title\": ", "arguments are not valid JSON"),
        ("add_task", "{}", "missing required argument 'title'"),
        ("add_task", "{\"title\":\"   \"}", "'title' must not be empty"),
        ("add_task", "{\"title\":5}", "'title' must be a string, not integer"),
        ("add_task", "{\"title\":\"x\",\"owner\":\"bob\"}", "unexpected argument 'owner'"),
        ("add_task", "[]", "arguments must be an object"),
        // Code points, not Characters: this title is one Character of 601 code points.
        ("add_task", "{\"title\":\"a\(String(repeating: "\u{301}", count: 600))\"}", "'title' must be at most 500 characters"),
        ("list_tasks", "{\"status\":\"done\"}", "'status' must be one of \"all\", \"pending\", \"completed\""),
        ("complete_task", "{\"task_id\":\"1\"}", "'task_id' must be an integer, not string"),
        ("complete_task", "{\"task_id\":1.5}", "'task_id' must be an integer, not number"),
        ("delete_task", "{\"task_id\":0}", "'task_id' must be at least 1"),
        ("update_task", "{\"task_id\":1}", "give a new title or description"),
        ("launch_rocket", "{}", "unknown tool 'launch_rocket'"),
    ])
    func badArgumentsBecomeErrorsTheModelCanRead(tool: String, arguments: String, message: String) throws {
        _ = run("add_task", #"{"title":"existing"}"#)
        guard case .failure(let error) = run(tool, arguments) else {
            Issue.record("\(tool) \(arguments) should fail")
            return
        }
        #expect(error.message.hasPrefix(message), "\(error.message)")
        #expect(try store.tasks(userID: "alice", filter: .all).map(\.title) == ["existing"])
    }

    @Test func oneUserCanNeitherSeeNorChangeAnothersTasks() throws {
        _ = run("add_task", #"{"title":"alice's secret"}"#, as: "alice")
        #expect(try value(run("list_tasks", "{}", as: "bob")) == [])
        for (tool, arguments) in [("complete_task", #"{"task_id":1}"#), ("delete_task", #"{"task_id":1}"#),
                                  ("update_task", #"{"task_id":1,"title":"pwned"}"#)] {
            #expect(throws: ToolError("task 1 not found")) { try run(tool, arguments, as: "bob").get() }
        }
        let alices = try store.tasks(userID: "alice", filter: .all)
        #expect(alices.map(\.title) == ["alice's secret"])
        #expect(alices.first?.completed == false)
    }

    @Test func everyToolHasAnObjectSchemaTheModelCanUse() {
        #expect(tools.tools.map(\.name) == ["add_task", "list_tasks", "complete_task", "delete_task", "update_task"])
        for tool in tools.tools {
            #expect(tool.parameters["type"] == "object")
            #expect(tool.chatCompletionsDefinition["function"]?["name"] == .string(tool.name))
        }
    }
}

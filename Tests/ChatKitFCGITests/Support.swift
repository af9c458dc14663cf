@testable import ChatKitFCGI
import Glibc

/// Test files live beside this source file; no Foundation bundle needed.
enum Fixture {
    static let directory: String = {
        let file = String(#filePath)
        return String(file[..<file.lastIndex(of: "/")!]) + "/Fixtures"
    }()

    static func json(_ name: String) throws -> JSON {
        try JSON.parse(try FileSystem.read("\(directory)/\(name)"))
    }
}

/// A fresh SQLite file per test, removed afterwards.
final class TemporaryDatabase {
    let directory: String
    var path: String { directory + "/test.db" }

    init() {
        var template = Array("/tmp/chatkit-test-XXXXXX".utf8CString)
        directory = String(cString: mkdtemp(&template)!)
    }

    deinit {
        for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
        rmdir(directory)
    }

    func store() throws -> SQLiteStore {
        let store = try SQLiteStore(path: path)
        try store.migrate()
        return store
    }
}

extension ChatCompletionChunk {
    /// A chunk written as a JSON literal, read as the relay reads the bytes it receives.
    init(_ json: JSON) throws(ModelError) {
        self = try json.serializedBytes.withUnsafeBufferPointer { bytes throws(ModelError) in
            try ChatCompletionChunk(bytes: bytes)
        }
    }
}

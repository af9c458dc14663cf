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
        let store = SQLiteStore(path: path)
        try store.migrate()
        return store
    }
}

/// Where a store test runs: SQLite always; PostgreSQL when `CHATKIT_TEST_POSTGRES_URL` names a
/// server the tests may create databases on (`Tests/run-all` starts one).
enum StoreKind: String, CustomStringConvertible, CaseIterable, Sendable {
    case sqlite, postgres

    static var available: [StoreKind] { postgresAdminURL == nil ? [.sqlite] : [.sqlite, .postgres] }

    static var postgresAdminURL: String? { getenv("CHATKIT_TEST_POSTGRES_URL").map { String(cString: $0) } }

    var description: String { rawValue }
}

/// A fresh, migrated database of either kind, removed afterwards.
final class TestDatabase {
    let kind: StoreKind
    let database: any StoreDatabase
    private let sqliteFile: TemporaryDatabase?
    private let postgresName: String?

    init(_ kind: StoreKind, migrated: Bool = true) throws {
        self.kind = kind
        switch kind {
        case .sqlite:
            let file = TemporaryDatabase()
            sqliteFile = file
            postgresName = nil
            database = SQLiteDatabase(path: file.path)
        case .postgres:
            let name = "chatkit_unit_" + PublicID.make(.message).dropFirst(4)
            try Self.admin().execute("CREATE DATABASE \(name)")
            sqliteFile = nil
            postgresName = name
            database = PostgresDatabase(url: Self.url(of: name))
        }
        if migrated { try database.makeStore().migrate() }
    }

    deinit {
        if let postgresName { _ = try? Self.admin().execute("DROP DATABASE IF EXISTS \(postgresName) WITH (FORCE)") }
    }

    func store() throws -> any Store { try database.makeStore() }

    private static func admin() throws -> PostgresConnection {
        try PostgresConnection(url: StoreKind.postgresAdminURL!, connectTimeoutSeconds: 5, applicationName: "chatkit-tests")
    }

    /// The admin URL with the database name replaced.
    static func url(of database: String) -> String {
        let admin = StoreKind.postgresAdminURL!
        let path = admin.lastIndex(of: "/")!
        return admin[...path] + database
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

import CSQLite

/// A failed SQLite call. The SQL is kept for logs; bound values never are, so user data and
/// secrets stay out of `description`.
public struct SQLiteError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String
    public let sql: String?

    /// What a write is told when SQLite rolled its transaction back because of another write.
    static let transactionRolledBack = SQLiteError(
        code: SQLITE_ABORT, message: "a write failed and SQLite rolled back its transaction", sql: nil)

    public var description: String { "SQLite error \(code): \(message)" + (sql.map { " in \($0)" } ?? "") }
}

public enum SQLValue: Equatable, Sendable {
    case null
    case integer(Int64)
    case text(String)
    /// Bytes as they are (an attachment's file).
    case blob([UInt8])
}

extension SQLValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(nilLiteral: ()) { self = .null }
    public init(_ text: String?) { self = text.map(SQLValue.text) ?? .null }
    public init(_ integer: Int) { self = .integer(Int64(integer)) }
}

/// One connection. Not thread-safe by design: used by one thread at a time (the database's
/// writer under its lock, a reader lent by the pool for one store call).
public final class SQLiteConnection {
    private var handle: OpaquePointer?
    private var statements: [String: SQLiteStatement] = [:]

    public init(path: String, busyTimeoutMilliseconds: Int32 = 5000) throws(SQLiteError) {
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let status = sqlite3_open_v2(path, &handle, flags, nil)
        guard status == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close_v2(handle)
            throw SQLiteError(code: status, message: message, sql: nil)
        }
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, busyTimeoutMilliseconds)
        try execute("PRAGMA journal_mode = WAL")
        try execute("PRAGMA synchronous = NORMAL")
        try execute("PRAGMA foreign_keys = ON")
        // A WAL that once grew (a long reader held it) shrinks back when it next starts over.
        try execute("PRAGMA journal_size_limit = \(64 << 20)")
    }

    deinit {
        statements.removeAll()
        sqlite3_close_v2(handle)
    }

    /// Runs SQL text with no parameters (schema, pragmas).
    public func execute(_ sql: String) throws(SQLiteError) {
        var error: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &error)
        if status != SQLITE_OK {
            let message = error.map { String(cString: $0) } ?? lastErrorMessage
            sqlite3_free(error)
            throw SQLiteError(code: status, message: message, sql: sql)
        }
    }

    /// Prepared once per connection and reused.
    func statement(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        if let cached = statements[sql] { return cached }
        var raw: OpaquePointer?
        let status = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &raw, nil)
        guard status == SQLITE_OK, let raw else {
            throw SQLiteError(code: status, message: lastErrorMessage, sql: sql)
        }
        let statement = SQLiteStatement(raw, connection: self, sql: sql)
        statements[sql] = statement
        return statement
    }

    /// Runs a statement and maps every row; the statement is reset for reuse afterwards.
    public func query<Row>(_ sql: String, _ arguments: [SQLValue] = [], row: (SQLiteRow) -> Row) throws(SQLiteError) -> [Row] {
        let statement = try statement(sql)
        defer { statement.reset() }
        try statement.bind(arguments)
        var rows: [Row] = []
        while try statement.step() { rows.append(row(SQLiteRow(statement: statement.raw))) }
        return rows
    }

    @discardableResult
    public func run(_ sql: String, _ arguments: [SQLValue] = []) throws(SQLiteError) -> Int {
        let statement = try statement(sql)
        defer { statement.reset() }
        try statement.bind(arguments)
        while try statement.step() {}
        return Int(sqlite3_changes(handle))
    }

    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    public enum CheckpointMode {
        /// Copies what no reader still needs; never waits.
        case passive
        /// Copies everything, then waits (busy handler) until no reader uses the WAL, so the
        /// next writer starts it again from the beginning instead of appending.
        case restart
    }

    /// Copies WAL frames into the database file. Returns the frames in the WAL and how many of
    /// them are now in the database file.
    @discardableResult
    public func checkpoint(_ mode: CheckpointMode) throws(SQLiteError) -> (walFrames: Int, copiedFrames: Int) {
        var walFrames: Int32 = 0
        var copiedFrames: Int32 = 0
        let status = sqlite3_wal_checkpoint_v2(
            handle, nil, mode == .passive ? SQLITE_CHECKPOINT_PASSIVE : SQLITE_CHECKPOINT_RESTART, &walFrames, &copiedFrames)
        guard status == SQLITE_OK else { throw SQLiteError(code: status, message: lastErrorMessage, sql: nil) }
        return (Int(walFrames), Int(copiedFrames))
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so concurrent writers wait on the busy
    /// timeout instead of failing halfway with SQLITE_BUSY.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try bracketed(begin: "BEGIN IMMEDIATE", commit: ["COMMIT"], rollback: ["ROLLBACK"], body)
    }

    /// False once SQLite has rolled a transaction back on its own (after an I/O error, say).
    public var inTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    /// Inside a transaction: if `body` throws, only what it changed is undone.
    /// When that undo fails, the whole transaction is rolled back rather than left holding a
    /// failed write's changes (`inTransaction` then turns false).
    public func savepoint<T>(_ body: () throws -> T) throws -> T {
        try bracketed(begin: "SAVEPOINT one_write", commit: ["RELEASE one_write"],
                      rollback: ["ROLLBACK TO one_write", "RELEASE one_write"], ifRollbackFails: "ROLLBACK", body)
    }

    private func bracketed<T>(begin: String, commit: [String], rollback: [String], ifRollbackFails: String? = nil,
                              _ body: () throws -> T) throws -> T {
        try run(begin)
        do {
            let result = try body()
            for statement in commit { try run(statement) }
            return result
        } catch {
            do {
                for statement in rollback { try run(statement) }
            } catch {
                if let ifRollbackFails { _ = try? run(ifRollbackFails) }
            }
            throw error
        }
    }

    var lastErrorMessage: String { String(cString: sqlite3_errmsg(handle)) }
}

final class SQLiteStatement {
    let raw: OpaquePointer
    private unowned let connection: SQLiteConnection
    private let sql: String

    init(_ raw: OpaquePointer, connection: SQLiteConnection, sql: String) {
        self.raw = raw
        self.connection = connection
        self.sql = sql
    }

    deinit { sqlite3_finalize(raw) }

    func bind(_ arguments: [SQLValue]) throws(SQLiteError) {
        guard arguments.count == Int(sqlite3_bind_parameter_count(raw)) else {
            throw SQLiteError(code: SQLITE_RANGE, message: "expected \(sqlite3_bind_parameter_count(raw)) arguments", sql: sql)
        }
        for (offset, value) in arguments.enumerated() {
            let index = Int32(offset + 1)
            let status: Int32
            switch value {
            case .null: status = sqlite3_bind_null(raw, index)
            case .integer(let integer): status = sqlite3_bind_int64(raw, index, integer)
            case .text(let text):
                let bytes = text.storable.utf8CString
                status = bytes.withUnsafeBufferPointer {
                    sqlite3_bind_text(raw, index, $0.baseAddress, Int32($0.count - 1), csqlite_transient())
                }
            case .blob(let bytes):
                // A zero-length blob, not NULL, even when the array has no storage.
                status = bytes.withUnsafeBytes {
                    sqlite3_bind_blob64(raw, index, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), UInt64($0.count),
                                        csqlite_transient())
                }
            }
            guard status == SQLITE_OK else { throw SQLiteError(code: status, message: connection.lastErrorMessage, sql: sql) }
        }
    }

    /// True while there is a row to read.
    func step() throws(SQLiteError) -> Bool {
        switch sqlite3_step(raw) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case let status: throw SQLiteError(code: status, message: connection.lastErrorMessage, sql: sql)
        }
    }

    func reset() {
        sqlite3_reset(raw)
        sqlite3_clear_bindings(raw)
    }
}

public struct SQLiteRow: StoredRow {
    fileprivate let statement: OpaquePointer

    public func integer(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }

    public func text(_ column: Int32) -> String? {
        guard let bytes = sqlite3_column_text(statement, column) else { return nil }
        let count = Int(sqlite3_column_bytes(statement, column))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    public func bytes(_ column: Int32) -> [UInt8]? {
        guard sqlite3_column_type(statement, column) != SQLITE_NULL else { return nil }
        let blob = sqlite3_column_blob(statement, column)
        let count = Int(sqlite3_column_bytes(statement, column))
        guard let blob, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: blob, count: count))
    }

}

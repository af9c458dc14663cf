import CPostgres
import Glibc

/// A failed PostgreSQL call. `sqlstate` is the server's code; nil when no server answered (the
/// connection could not be made or was lost). The SQL is kept for logs; bound values never are,
/// so user data and secrets stay out of `description`.
public struct PostgresError: Error, CustomStringConvertible {
    public let sqlstate: String?
    public let message: String
    public let sql: String?

    public var description: String {
        "PostgreSQL error \(sqlstate ?? "(no server answer)"): \(message)" + (sql.map { " in \($0)" } ?? "")
    }

    /// The connection cannot be trusted again: no answer, a connection exception (class 08), or
    /// the server going away (class 57P: admin shutdown, crash, cannot connect now).
    var isConnectionFailure: Bool {
        guard let sqlstate else { return true }
        return sqlstate.hasPrefix("08") || sqlstate.hasPrefix("57P")
    }

    static let statementTimeout = "57014"
    static let uniqueViolation = "23505"
    static let divisionByZero = "22012"
}

/// One statement with its arguments, for a pipeline.
public struct PostgresStatement {
    public var sql: String
    public var arguments: [SQLValue]

    public init(_ sql: String, _ arguments: [SQLValue] = []) {
        self.sql = sql
        self.arguments = arguments
    }
}

/// What one statement returned: its rows as text (NULL as nil), and how many rows it changed.
public struct PostgresRows {
    public let rows: [[String?]]
    public let affected: Int

    public func integer(_ row: Int, _ column: Int) -> Int64 { rows[row][column].flatMap { Int64($0) } ?? 0 }
    public func text(_ row: Int, _ column: Int) -> String? { rows[row][column] }
    public func bool(_ row: Int, _ column: Int) -> Bool { rows[row][column] == "t" }
    public var count: Int { rows.count }
}

/// One connection, the one place that talks to libpq. Not thread-safe by design: a pool hands
/// it to one thread at a time.
public final class PostgresConnection {
    private let connection: OpaquePointer

    /// `url` is a libpq connection URI or keyword string; libpq's own `PG*` variables and
    /// `~/.pgpass` fill in what it leaves out. `connectTimeoutSeconds` applies unless the URL
    /// sets `connect_timeout` itself.
    public init(url: String, connectTimeoutSeconds: Int, applicationName: String) throws(PostgresError) {
        // Later keywords win, and the URL is expanded where it stands: defaults go first.
        let keywords = ["connect_timeout", "application_name", "dbname"]
        let values = [String(connectTimeoutSeconds), applicationName, url]
        let opened = withCStrings(keywords) { keywords in
            withCStrings(values) { values in PQconnectdbParams(keywords, values, 1) }
        }
        guard let opened else { throw PostgresError(sqlstate: nil, message: "out of memory", sql: nil) }
        guard PQstatus(opened) == CONNECTION_OK else {
            let message = Self.message(of: opened)
            PQfinish(opened)
            throw PostgresError(sqlstate: nil, message: message, sql: nil)
        }
        connection = opened
    }

    deinit { PQfinish(connection) }

    /// Lost or failed: a pool closes it rather than use it again.
    public var isBroken: Bool { PQstatus(connection) != CONNECTION_OK }

    /// Whether an idle connection may still be used. An idle connection has nothing to read
    /// unless the server is closing it (a restart, an administrator: a FATAL message, then the
    /// end), so one that polls readable is given up before a statement fails on it.
    public var isStillIdle: Bool {
        let socket = PQsocket(connection)
        guard socket >= 0, !isBroken else { return false }
        return (try? System.isReady(socket, for: Int16(POLLIN))) == false
    }

    /// Runs one statement in its own round trip (schema work, migrations).
    @discardableResult
    public func execute(_ sql: String, _ arguments: [SQLValue] = []) throws(PostgresError) -> PostgresRows {
        let result = withParameters(arguments) { count, values, lengths, formats in
            PQexecParams(connection, sql, count, nil, values, lengths, formats, 0)
        }
        return try Self.rows(of: result, sql: sql, connection: connection)
    }

    /// Runs SQL text of one or more statements without parameters (a migration step).
    public func executeScript(_ sql: String) throws(PostgresError) {
        _ = try Self.rows(of: PQexec(connection, sql), sql: sql, connection: connection)
    }

    /// Sends every statement at once and reads their results in order: one round trip however
    /// many statements. Without BEGIN they run as one implicit transaction, committed at the
    /// sync that ends the pipeline. The first failure is thrown; the server skips what follows
    /// it and rolls the implicit transaction back. A transaction the statements opened
    /// themselves and left open is rolled back too, so the connection is clean for its next user.
    public func pipeline(_ statements: [PostgresStatement]) throws(PostgresError) -> [PostgresRows] {
        guard PQenterPipelineMode(connection) == 1 else { throw failure(sql: nil) }
        defer { _ = PQexitPipelineMode(connection) }
        for statement in statements {
            let sent = withParameters(statement.arguments) { count, values, lengths, formats in
                PQsendQueryParams(connection, statement.sql, count, nil, values, lengths, formats, 0)
            }
            guard sent == 1 else { throw failure(sql: statement.sql) }
        }
        guard PQpipelineSync(connection) == 1 else { throw failure(sql: nil) }

        var results: [PostgresRows] = []
        var firstFailure: PostgresError?
        for statement in statements {
            // Each statement's result, then a NULL that ends it.
            let result = PQgetResult(connection)
            while let extra = PQgetResult(connection) { PQclear(extra) }
            do {
                results.append(try Self.rows(of: result, sql: statement.sql, connection: connection))
            } catch {
                if firstFailure == nil { firstFailure = error }
            }
            if isBroken { break }
        }
        if !isBroken {
            // The sync's own result closes the pipeline.
            while let result = PQgetResult(connection) {
                let status = PQresultStatus(result)
                PQclear(result)
                if status == PGRES_PIPELINE_SYNC { break }
            }
        }
        if let firstFailure {
            if !isBroken, PQtransactionStatus(connection) != PQTRANS_IDLE {
                _ = PQexitPipelineMode(connection)
                _ = try? execute("ROLLBACK")
            }
            throw firstFailure
        }
        return results
    }

    private func failure(sql: String?) -> PostgresError {
        PostgresError(sqlstate: nil, message: Self.message(of: connection), sql: sql)
    }

    private static func message(of connection: OpaquePointer) -> String {
        String(cString: PQerrorMessage(connection)).trimmed().description
    }

    /// Takes ownership of `result`.
    private static func rows(of result: OpaquePointer?, sql: String, connection: OpaquePointer) throws(PostgresError)
        -> PostgresRows
    {
        guard let result else { throw PostgresError(sqlstate: nil, message: message(of: connection), sql: sql) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK:
            let columns = PQnfields(result)
            var rows: [[String?]] = []
            rows.reserveCapacity(Int(PQntuples(result)))
            for row in 0..<PQntuples(result) {
                rows.append((0..<columns).map { column in
                    PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                })
            }
            return PostgresRows(rows: rows, affected: Int(String(cString: PQcmdTuples(result))) ?? 0)
        case PGRES_PIPELINE_ABORTED:
            throw PostgresError(sqlstate: nil, message: "skipped after an earlier statement failed", sql: sql)
        default:
            let sqlstate = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let message = String(cString: PQresultErrorMessage(result)).trimmed().description
            throw PostgresError(sqlstate: sqlstate, message: message, sql: sql)
        }
    }

    /// Text-format parameters as C strings, and blobs in binary format (bytea's own bytes, not
    /// twice as many hex digits), each copied to memory that lives through the call.
    private func withParameters<T>(_ arguments: [SQLValue], _ body: (Int32, UnsafePointer<UnsafePointer<CChar>?>?,
                                                                      UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> T) -> T {
        var lengths = [Int32](repeating: 0, count: arguments.count)
        var formats = [Int32](repeating: 0, count: arguments.count)
        let values: [UnsafeMutablePointer<CChar>?] = arguments.enumerated().map { index, value in
            switch value {
            case .null: return nil
            case .integer(let integer): return strdup(String(integer))
            case .text(let text): return strdup(text.storable)
            case .blob(let bytes):
                lengths[index] = Int32(bytes.count)
                formats[index] = 1
                let copy = malloc(max(bytes.count, 1))!
                bytes.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(copy), byteCount: $0.count) }
                return copy.assumingMemoryBound(to: CChar.self)
            }
        }
        defer { values.forEach { free($0) } }
        let pointers = values.map { $0.map { UnsafePointer($0) } }
        return pointers.withUnsafeBufferPointer { values in
            lengths.withUnsafeBufferPointer { lengths in
                formats.withUnsafeBufferPointer { formats in
                    body(Int32(arguments.count), values.baseAddress, lengths.baseAddress, formats.baseAddress)
                }
            }
        }
    }
}

/// C strings for the duration of `body`.
private func withCStrings<T>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> T) -> T {
    withOptionalCStrings(strings) { body($0!) }
}

private func withOptionalCStrings<T>(_ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> T) -> T {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { $0.map { strdup($0)! } }
    defer { copies.forEach { free($0) } }
    let pointers = copies.map { $0.map { UnsafePointer($0) } } + [nil]
    return pointers.withUnsafeBufferPointer { body($0.baseAddress) }
}

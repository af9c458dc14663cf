@testable import ChatKitFCGI
import Glibc
import Testing

/// The pool and the pipelined transactions under the PostgreSQL store. Run when
/// `CHATKIT_TEST_POSTGRES_URL` names a server (`Tests/run-all` starts one).
@Suite(.enabled(if: StoreKind.postgresAdminURL != nil)) struct PostgresTests {
    func database(_ settings: PostgresDatabase.Settings = PostgresDatabase.Settings()) throws -> (TestDatabase, PostgresDatabase) {
        let test = try TestDatabase(.postgres)
        let base = try #require(test.database as? PostgresDatabase)
        return (test, PostgresDatabase(url: base.url, settings: settings))
    }

    @Test func aFailingStatementLeavesNothingOfItsTransactionAndACleanConnection() throws {
        let (test, database) = try database()
        _ = test
        try database.transaction([PostgresStatement("CREATE TABLE t (x INTEGER NOT NULL)")])
        #expect(throws: PostgresError.self) {
            try database.transaction([PostgresStatement("INSERT INTO t VALUES (1)"), PostgresStatement("INSERT INTO t VALUES (NULL)"),
                                      PostgresStatement("INSERT INTO t VALUES (3)")])
        }
        // The same (only) connection serves the next transaction, outside any failed one.
        let rows = try database.transaction([PostgresStatement("SELECT count(*) FROM t")])
        #expect(rows[0].integer(0, 0) == 0)
    }

    @Test func aStatementRunsNoLongerThanTheTimeout() throws {
        var settings = PostgresDatabase.Settings()
        settings.statementTimeoutMilliseconds = 100
        let (test, database) = try database(settings)
        _ = test
        let started = Clock.monotonicMilliseconds()
        do {
            try database.transaction([PostgresStatement("SELECT pg_sleep(5)")])
            Issue.record("the sleep was not cut short")
        } catch let error as PostgresError {
            #expect(error.sqlstate == PostgresError.statementTimeout)
        }
        #expect(Clock.monotonicMilliseconds() - started < 2_000)
        // Local to its transaction: the next one is not limited by it... nor left without it.
        #expect(try database.transaction([PostgresStatement("SELECT current_setting('statement_timeout')")])[0].text(0, 0)
                == "100ms")
    }

    @Test func aBusyPoolTurnsTheWaiterAwayAfterTheWait() throws {
        var settings = PostgresDatabase.Settings()
        settings.poolSize = 1
        settings.poolWaitMilliseconds = 200
        let (test, database) = try database(settings)
        _ = test
        let holding = Semaphore()
        let release = Semaphore()
        DetachedThread.start(stackBytes: 512 << 10) {
            try? database.withConnection { _ in
                holding.signal()
                release.wait()
            }
        }
        holding.wait()
        let started = Clock.monotonicMilliseconds()
        #expect(throws: StoreError.busy) { try database.transaction([PostgresStatement("SELECT 1")]) }
        #expect(Clock.monotonicMilliseconds() - started >= 190)
        release.signal()
        #expect(try database.transaction([PostgresStatement("SELECT 1")])[0].integer(0, 0) == 1)
    }

    @Test func aConnectionTheServerDroppedIsReplaced() throws {
        let (test, database) = try database()
        _ = test
        let pid = try database.transaction([PostgresStatement("SELECT pg_backend_pid()")])[0].integer(0, 0)
        let admin = try PostgresConnection(url: StoreKind.postgresAdminURL!, connectTimeoutSeconds: 5, applicationName: "tests")
        try admin.execute("SELECT pg_terminate_backend($1, 5000)", [.integer(pid)])
        // Found closed when it is next lent, so no request fails on it: a new one serves.
        let next = try database.transaction([PostgresStatement("SELECT pg_backend_pid()")])[0].integer(0, 0)
        #expect(next != pid)
    }

    @Test func anUnreachableServerIsAPlainError() {
        var settings = PostgresDatabase.Settings()
        settings.connectTimeoutSeconds = 2
        let database = PostgresDatabase(url: "postgresql://nobody@127.0.0.1:1/none", settings: settings)
        do {
            try database.transaction([PostgresStatement("SELECT 1")])
            Issue.record("connected to nothing")
        } catch let error as PostgresError {
            #expect(error.sqlstate == nil && error.description.contains("127.0.0.1"), "\(error)")
        } catch {
            Issue.record("\(error)")
        }
    }
}

@testable import ChatKitFCGI
import Glibc
import Testing

@Suite struct ConnectionPoolTests {
    /// A connection that counts how many were ever opened.
    final class Connection {
        let number: Int
        var broken = false
        init(number: Int) { self.number = number }
    }

    static func pool(size: Int, waitMilliseconds: Int = 50) -> (ConnectionPool<Connection>, Locked<Int>) {
        let opened = Locked(0)
        let pool = ConnectionPool<Connection>(size: size, waitMilliseconds: waitMilliseconds, open: {
            Connection(number: opened.withLock { $0 += 1; return $0 })
        }, isBroken: { $0.broken })
        return (pool, opened)
    }

    @Test func callsOneAfterAnotherShareOneConnection() throws {
        let (pool, opened) = Self.pool(size: 4)
        for _ in 0..<10 { _ = try pool.withConnection { $0.number } }
        #expect(opened.withLock { $0 } == 1)
    }

    @Test func aCallWaitsNoLongerThanTheWaitForAFreeConnection() throws {
        let (pool, _) = Self.pool(size: 1, waitMilliseconds: 30)
        let started = Clock.monotonicMilliseconds()
        try pool.withConnection { _ in
            #expect(throws: StoreError.busy) { try pool.withConnection { _ in } }
        }
        #expect(Clock.monotonicMilliseconds() - started >= 30)
        // Given back, it is lent again.
        #expect(try pool.withConnection { $0.number } == 1)
    }

    @Test func neverOpensMoreThanItsSizeForManyThreads() throws {
        let (pool, opened) = Self.pool(size: 3, waitMilliseconds: 5_000)
        let busyAtOnce = Locked((now: 0, most: 0))
        let done = Semaphore()
        for _ in 0..<16 {
            #expect(DetachedThread.start(stackBytes: 256 << 10) {
                for _ in 0..<20 {
                    try? pool.withConnection { _ in
                        busyAtOnce.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
                        usleep(200)
                        busyAtOnce.withLock { $0.now -= 1 }
                    }
                }
                done.signal()
            })
        }
        for _ in 0..<16 { done.wait() }
        #expect(opened.withLock { $0 } <= 3)
        #expect(busyAtOnce.withLock { $0.most } <= 3)
    }

    @Test func aBrokenConnectionIsNeverLentAgain() throws {
        let (pool, opened) = Self.pool(size: 2)
        try pool.withConnection { $0.broken = true }
        #expect(try pool.withConnection { $0.number } == 2)
        #expect(opened.withLock { $0 } == 2)
    }

    @Test func sqliteReadsBorrowFromThePoolOfTheirDatabase() throws {
        let file = TemporaryDatabase()
        let database = SQLiteDatabase(path: file.path, readers: 1, readerWaitMilliseconds: 30)
        let store = SQLiteStore(database: database)
        try store.migrate()
        try database.read { _ in
            #expect(throws: StoreError.busy) { _ = try store.tasks(userID: "u", filter: .all) }
        }
        #expect(try store.tasks(userID: "u", filter: .all).isEmpty)
    }
}

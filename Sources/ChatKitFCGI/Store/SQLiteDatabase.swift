import Glibc

/// What every connection to one database file in this process shares.
///
/// - In `serve`, every write runs on one writer thread that commits whatever writes are waiting
///   as one transaction (group commit). Hundreds of threads taking turns at SQLite's write lock
///   formed a convoy: measured at 32 streams, writers waited up to 10 ms for a lock held 0.1 to
///   0.6 ms at a time, and each commit wrote its own copy of the same few pages to the WAL.
/// - Elsewhere (the CLI, tests) a write runs on the caller's connection.
/// - Either way a write holds `writeLock`, so the checkpoint thread can hold writers back.
///   The busy timeout still covers other processes (a second responder, a migration).
///
/// `@unchecked Sendable`: `writer` is set once, before any other thread exists; the rest is
/// pthread synchronisation.
public final class SQLiteDatabase: @unchecked Sendable {
    public let path: String
    private let writeLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var writer: SQLiteWriter?

    public init(path: String) {
        self.path = path
        pthread_mutex_init(writeLock, nil)
    }

    deinit {
        pthread_mutex_destroy(writeLock)
        writeLock.deallocate()
    }

    /// Starts the writer thread and the checkpoint thread. Call once, before any thread
    /// uses the database.
    public func startBackgroundThreads(checkpointIntervalMicroseconds: UInt32 = 250_000) throws {
        precondition(writer == nil, "background threads start once")
        let writer = try SQLiteWriter(database: self)
        precondition(DetachedThread.start(stackBytes: 256 << 10) { writer.run() }, "could not start the writer thread")
        self.writer = writer
        let checkpointer = try WALCheckpointer(database: self)
        let started = DetachedThread.start(stackBytes: 256 << 10) {
            while true {
                usleep(checkpointIntervalMicroseconds)
                checkpointer.checkpoint()
            }
        }
        precondition(started, "could not start the checkpoint thread")
    }

    /// Runs `body` in a transaction: on the writer thread when there is one, else on `inline`.
    func write<T>(inline connection: SQLiteConnection, _ body: (SQLiteConnection) throws -> T) throws -> T {
        if let writer { return try writer.perform(body) }
        return try serializingWrites { try connection.transaction { try body(connection) } }
    }

    /// A plain (non-spinning) mutex on purpose: holders wait for a commit or a checkpoint, and
    /// spinning through that burned ~3% of the responder's CPU where `Synchronization.Mutex` was used.
    @discardableResult
    func serializingWrites<T>(_ body: () throws -> T) throws -> T {
        pthread_mutex_lock(writeLock)
        defer { pthread_mutex_unlock(writeLock) }
        return try body()
    }
}

/// The writer thread: takes every write waiting (up to `batchLimit`) and commits them in one
/// transaction, each in a savepoint of its own so that a failing write is undone alone. Its
/// caller is parked on a semaphore until the commit, so it reads its own write afterwards.
///
/// `@unchecked Sendable`: the queue is guarded by `queueLock`; `connection` is used only by the
/// writer thread.
final class SQLiteWriter: @unchecked Sendable {
    /// One waiting write. `body` captures the caller's closure, so the writer drops it as soon
    /// as it has run (the caller's `withoutActuallyEscaping` checks that nothing kept it).
    private final class Job {
        var body: ((SQLiteConnection) -> Void)?
        var commitFailure: (any Error)?
        private let done = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

        init(_ body: @escaping (SQLiteConnection) -> Void) {
            self.body = body
            sem_init(done, 0, 0)
        }

        deinit {
            sem_destroy(done)
            done.deallocate()
        }

        func wait() { while sem_wait(done) != 0 {} }
        func finish() { sem_post(done) }
    }

    private let database: SQLiteDatabase
    private let connection: SQLiteConnection
    private let queueLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let queueReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [Job] = []
    private static let batchLimit = 64

    init(database: SQLiteDatabase) throws {
        self.database = database
        connection = try SQLiteConnection(path: database.path)
        // Checkpoints are the checkpoint thread's work, never a commit's.
        try connection.execute("PRAGMA wal_autocheckpoint = 0")
        pthread_mutex_init(queueLock, nil)
        pthread_cond_init(queueReady, nil)
    }

    func perform<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        var outcome: Result<T, any Error>?
        let job = withoutActuallyEscaping(body) { body in
            let job = Job { connection in outcome = Result { try connection.savepoint { try body(connection) } } }
            pthread_mutex_lock(queueLock)
            queue.append(job)
            pthread_cond_signal(queueReady)
            pthread_mutex_unlock(queueLock)
            job.wait()
            return job
        }
        if let failure = job.commitFailure { throw failure }
        return try outcome!.get()
    }

    func run() -> Never {
        while true { commitWaitingWrites() }
    }

    var waitingWrites: Int {
        pthread_mutex_lock(queueLock)
        defer { pthread_mutex_unlock(queueLock) }
        return queue.count
    }

    /// Waits for at least one write, then commits up to `batchLimit` of those waiting.
    func commitWaitingWrites() {
        pthread_mutex_lock(queueLock)
        while queue.isEmpty { pthread_cond_wait(queueReady, queueLock) }
        let batch = Array(queue.prefix(Self.batchLimit))
        queue.removeFirst(batch.count)
        pthread_mutex_unlock(queueLock)
        commit(batch)
    }

    private func commit(_ batch: [Job]) {
        var failure: (any Error)?
        do {
            try database.serializingWrites {
                try connection.transaction {
                    for job in batch {
                        job.body?(connection)
                        job.body = nil
                        // After some errors SQLite rolls the whole transaction back: nothing of
                        // this batch is stored, so no write of it may be reported as done.
                        guard connection.inTransaction else { throw SQLiteError.transactionRolledBack }
                    }
                }
            }
        } catch {
            failure = error
        }
        for job in batch {
            job.body = nil
            job.commitFailure = failure
            job.finish()
        }
    }
}

/// Copies the WAL back into the database file and keeps the WAL from growing without end.
///
/// A PASSIVE checkpoint never blocks anyone, but alone it lets the WAL grow for as long as
/// writes go on (measured: 800 MB in 40 s at 256 streams, every new page zeroed by the file
/// system): SQLite starts the WAL over only when a writer finds every frame copied back and no
/// reader in it, and with a commit every few hundred microseconds a new frame always arrives
/// while a checkpoint syncs. So once the WAL holds `restartFrames`, the checkpoint also holds
/// this process's writers back for a RESTART, which copies the few frames the PASSIVE one
/// missed, waits out the readers, and lets the next commit reuse the file from its start.
///
/// `@unchecked Sendable`: used by one thread at a time (the checkpoint thread, or a test).
final class WALCheckpointer: @unchecked Sendable {
    private let database: SQLiteDatabase
    private let connection: SQLiteConnection
    private let restartFrames: Int

    init(database: SQLiteDatabase, restartFrames: Int = 1000) throws {
        self.database = database
        connection = try SQLiteConnection(path: database.path)
        self.restartFrames = restartFrames
    }

    func checkpoint() {
        do {
            // The bulk of the copying and syncing happens here, while writers go on.
            let passive = try connection.checkpoint(.passive)
            if passive.walFrames >= restartFrames {
                try database.serializingWrites { try connection.checkpoint(.restart) }
            }
        } catch {
            Log.warning("WAL checkpoint failed: \(error)")
        }
    }
}

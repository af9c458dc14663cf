import Glibc

/// What every connection to one database file in this process shares: the reader connections,
/// and the group commit with its one writer connection.
///
/// Reads borrow a connection from a pool for one store call (`read`): readers never wait for
/// writers in WAL mode, so a few serve every thread, and each holds its own page cache and
/// lookaside memory (about 200 KiB once warm), which one reader per thread multiplied by the
/// thousands of threads that hold streams open.
///
/// Writes are committed in groups: a thread that finds no commit under way commits its own
/// write at once, together with any writes that queued meanwhile; writes that arrive while a
/// commit runs wait and go out together in the next one. So hundreds of threads never queue at
/// a lock one commit at a time, and a group writes each page it shares once.
///
/// Each write runs in a savepoint of its own, so one that fails is undone alone. A commit holds
/// the writer's lock, so the checkpoint thread can hold writers back; the busy timeout still
/// covers other processes (a second responder, a migration).
///
/// Every commit runs on one connection, `writer`, whichever thread leads it: only this
/// process's commits change the pages it caches, so its cache stays valid between commits.
public final class SQLiteDatabase: StoreDatabase {
    public let path: String
    public let checkpointsInBackground: Bool
    /// Writes waiting for the next commit, and whether a thread is committing (it, or the
    /// thread it hands over to, will take them).
    private let queue = Locked(WriteQueue())
    /// Opened by the first commit. Its lock is the write lock: held for a commit, or by the
    /// checkpoint thread to hold writers back.
    private let writer = Locked<SQLiteConnection?>(nil)
    private static let batchLimit = 64

    private struct WriteQueue {
        var waiting: [Write] = []
        var committing = false
    }

    private let readers: ConnectionPool<SQLiteConnection>

    /// At most `readers` read connections; a read that waits `readerWaitMilliseconds` for one
    /// fails with `StoreError.busy`.
    public init(path: String, checkpointsInBackground: Bool = false, readers: Int = 8, readerWaitMilliseconds: Int = 2_000) {
        self.path = path
        self.checkpointsInBackground = checkpointsInBackground
        self.readers = ConnectionPool(size: readers, waitMilliseconds: readerWaitMilliseconds) {
            try SQLiteConnection(path: path)
        }
    }

    /// Lends a reader connection to `body`, for one store call.
    func read<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        try readers.withConnection(body)
    }

    public func makeStore() throws -> any Store { SQLiteStore(database: self) }

    public func startMaintenance() throws {
        if checkpointsInBackground { try startCheckpointing() }
    }

    /// A checkpoint every `interval`, on a thread of its own (see `WALCheckpointer`).
    public func startCheckpointing(intervalMicroseconds: UInt32 = 250_000) throws {
        precondition(checkpointsInBackground, "only a database opened for background checkpoints")
        let checkpointer = try WALCheckpointer(database: self)
        let started = DetachedThread.start(stackBytes: 256 << 10) {
            while true {
                usleep(intervalMicroseconds)
                checkpointer.checkpoint()
            }
        }
        precondition(started, "could not start the checkpoint thread")
    }

    /// One waiting write. `body` captures the caller's closure, so it is dropped as soon as it
    /// has run (the caller's `withoutActuallyEscaping` checks that nothing kept it).
    ///
    /// `@unchecked Sendable`: its thread queues it and waits on `signal`; the leader runs it and
    /// sets the results under the commit, then signals. Neither touches it while the other does.
    private final class Write: @unchecked Sendable {
        var body: ((SQLiteConnection) -> Void)?
        var commitFailure: (any Error)?
        /// Set instead of running the write: its thread commits the next group itself.
        var takesOver = false
        private let signal = Semaphore()

        init(_ body: @escaping (SQLiteConnection) -> Void) {
            self.body = body
        }

        func wait() { signal.wait() }
        func wake() { signal.signal() }
    }

    /// Runs `body` in a transaction on the writer connection, committed together with whatever
    /// other writes are waiting. `body` must not write through the database itself: it would
    /// wait for its own commit.
    func write<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        var outcome: Result<T, any Error>?
        let write = withoutActuallyEscaping(body) { body in
            let write = Write { connection in outcome = Result { try connection.savepoint { try body(connection) } } }
            let commitsNow = queue.withLock { queue in
                queue.waiting.append(write)
                defer { queue.committing = true }
                return !queue.committing
            }
            if !commitsNow {
                write.wait()
                guard write.takesOver else { return write }
            }
            commitGroups(until: write)
            return write
        }
        if let failure = write.commitFailure { throw failure }
        return try outcome!.get()
    }

    var waitingWrites: Int { queue.withLock { $0.waiting.count } }

    /// Commits groups of waiting writes until `own` is committed, then hands the next group to
    /// the thread of the oldest write still waiting, if any.
    private func commitGroups(until own: Write) {
        while true {
            let group = queue.withLock { queue in
                let group = Array(queue.waiting.prefix(Self.batchLimit))
                queue.waiting.removeFirst(group.count)
                return group
            }
            commit(group)
            if group.contains(where: { $0 === own }) { break }
        }
        queue.withLock { queue in
            if let next = queue.waiting.first {
                next.takesOver = true
                next.wake()
            } else {
                queue.committing = false
            }
        }
    }

    private func commit(_ group: [Write]) {
        var failure: (any Error)?
        do {
            try writer.withLock { writer in
                let connection = try writer ?? openWriter()
                writer = connection
                try connection.transaction {
                    for write in group {
                        write.body?(connection)
                        write.body = nil
                        // After some errors SQLite rolls the whole transaction back: nothing of
                        // this group is stored, so no write of it may be reported as done.
                        guard connection.inTransaction else { throw SQLiteError.transactionRolledBack }
                    }
                }
            }
        } catch {
            failure = error
        }
        for write in group {
            write.body = nil
            write.commitFailure = failure
            write.wake()
        }
    }

    private func openWriter() throws -> SQLiteConnection {
        let opened = try SQLiteConnection(path: path)
        // The checkpoint thread copies the WAL back; a commit never stops to do it.
        if checkpointsInBackground { try opened.execute("PRAGMA wal_autocheckpoint = 0") }
        return opened
    }

    /// Runs `body` while no commit can start: the lock sleeps, as holders wait for a commit
    /// or a checkpoint, too long to spin through.
    @discardableResult
    func serializingWrites<T>(_ body: () throws -> T) throws -> T {
        try writer.withLock { _ in try body() }
    }
}

/// Copies the WAL back into the database file and keeps the WAL from growing without end.
///
/// A PASSIVE checkpoint never blocks anyone, but alone it lets the WAL grow for as long as
/// writes go on: SQLite starts the WAL over only when a writer finds every frame copied back
/// and no reader in it, and with a commit every few hundred microseconds a new frame always
/// arrives while a checkpoint syncs. So once the WAL holds `restartFrames`, the checkpoint also holds
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

import Glibc

/// What every connection to one database file in this process shares.
///
/// Writes are committed in groups: a thread that finds no commit under way commits its own
/// write at once, together with any writes that queued meanwhile; writes that arrive while a
/// commit runs wait and go out together in the next one. Before, hundreds of threads took turns
/// at the write lock and formed a convoy (measured at 32 streams: waits up to 10 ms for a lock
/// held 0.1 to 0.6 ms at a time), and every commit wrote its own copy of the same few pages to
/// the WAL. A dedicated writer thread fixed the convoy too, but cost every write two thread
/// hand-offs (+0.2 ms median first-token latency).
///
/// Each write runs in a savepoint of its own, so one that fails is undone alone. A commit holds
/// `writeLock`, so the checkpoint thread can hold writers back; the busy timeout still covers
/// other processes (a second responder, a migration).
///
/// Every commit runs on one connection, `writer`, whichever thread leads it. Only this process's
/// commits change the pages it has cached, so its cache stays valid from one commit to the
/// next. Before, each group ran on its leader's own connection, whose cache the other threads'
/// commits had made stale: it read every page it changed back in (measured at 256 streams:
/// about 13 reads of 4 KiB per request).
///
/// `@unchecked Sendable`: everything mutable is guarded by a pthread mutex.
public final class SQLiteDatabase: @unchecked Sendable {
    public let path: String
    public let checkpointsInBackground: Bool
    private let writeLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let queueLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Guarded by `queueLock`: writes waiting for the next commit, and whether a thread is
    /// committing (it, or the thread it hands over to, will take them).
    private var queue: [Write] = []
    private var committing = false
    /// Guarded by `writeLock`: opened by the first commit.
    private var writer: SQLiteConnection?
    private static let batchLimit = 64

    public init(path: String, checkpointsInBackground: Bool = false) {
        self.path = path
        self.checkpointsInBackground = checkpointsInBackground
        pthread_mutex_init(writeLock, nil)
        pthread_mutex_init(queueLock, nil)
    }

    deinit {
        pthread_mutex_destroy(writeLock)
        pthread_mutex_destroy(queueLock)
        writeLock.deallocate()
        queueLock.deallocate()
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
    private final class Write {
        var body: ((SQLiteConnection) -> Void)?
        var commitFailure: (any Error)?
        /// Set instead of running the write: its thread commits the next group itself.
        var takesOver = false
        private let signal = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

        init(_ body: @escaping (SQLiteConnection) -> Void) {
            self.body = body
            sem_init(signal, 0, 0)
        }

        deinit {
            sem_destroy(signal)
            signal.deallocate()
        }

        func wait() { while sem_wait(signal) != 0 {} }
        func wake() { sem_post(signal) }
    }

    /// Runs `body` in a transaction on the writer connection, committed together with whatever
    /// other writes are waiting. `body` must not write through the database itself: it would
    /// wait for its own commit.
    func write<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        var outcome: Result<T, any Error>?
        let write = withoutActuallyEscaping(body) { body in
            let write = Write { connection in outcome = Result { try connection.savepoint { try body(connection) } } }
            pthread_mutex_lock(queueLock)
            queue.append(write)
            let commitsNow = !committing
            committing = true
            pthread_mutex_unlock(queueLock)
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

    var waitingWrites: Int {
        pthread_mutex_lock(queueLock)
        defer { pthread_mutex_unlock(queueLock) }
        return queue.count
    }

    /// Commits groups of waiting writes until `own` is committed, then hands the next group to
    /// the thread of the oldest write still waiting, if any.
    private func commitGroups(until own: Write) {
        while true {
            pthread_mutex_lock(queueLock)
            let group = Array(queue.prefix(Self.batchLimit))
            queue.removeFirst(group.count)
            pthread_mutex_unlock(queueLock)
            commit(group)
            if group.contains(where: { $0 === own }) { break }
        }
        pthread_mutex_lock(queueLock)
        if let next = queue.first {
            next.takesOver = true
            next.wake()
        } else {
            committing = false
        }
        pthread_mutex_unlock(queueLock)
    }

    private func commit(_ group: [Write]) {
        var failure: (any Error)?
        do {
            try serializingWrites {
                let connection = try writerConnection()
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

    /// Under `writeLock`.
    private func writerConnection() throws -> SQLiteConnection {
        if let writer { return writer }
        let opened = try SQLiteConnection(path: path)
        // The checkpoint thread copies the WAL back; a commit never stops to do it.
        if checkpointsInBackground { try opened.execute("PRAGMA wal_autocheckpoint = 0") }
        writer = opened
        return opened
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

import Glibc

/// What every connection to one database file in this process shares.
///
/// - Writers queue on a mutex. SQLite allows one writer anyway, but a connection that finds the
///   file locked sleeps in the busy handler (1, 2, 5, 10 … ms) and is not woken when the lock
///   frees: measured, that was most of the p99 latency at 32 concurrent streams. The busy
///   timeout still covers other processes (a second responder, a migration).
/// - In `serve`, WAL checkpoints run on their own thread, so no request's commit pays for
///   copying pages back and syncing while everyone else waits for the write lock.
///
/// `@unchecked Sendable`: the pthread mutex is the synchronisation; it is a plain (non-spinning)
/// one on purpose, since writers wait for a commit, and spinning through that burned ~3% of the
/// responder's CPU at 256 streams where `Synchronization.Mutex` was used.
public final class SQLiteDatabase: @unchecked Sendable {
    public let path: String
    public let checkpointsInBackground: Bool
    private let writeLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(path: String, checkpointsInBackground: Bool = false) {
        self.path = path
        self.checkpointsInBackground = checkpointsInBackground
        pthread_mutex_init(writeLock, nil)
    }

    deinit {
        pthread_mutex_destroy(writeLock)
        writeLock.deallocate()
    }

    func serializingWrites<T>(_ body: () throws -> T) throws -> T {
        pthread_mutex_lock(writeLock)
        defer { pthread_mutex_unlock(writeLock) }
        return try body()
    }

    /// Checkpoints on a thread of their own, every `interval`.
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

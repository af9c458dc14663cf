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

    /// A PASSIVE checkpoint every `interval`: it never blocks readers or writers.
    public func startCheckpointing(intervalMicroseconds: UInt32 = 250_000) throws {
        precondition(checkpointsInBackground, "only a database opened for background checkpoints")
        let connection = CheckpointConnection(try SQLiteConnection(path: path))
        let started = DetachedThread.start(stackBytes: 256 << 10) {
            while true {
                usleep(intervalMicroseconds)
                connection.checkpoint()
            }
        }
        precondition(started, "could not start the checkpoint thread")
    }
}

/// `@unchecked Sendable`: handed to the checkpoint thread at start and used only there.
private final class CheckpointConnection: @unchecked Sendable {
    private let connection: SQLiteConnection

    init(_ connection: SQLiteConnection) { self.connection = connection }

    func checkpoint() {
        do {
            try connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        } catch {
            Log.warning("WAL checkpoint failed: \(error)")
        }
    }
}

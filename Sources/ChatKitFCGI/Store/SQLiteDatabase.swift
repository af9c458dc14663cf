import Glibc
import Synchronization

/// What every connection to one database file in this process shares.
///
/// - Writers queue on a mutex. SQLite allows one writer anyway, but a connection that finds the
///   file locked sleeps in the busy handler (1, 2, 5, 10 … ms) and is not woken when the lock
///   frees: measured, that was most of the p99 latency at 32 concurrent streams. The busy
///   timeout still covers other processes (a second responder, a migration).
/// - In `serve`, WAL checkpoints run on their own thread, so no request's commit pays for
///   copying pages back and syncing while everyone else waits for the write lock.
public final class SQLiteDatabase: Sendable {
    public let path: String
    public let checkpointsInBackground: Bool
    private let writeLock = Mutex(())

    public init(path: String, checkpointsInBackground: Bool = false) {
        self.path = path
        self.checkpointsInBackground = checkpointsInBackground
    }

    func serializingWrites<T>(_ body: () throws -> T) throws -> T {
        try writeLock.withLock { _ in try body() }
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

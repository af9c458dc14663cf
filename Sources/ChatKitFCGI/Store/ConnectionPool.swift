/// Database connections shared by every request of the process: at most `size` open, each lent
/// to one store call and taken back. So the connections a process holds follow its store calls
/// in flight, not its open streams: a stream holds none while the model talks.
///
/// `Connection` is not `Sendable`: an idle one is only reached under the lock, a lent one only
/// by the thread that borrowed it.
final class ConnectionPool<Connection>: Sendable {
    private let free: Semaphore
    private let idle = Locked<[Connection]>([])
    private let waitMilliseconds: Int
    private let open: @Sendable () throws -> Connection
    private let isBroken: @Sendable (Connection) -> Bool
    private let isStillIdle: @Sendable (Connection) -> Bool

    /// A connection `isBroken` after its use is dropped, never lent again; an idle one is lent
    /// again only if it `isStillIdle` (the server may have closed it meanwhile).
    init(size: Int, waitMilliseconds: Int, open: @escaping @Sendable () throws -> Connection,
         isBroken: @escaping @Sendable (Connection) -> Bool = { _ in false },
         isStillIdle: @escaping @Sendable (Connection) -> Bool = { _ in true }) {
        free = Semaphore(value: UInt32(size))
        self.waitMilliseconds = waitMilliseconds
        self.open = open
        self.isBroken = isBroken
        self.isStillIdle = isStillIdle
    }

    /// Lends a connection to `body`: the most recently used idle one, or one opened now. A
    /// thread that waits longer than `waitMilliseconds` for one gets `StoreError.busy`.
    func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        guard free.wait(milliseconds: waitMilliseconds) else { throw StoreError.busy }
        defer { free.signal() }
        let connection = try reusableConnection() ?? open()
        defer {
            if !isBroken(connection) { idle.withLock { $0.append(connection) } }
        }
        return try body(connection)
    }

    private func reusableConnection() -> Connection? {
        while let connection = idle.withLock({ $0.popLast() }) {
            if isStillIdle(connection) { return connection }
        }
        return nil
    }
}

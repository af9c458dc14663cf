import CLinux
import Glibc

/// Items handed from any thread to one event loop's thread: a locked list, and an eventfd the
/// loop's epoll watches, readable once items have arrived.
///
/// `@unchecked Sendable`: `items` is guarded by `lock`, and the items themselves are `Sendable`.
public final class Mailbox<Item: Sendable>: @unchecked Sendable {
    /// For the loop's epoll, as EPOLLIN.
    public let descriptor: Int32
    private let lock = Lock()
    private var items: [Item] = []

    public init() throws(SystemError) {
        descriptor = try System.call("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
    }

    deinit { close(descriptor) }

    public func post(_ item: Item) {
        lock.withLock { items.append(item) }
        var one: UInt64 = 1
        do {
            try System.call("write(eventfd)") { write(descriptor, &one, 8) }
        } catch {
            // EAGAIN: the counter is at its maximum, so the descriptor is readable already.
            precondition(error.code == EAGAIN, "\(error)")
        }
    }

    /// On the loop's thread, once `descriptor` is readable: everything posted so far, in order.
    public func takeAll() -> [Item] {
        var count: UInt64 = 0
        do {
            try System.call("read(eventfd)") { read(descriptor, &count, 8) }
        } catch {
            // EAGAIN: a wake-up whose items an earlier call took already.
            precondition(error.code == EAGAIN, "\(error)")
        }
        return lock.withLock {
            var taken: [Item] = []
            swap(&items, &taken)
            return taken
        }
    }
}

/// A pthread mutex: ThreadSanitizer sees it (it does not see `Synchronization.Mutex` on Linux),
/// and a waiter sleeps instead of spinning.
///
/// `@unchecked Sendable`: a mutex exists to be shared between threads.
public final class Lock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<T, Failure: Error>(_ body: () throws(Failure) -> T) throws(Failure) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

import CLinux
import Glibc

/// Items handed from any thread to one event loop's thread: a locked list, and an eventfd the
/// loop's epoll watches, readable once items have arrived.
///
/// `@unchecked Sendable`: `items` is guarded by `lock`.
public final class Mailbox<Item>: @unchecked Sendable {
    /// For the loop's epoll, as EPOLLIN.
    public let descriptor: Int32
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var items: [Item] = []

    public init() {
        descriptor = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        precondition(descriptor >= 0, "could not create an eventfd")
        pthread_mutex_init(lock, nil)
    }

    deinit {
        close(descriptor)
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    public func post(_ item: Item) {
        pthread_mutex_lock(lock)
        items.append(item)
        pthread_mutex_unlock(lock)
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }

    /// On the loop's thread, once `descriptor` is readable: everything posted so far, in order.
    public func takeAll() -> [Item] {
        var count: UInt64 = 0
        _ = read(descriptor, &count, 8)
        var taken: [Item] = []
        pthread_mutex_lock(lock)
        swap(&items, &taken)
        pthread_mutex_unlock(lock)
        return taken
    }
}

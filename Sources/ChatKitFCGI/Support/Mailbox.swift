import CLinux
import Glibc

/// Items handed from any thread to one event loop's thread: a locked list, and an eventfd the
/// loop's epoll watches, readable once items have arrived.
///
public final class Mailbox<Item: Sendable>: Sendable {
    /// For the loop's epoll, as EPOLLIN.
    public let descriptor: Int32
    private let items = Locked<[Item]>([])

    public init() throws(SystemError) {
        descriptor = try System.call("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
    }

    deinit { close(descriptor) }

    public func post(_ item: Item) {
        items.withLock { $0.append(item) }
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
        return items.withLock { items in
            var taken: [Item] = []
            swap(&items, &taken)
            return taken
        }
    }
}

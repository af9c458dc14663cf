import CLinux
import Glibc

/// A system call that failed: which one, and `errno`.
public struct SystemError: Error, Equatable, CustomStringConvertible {
    public let call: String
    public let code: Int32

    public var description: String { "\(call): \(String(cString: strerror(code)))" }
}

/// The one place that knows what direct system calls return. Every call is retried on `EINTR`
/// and a failure becomes a `SystemError`. `EBADF` and `EFAULT` can only mean a descriptor or
/// buffer this process got wrong, so they stop it rather than travel on as an error.
public enum System {
    @discardableResult
    static func call<Result: BinaryInteger>(_ name: StaticString, _ body: () -> Result) throws(SystemError) -> Result {
        while true {
            let result = body()
            guard result == -1 else { return result }
            let code = errno
            if code == EINTR { continue }
            precondition(code != EBADF && code != EFAULT, "\(name): \(String(cString: strerror(code)))")
            throw SystemError(call: "\(name)", code: code)
        }
    }

    /// Writes every byte, however many calls that takes.
    ///
    /// On a Unix socket whose waits `limitWriteWaits` bounds (the kernel times each wait for
    /// buffer space afresh), pass the limit: a call that returns short after about that long
    /// came back because nothing could be sent for that long, and that is `EAGAIN` too. (A
    /// signal's short write comes sooner, and the rest is written.)
    public static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, waitLimitSeconds: Int? = nil) throws(SystemError) {
        var offset = 0
        var started = waitLimitSeconds == nil ? 0 : Clock.monotonicMilliseconds()
        while offset < bytes.count {
            offset += try call("write") { Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset) }
            guard let waitLimitSeconds, offset < bytes.count else { continue }
            let now = Clock.monotonicMilliseconds()
            // The kernel's timer may end a tick early.
            if now - started >= Double(waitLimitSeconds) * 1000 - 50 { throw SystemError(call: "write", code: EAGAIN) }
            started = now
        }
    }

    /// A blocking write to `descriptor` that can send nothing for `seconds` fails with `EAGAIN`.
    public static func limitWriteWaits(_ descriptor: Int32, seconds: Int) throws(SystemError) {
        var limit = timeval(tv_sec: seconds, tv_usec: 0)
        try call("setsockopt") { setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size)) }
    }

    /// Whether `descriptor` reports any of `events` right now (a poll that does not wait).
    public static func isReady(_ descriptor: Int32, for events: Int16) throws(SystemError) -> Bool {
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        return try call("poll") { poll(&entry, 1, 0) } == 1 && entry.revents & events != 0
    }

    /// An integer socket option, such as `SO_SNDBUF`.
    public static func socketOption(_ descriptor: Int32, level: Int32, _ name: Int32) throws(SystemError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        try call("getsockopt") { getsockopt(descriptor, level, name, &value, &length) }
        return value
    }

    /// Signal masks and handlers fail only for arguments this process got wrong.
    public static func setSignalMask(_ how: Int32, _ signals: sigset_t) {
        var signals = signals
        let status = pthread_sigmask(how, &signals, nil)
        precondition(status == 0, "pthread_sigmask: \(String(cString: strerror(status)))")
    }
}

/// An epoll instance whose registrations carry a 64-bit tag. Used by one thread: the event loop
/// that owns it. A class, so that a handler called from `wait` may change registrations.
public final class Epoll {
    public let descriptor: Int32
    /// Room for the events one wait returns (the shim's limit).
    public static let capacity = 256
    private var tags = [UInt64](repeating: 0, count: Epoll.capacity)
    private var events = [UInt32](repeating: 0, count: Epoll.capacity)

    public init() throws(SystemError) {
        descriptor = try System.call("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    deinit { close(descriptor) }

    public func add(_ watched: Int32, events: UInt32, tag: UInt64) throws(SystemError) {
        try System.call("epoll_ctl(ADD)") { clinux_epoll_set(descriptor, EPOLL_CTL_ADD, watched, events, tag) }
    }

    public func modify(_ watched: Int32, events: UInt32, tag: UInt64) throws(SystemError) {
        try System.call("epoll_ctl(MOD)") { clinux_epoll_set(descriptor, EPOLL_CTL_MOD, watched, events, tag) }
    }

    /// A descriptor closed before it was removed is gone from the set already: the kernel
    /// drops it with its last reference (libcurl closes a connection before it says so).
    public func remove(_ watched: Int32) throws(SystemError) {
        while clinux_epoll_set(descriptor, EPOLL_CTL_DEL, watched, 0, 0) != 0 {
            let code = errno
            if code == EINTR { continue }
            if code == EBADF || code == ENOENT { return }
            throw SystemError(call: "epoll_ctl(DEL)", code: code)
        }
    }

    /// Waits up to `milliseconds` (-1: no limit) and calls `body` with each event's tag and bits.
    /// A signal ends the wait early with no events, so the caller's timers are read again.
    public func wait(milliseconds: Int32, _ body: (_ tag: UInt64, _ events: UInt32) -> Void) {
        let ready = tags.withUnsafeMutableBufferPointer { tags in
            events.withUnsafeMutableBufferPointer { events in
                clinux_epoll_wait(descriptor, tags.baseAddress, events.baseAddress, Int32(Self.capacity), milliseconds)
            }
        }
        deliver(ready, call: "epoll_wait", body)
    }

    /// The same with a timeout in nanoseconds (negative: no limit), for schedules finer than a
    /// millisecond.
    public func wait(nanoseconds: Int64, _ body: (_ tag: UInt64, _ events: UInt32) -> Void) {
        let ready = tags.withUnsafeMutableBufferPointer { tags in
            events.withUnsafeMutableBufferPointer { events in
                clinux_epoll_wait_ns(descriptor, tags.baseAddress, events.baseAddress, Int32(Self.capacity), nanoseconds)
            }
        }
        deliver(ready, call: "epoll_pwait2", body)
    }

    private func deliver(_ ready: Int32, call: StaticString, _ body: (UInt64, UInt32) -> Void) {
        guard ready >= 0 else {
            let code = errno
            // Anything but a signal means the loop's own epoll is broken: nothing could recover.
            precondition(code == EINTR, "\(call): \(String(cString: strerror(code)))")
            return
        }
        for index in 0..<Int(ready) { body(tags[index], events[index]) }
    }
}

/// A counting semaphore for one thread to wait on while another works for it.
///
/// `@unchecked Sendable`: `sem_t` is made to be shared between threads.
public final class Semaphore: @unchecked Sendable {
    private let semaphore = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

    /// `value` waits may pass before one blocks.
    public init(value: UInt32 = 0) {
        sem_init(semaphore, 0, value)
    }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    public func signal() {
        // Fails only when the count would overflow, which one waiter per signal never reaches.
        precondition(sem_post(semaphore) == 0, "sem_post: \(String(cString: strerror(errno)))")
    }

    public func wait() {
        while sem_wait(semaphore) != 0 {
            precondition(errno == EINTR, "sem_wait: \(String(cString: strerror(errno)))")
        }
    }

    /// False when `seconds` passed first.
    public func wait(seconds: Int) -> Bool { wait(milliseconds: seconds * 1000) }

    /// False when `milliseconds` passed first.
    public func wait(milliseconds: Int) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanoseconds = deadline.tv_nsec + milliseconds % 1000 * 1_000_000
        deadline.tv_sec += milliseconds / 1000 + nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        while sem_timedwait(semaphore, &deadline) != 0 {
            if errno == ETIMEDOUT { return false }
            precondition(errno == EINTR, "sem_timedwait: \(String(cString: strerror(errno)))")
        }
        return true
    }
}

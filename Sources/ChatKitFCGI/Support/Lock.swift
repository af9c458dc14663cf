import Glibc

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

/// A value only reachable under its own lock, so what shares it needs no `@unchecked` of its own.
///
/// `@unchecked Sendable`, as `Synchronization.Mutex` is for any value: the value is only touched
/// inside `withLock`, one thread at a time.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = Lock()
    private var value: Value

    public init(_ value: Value) {
        self.value = value
    }

    public func withLock<T, Failure: Error>(_ body: (inout Value) throws(Failure) -> T) throws(Failure) -> T {
        try lock.withLock { () throws(Failure) -> T in try body(&value) }
    }
}

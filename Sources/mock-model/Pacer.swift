import CLinux
import ChatKitFCGI
import Glibc

/// Sends the paced records of every stream from one thread, each when it falls due: the thread
/// wakes when the earliest record falls due (at most 50 us later) and sends every record due by
/// then, so a record costs no context switch of its own and a connection's thread waits once
/// per stream. The mock shares the benchmark's two cores with what it measures.
///
/// Writes never block this thread: a socket that is full keeps its bytes until it polls
/// writable, and a peer that reads nothing for `stuckTimeout` ends its stream. A peer that
/// closes ends its stream at once (EPOLLRDHUP).
///
/// `@unchecked Sendable`: streams arrive through `submitted`; all other state belongs to the
/// pacer's thread.
final class Pacer: @unchecked Sendable {
    static let shared = Pacer()

    /// The rest of one stream: `frames[i]` falls due at `start + (i + 1) * interval`.
    ///
    /// `@unchecked Sendable`: posted by its connection's thread, which then only waits on
    /// `done`; from then on the pacer's thread alone touches it.
    private final class Stream: @unchecked Sendable {
        let fd: Int32
        let frames: [[UInt8]]
        let start: UInt64
        let interval: UInt64
        /// Told when the socket fills (true), and when that wait ends (false).
        let waiting: @Sendable (Bool) -> Void
        var next = 0
        var unsent: [UInt8] = []
        var unsentOffset = 0
        var blockedSince: UInt64?
        var scheduled: UInt64?
        var completed = false
        private let done = Semaphore()

        init(fd: Int32, frames: [[UInt8]], start: UInt64, interval: UInt64, waiting: @escaping @Sendable (Bool) -> Void) {
            self.fd = fd
            self.frames = frames
            self.start = start
            self.interval = interval
            self.waiting = waiting
        }

        func due(_ index: Int) -> UInt64 { start + UInt64(index + 1) * interval }
        func wait() { done.wait() }
        func end(completed: Bool) {
            self.completed = completed
            done.signal()
        }
    }

    private static let stuckTimeout: UInt64 = 60_000_000_000
    private static let submittedTag: UInt64 = 0
    /// How late the loop may wake (the kernel's default, set so as not to depend on it):
    /// records falling due within it go out with one wake-up. epoll_wait's millisecond timeout
    /// would round every record late onto shared ticks, and a timerfd re-armed for each due
    /// time would cost two system calls per record.
    private static let timerSlackNanoseconds: UInt = 50_000
    private let epoll: Epoll
    private let submitted: Mailbox<Stream>
    private var streams: [UInt64: Stream] = [:]
    private var lastTag: UInt64 = 0
    /// A min-heap of (due time, stream tag); entries of streams already ended are skipped.
    private var timers: [(due: UInt64, tag: UInt64)] = []

    private init() {
        do {
            epoll = try Epoll()
            submitted = try Mailbox()
            try epoll.add(submitted.descriptor, events: EPOLLIN.rawValue, tag: Self.submittedTag)
        } catch {
            fatalError("the pacer cannot start: \(error)")
        }
        precondition(DetachedThread.start(stackBytes: 256 << 10) { self.loop() }, "could not start the pacer")
    }

    /// Sends `frames[i]` on `fd` at `start + (i + 1) * interval` (monotonic nanoseconds) and
    /// waits until all are written (true) or the peer went away (false). `waiting` hears when
    /// the socket fills (true), and when that wait ends (false).
    func send(_ frames: [[UInt8]], on fd: Int32, start: UInt64, interval: UInt64,
              waiting: @escaping @Sendable (Bool) -> Void) -> Bool {
        let stream = Stream(fd: fd, frames: frames, start: start, interval: interval, waiting: waiting)
        submitted.post(stream)
        stream.wait()
        return stream.completed
    }

    private func loop() -> Never {
        precondition(clinux_set_timer_slack(Self.timerSlackNanoseconds) == 0, "could not set the pacer's timer slack")
        while true {
            epoll.wait(nanoseconds: nanosecondsToFirstDue()) { tag, events in
                if tag == Self.submittedTag {
                    takeSubmitted()
                } else if let stream = streams[tag] {
                    if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                        end(tag, stream, completed: false)
                    } else {
                        service(tag, stream, now: Clock.monotonicNanoseconds())
                    }
                }
            }
            let now = Clock.monotonicNanoseconds()
            while let first = timers.first, first.due <= now {
                popTimer()
                if let stream = streams[first.tag] {
                    stream.scheduled = nil
                    service(first.tag, stream, now: now)
                }
            }
        }
    }

    /// How long the loop may wait for the earliest due time: -1 (no limit) when nothing is due.
    private func nanosecondsToFirstDue() -> Int64 {
        guard let due = timers.first?.due else { return -1 }
        let now = Clock.monotonicNanoseconds()
        return due > now ? Int64(due - now) : 0
    }

    private func takeSubmitted() {
        for stream in submitted.takeAll() {
            lastTag += 1
            do {
                try epoll.add(stream.fd, events: EPOLLRDHUP.rawValue, tag: lastTag)
            } catch {
                stream.end(completed: false)
                continue
            }
            streams[lastTag] = stream
            service(lastTag, stream, now: Clock.monotonicNanoseconds())
        }
    }

    /// Queues every frame due by `now`, writes what the socket takes, and schedules the rest.
    private func service(_ tag: UInt64, _ stream: Stream, now: UInt64) {
        while stream.next < stream.frames.count, stream.due(stream.next) <= now {
            stream.unsent += stream.frames[stream.next]
            stream.next += 1
        }
        guard flush(tag, stream, now: now) else { return }
        if let blockedSince = stream.blockedSince, now - blockedSince >= Self.stuckTimeout {
            end(tag, stream, completed: false)
        } else if stream.next < stream.frames.count {
            schedule(tag, stream, at: stream.due(stream.next))
        } else if stream.blockedSince == nil {
            end(tag, stream, completed: true)
        } else {
            schedule(tag, stream, at: stream.blockedSince! + Self.stuckTimeout)
        }
    }

    /// Writes the stream's unsent bytes without blocking; false when the stream ended.
    private func flush(_ tag: UInt64, _ stream: Stream, now: UInt64) -> Bool {
        while stream.unsentOffset < stream.unsent.count {
            let written = stream.unsent.withUnsafeBytes { bytes in
                Glibc.send(stream.fd, bytes.baseAddress! + stream.unsentOffset, bytes.count - stream.unsentOffset,
                           Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if written > 0 {
                stream.unsentOffset += written
            } else if written < 0 && errno == EINTR {
                continue
            } else if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                if stream.blockedSince == nil {
                    stream.blockedSince = now
                    stream.waiting(true)
                    guard (try? epoll.modify(stream.fd, events: EPOLLRDHUP.rawValue | EPOLLOUT.rawValue, tag: tag)) != nil else {
                        end(tag, stream, completed: false)
                        return false
                    }
                }
                return true
            } else {
                end(tag, stream, completed: false)
                return false
            }
        }
        stream.unsent.removeAll(keepingCapacity: true)
        stream.unsentOffset = 0
        if stream.blockedSince != nil {
            stream.blockedSince = nil
            stream.waiting(false)
            guard (try? epoll.modify(stream.fd, events: EPOLLRDHUP.rawValue, tag: tag)) != nil else {
                end(tag, stream, completed: false)
                return false
            }
        }
        return true
    }

    private func end(_ tag: UInt64, _ stream: Stream, completed: Bool) {
        if stream.blockedSince != nil { stream.waiting(false) }
        // The connection's thread closes the descriptor once told; until then it is registered.
        try? epoll.remove(stream.fd)
        streams[tag] = nil
        stream.end(completed: completed)
    }

    private func schedule(_ tag: UInt64, _ stream: Stream, at due: UInt64) {
        guard stream.scheduled != due else { return }
        stream.scheduled = due
        timers.append((due, tag))
        var child = timers.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard timers[child].due < timers[parent].due else { break }
            timers.swapAt(child, parent)
            child = parent
        }
    }

    private func popTimer() {
        timers.swapAt(0, timers.count - 1)
        timers.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < timers.count, timers[left].due < timers[smallest].due { smallest = left }
            if right < timers.count, timers[right].due < timers[smallest].due { smallest = right }
            guard smallest != parent else { return }
            timers.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

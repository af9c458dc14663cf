import CLinux
import ChatKitFCGI
import Glibc

/// What one phase of the benchmark sends, and how long.
struct LoadSettings {
    var port: UInt16
    /// The whole request, head and body, sent on a fresh connection each time.
    var request: [UInt8]
    var concurrency: Int
    /// Requests per slot; a slot also stops at `deadline` (monotonic nanoseconds) when set.
    var requestsPerSlot: Int
    var deadline: UInt64?
    /// Slot i starts i/concurrency of this late, so that requests do not arrive in bursts.
    var staggerNanoseconds: UInt64
    var expectedRecords: Int
    var lastRecord: [UInt8]
    var timeoutNanoseconds: UInt64
}

/// One finished request, as a line of output: `ok TTFT TOTAL CONNECT` in nanoseconds (TTFT and
/// total counted from the moment the request was written), or `error REASON`.
enum Outcome {
    case completed(ttft: UInt64, total: UInt64, connect: UInt64)
    case failed(String)
}

/// Every slot's requests, driven from one thread on epoll: a slot connects, writes the request,
/// reads the response to the server's close, and starts its next request at once.
///
/// A response is read record by record only until its first content: that is the moment
/// measured. The rest stays in the socket until the server closes, then is read at once and
/// checked, so the client wakes twice per stream instead of once per record. Its CPU is taken
/// from the processes being measured, which write every record just the same.
final class LoadGenerator {
    private enum Stage { case waiting, sending, receiving, draining, finished }

    private final class Slot {
        let index: Int
        var stage = Stage.waiting
        let startAt: UInt64
        var firstStart: UInt64 = 0
        var remaining: Int
        var completed = 0
        var elapsed: UInt64 = 0
        var fd: Int32 = -1
        var registered = false
        var requestStarted: UInt64 = 0
        var requestSent: UInt64 = 0
        var firstContent: UInt64?
        var lastData: UInt64 = 0
        var written = 0
        var response = StreamedResponse()

        init(index: Int, startAt: UInt64, requests: Int) {
            self.index = index
            self.startAt = startAt
            remaining = requests
        }
    }

    private let settings: LoadSettings
    private let epoll: Epoll
    private var slots: [Slot] = []
    private var open = 0
    /// Slots whose request just ended, to start the next one from the loop (not recursively:
    /// a server that refuses every connection must not grow the stack).
    private var restarting: [Slot] = []
    private(set) var outcomes: [Outcome] = []
    /// Each slot's completed requests over its own running time.
    private(set) var slotRates: [Double] = []
    private var readBuffer = [UInt8](repeating: 0, count: 1 << 16)

    init(settings: LoadSettings) {
        self.settings = settings
        do {
            epoll = try Epoll()
        } catch {
            fatalError("\(error)")
        }
    }

    func run() {
        let start = Clock.monotonicNanoseconds()
        slots = (0..<settings.concurrency).map { index in
            Slot(index: index, startAt: start + settings.staggerNanoseconds * UInt64(index) / UInt64(settings.concurrency),
                 requests: settings.requestsPerSlot)
        }
        var unstarted = slots[...]
        var nextTimeoutSweep = start + 1_000_000_000
        while true {
            let now = Clock.monotonicNanoseconds()
            let ended = restarting
            restarting.removeAll(keepingCapacity: true)
            for slot in ended { startRequest(slot, now: now) }
            while let slot = unstarted.first, slot.startAt <= now {
                unstarted.removeFirst()
                slot.firstStart = now
                startRequest(slot, now: now)
            }
            if now >= nextTimeoutSweep {
                nextTimeoutSweep = now + 1_000_000_000
                for slot in slots where slot.stage != .waiting && slot.stage != .finished
                    && now - slot.requestStarted > settings.timeoutNanoseconds {
                    end(slot, .failed("timeout"), now: now)
                }
            }
            // Done once every slot has finished: checked before waiting, so that the end of the
            // last request does not wait out a sweep interval.
            if unstarted.isEmpty && restarting.isEmpty && open == 0 { break }
            let wakeAt = restarting.isEmpty ? min(unstarted.first?.startAt ?? nextTimeoutSweep, nextTimeoutSweep) : now
            var readyAt: UInt64?
            epoll.wait(nanoseconds: Int64(wakeAt > now ? wakeAt - now : 0)) { tag, events in
                if readyAt == nil { readyAt = Clock.monotonicNanoseconds() }
                handle(slots[Int(tag)], events: events, now: readyAt!)
            }
        }
        slotRates = slots.map { $0.elapsed > 0 ? Double($0.completed) * 1e9 / Double($0.elapsed) : 0 }
    }

    private func startRequest(_ slot: Slot, now: UInt64) {
        if slot.remaining == 0 || settings.deadline.map({ now >= $0 }) == true {
            slot.stage = .finished
            slot.elapsed = now - slot.firstStart
            return
        }
        slot.remaining -= 1
        slot.requestStarted = now
        slot.firstContent = nil
        slot.written = 0
        slot.registered = false
        slot.response = StreamedResponse()
        slot.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard slot.fd >= 0 else { return fail(slot, "socket", now: now) }
        open += 1
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = settings.port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(slot.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 || errno == EINPROGRESS else { return fail(slot, "connect", now: now) }
        slot.stage = .sending
        send(slot, now: now)
    }

    private func handle(_ slot: Slot, events: UInt32, now: UInt64) {
        switch slot.stage {
        case .sending:
            send(slot, now: now)
        case .receiving:
            receive(slot, now: now)
        case .draining:
            drain(slot, now: now)
        case .waiting, .finished:
            break
        }
    }

    /// Tried at once after connect(): on loopback the handshake is usually done by then, which
    /// saves waiting for the socket to poll writable. Until it is, the write fails with EAGAIN, and
    /// a refused connection fails it with the reason.
    private func send(_ slot: Slot, now: UInt64) {
        let count = settings.request.withUnsafeBytes { write(slot.fd, $0.baseAddress! + slot.written, $0.count - slot.written) }
        if count < 0 && errno != EAGAIN { return fail(slot, slot.written == 0 ? "connect" : "write", now: now) }
        if count > 0 {
            if slot.written == 0 { slot.requestSent = now }
            slot.written += count
        }
        let events = slot.written == settings.request.count ? EPOLLIN.rawValue : EPOLLOUT.rawValue
        if events == EPOLLIN.rawValue { slot.stage = .receiving }
        do {
            try slot.registered
                ? epoll.modify(slot.fd, events: events, tag: UInt64(slot.index))
                : epoll.add(slot.fd, events: events, tag: UInt64(slot.index))
        } catch {
            return end(slot, .failed("\(error)"), now: now)
        }
        slot.registered = true
    }

    /// One read per readiness until the first content; then only the server's close wakes the
    /// slot (`EPOLLRDHUP`; hang-ups and errors are always reported).
    private func receive(_ slot: Slot, now: UInt64) {
        guard readOnce(slot, now: now) else { return }
        if slot.firstContent != nil {
            slot.stage = .draining
            do {
                try epoll.modify(slot.fd, events: EPOLLRDHUP.rawValue, tag: UInt64(slot.index))
            } catch {
                end(slot, .failed("\(error)"), now: now)
            }
        }
    }

    /// Everything the server sent before it closed.
    private func drain(_ slot: Slot, now: UInt64) {
        while readOnce(slot, now: now) {}
    }

    /// Reads and takes in what is there; false when there was nothing (the response may have
    /// ended with it).
    private func readOnce(_ slot: Slot, now: UInt64) -> Bool {
        let count = readBuffer.withUnsafeMutableBytes { read(slot.fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EAGAIN || errno == EINTR { return false }
            if slot.response.sawLastChunk { finishResponse(slot, now: now) } else { fail(slot, "connection lost", now: now) }
            return false
        }
        guard count > 0 else {
            finishResponse(slot, now: now)
            return false
        }
        slot.lastData = now
        let completedContent = readBuffer.withUnsafeBytes { slot.response.feed(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
        if completedContent { slot.firstContent = now }
        return true
    }

    private func finishResponse(_ slot: Slot, now: UInt64) {
        if let reason = slot.response.failure(expectedRecords: settings.expectedRecords, lastRecord: settings.lastRecord) {
            return end(slot, .failed(reason), now: now)
        }
        guard let firstContent = slot.firstContent else { return end(slot, .failed("no content chunk"), now: now) }
        end(slot, .completed(ttft: firstContent - slot.requestSent, total: slot.lastData - slot.requestSent,
                             connect: slot.requestSent - slot.requestStarted), now: now)
    }

    private func fail(_ slot: Slot, _ what: String, now: UInt64) {
        end(slot, .failed("\(what): \(String(cString: strerror(errno)))"), now: now)
    }

    private func end(_ slot: Slot, _ outcome: Outcome, now: UInt64) {
        if slot.fd >= 0 {
            close(slot.fd)  // also leaves the epoll set
            slot.fd = -1
            open -= 1
        }
        if case .completed = outcome { slot.completed += 1 }
        outcomes.append(outcome)
        slot.stage = .waiting
        restarting.append(slot)
    }
}

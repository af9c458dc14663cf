import CCurl
import CLinux
import Glibc

/// The one thread that drives every HTTP transfer of the process, through one libcurl multi
/// handle and epoll. A caller hands its transfer over and waits, holding no thread; the
/// callbacks (parsing each chunk, writing it to our client) run here. One wake-up serves every chunk that arrived
/// meanwhile, and the connections to the model API are pooled for the whole process.
///
/// Writing to our client must never block this thread, or every stream would stall behind one
/// slow reader: body bytes are only delivered while the client's writer has room for them, and
/// otherwise the transfer is paused until its socket polls writable.
///
/// `@unchecked Sendable`: transfers arrive through `submitted`; all other state is used on
/// the loop's thread only (libcurl calls the socket and timer callbacks from `socket_action`).
final class TransferLoop: @unchecked Sendable {
    static let shared = TransferLoop()

    private let multi: UnsafeMutableRawPointer
    private let epoll: Epoll
    private let submitted: Mailbox<Submission>

    /// What reaches the loop from other threads: a transfer to run, a sleeper to wake at a
    /// time (monotonic milliseconds), or a probe to answer.
    private enum Submission: Sendable {
        case transfer(Transfer)
        case sleep(until: Double, wake: @Sendable () -> Void)
        case probe(Semaphore)
    }

    /// Few at a time (a retry's backoff), so a list does.
    private var sleepers: [(until: Double, wake: @Sendable () -> Void)] = []

    private var running: [UnsafeMutableRawPointer: Transfer] = [:]
    /// By registration number, not descriptor: a descriptor closed and reused within one batch
    /// of events must not be taken for the transfer that watched it before.
    private var watched: [UInt32: Transfer] = [:]
    private var lastRegistration: UInt32 = 0
    private var curlSockets: Set<Int32> = []
    /// When libcurl wants `socket_action(CURL_SOCKET_TIMEOUT)` (monotonic milliseconds).
    private var curlDeadline: Double?
    private var nextTickSweep = 0.0
    private static let tickSweepMilliseconds = 20.0

    private enum Kind: UInt64 { case submitted, curlSocket, watch }

    private static func tag(_ kind: Kind, _ descriptor: Int32) -> UInt64 {
        kind.rawValue << 32 | UInt64(UInt32(bitPattern: descriptor))
    }

    private func watchTag(_ transfer: Transfer) -> UInt64 { Kind.watch.rawValue << 32 | UInt64(transfer.registration) }

    private init() {
        guard let multi = curl_multi_init() else { fatalError("libcurl could not allocate a multi handle") }
        self.multi = multi
        // Without its epoll and mailbox no model call could ever run: nothing to fall back to.
        do {
            epoll = try Epoll()
            submitted = try Mailbox()
            try epoll.add(submitted.descriptor, events: EPOLLIN.rawValue, tag: Self.tag(.submitted, submitted.descriptor))
        } catch {
            fatalError("the transfer loop cannot start: \(error)")
        }
        let context = Unmanaged.passUnretained(self).toOpaque()
        _ = ccurl_multi_setopt_pointer(multi, CURLMOPT_SOCKETDATA, context)
        _ = ccurl_multi_setopt_socket_function(multi, loopSocketCallback)
        _ = ccurl_multi_setopt_pointer(multi, CURLMOPT_TIMERDATA, context)
        _ = ccurl_multi_setopt_timer_function(multi, loopTimerCallback)
        precondition(DetachedThread.start(stackBytes: 1 << 20) { self.loop() }, "could not start the transfer loop")
    }

    /// Runs `transfer` on the loop; nil when it completed. The task resumes when it ends.
    func run(_ transfer: Transfer) async -> TransferError? {
        let failure = await withCheckedContinuation { continuation in
            transfer.whenDone = { continuation.resume(returning: $0) }
            submitted.post(.transfer(transfer))
        }
        transfer.takeBack()
        return failure
    }

    /// Runs `transfer` on the loop while the calling thread waits; nil when it completed.
    func runWaiting(_ transfer: Transfer) -> TransferError? {
        let done = Semaphore()
        transfer.whenDone = { _ in done.signal() }
        submitted.post(.transfer(transfer))
        done.wait()
        return transfer.failure
    }

    private func loop() -> Never {
        // Stop and wake signals belong to the threads that wait for them; faults stay
        // deliverable here, or a crash on this thread would lose its backtrace.
        var signals = sigset_t()
        sigfillset(&signals)
        for fault in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT] { sigdelset(&signals, fault) }
        System.setSignalMask(SIG_BLOCK, signals)
        while true {
            epoll.wait(milliseconds: waitMilliseconds()) { tag, events in
                let descriptor = Int32(bitPattern: UInt32(truncatingIfNeeded: tag))
                switch Kind(rawValue: tag >> 32) {
                case .submitted?: takeSubmitted()
                case .curlSocket?: socketAction(descriptor, events: events)
                case .watch?: watchedSocketReady(registration: UInt32(truncatingIfNeeded: tag), events: events)
                case nil: break
                }
            }
            let now = Clock.monotonicMilliseconds()
            if let deadline = curlDeadline, now >= deadline {
                curlDeadline = nil
                socketAction(CURL_SOCKET_TIMEOUT, events: 0)
            }
            sweepTicks(now: now)
            wakeSleepers(now: now)
        }
    }

    /// Read afresh: a timer libcurl set just now must not wait a rounded-up millisecond.
    private func waitMilliseconds() -> Int32 {
        let now = Clock.monotonicMilliseconds()
        var until = running.isEmpty ? nil : nextTickSweep
        if let sleeper = sleepers.min(by: { $0.until < $1.until }) { until = min(until ?? sleeper.until, sleeper.until) }
        if let deadline = curlDeadline { until = min(until ?? deadline, deadline) }
        guard let until else { return -1 }
        return Int32(max(0, (until - now).rounded(.up)))
    }

    /// Suspends the calling task for `milliseconds`, holding no thread. The loop keeps the time:
    /// the runtime's own sleep would start a timer thread of the dispatch library's, which gives
    /// up the whole process when it cannot get a descriptor (a server at its open-file limit).
    func sleep(milliseconds: Double) async {
        let until = Clock.monotonicMilliseconds() + milliseconds
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submitted.post(.sleep(until: until, wake: { continuation.resume() }))
        }
    }

    private func wakeSleepers(now: Double) {
        guard sleepers.contains(where: { $0.until <= now }) else { return }
        let due = sleepers.filter { $0.until <= now }
        sleepers.removeAll { $0.until <= now }
        for sleeper in due { sleeper.wake() }
    }

    /// Whether the loop still turns: it answers a probe within `milliseconds` (the watchdog).
    func answers(within milliseconds: Int) -> Bool {
        let answered = Semaphore()
        submitted.post(.probe(answered))
        return answered.wait(milliseconds: milliseconds)
    }

    private func takeSubmitted() {
        let now = Clock.monotonicMilliseconds()
        for submission in submitted.takeAll() {
            let transfer: Transfer
            switch submission {
            case .transfer(let submitted): transfer = submitted
            case .sleep(let until, let wake):
                sleepers.append((until, wake))
                continue
            case .probe(let answered):
                answered.signal()
                continue
            }
            transfer.nextTick = now + transfer.tickMilliseconds
            transfer.lastHeard = now
            running[transfer.easy] = transfer
            if let watch = transfer.watch {
                lastRegistration &+= 1
                transfer.registration = lastRegistration
                watched[lastRegistration] = transfer
                do {
                    try epoll.add(watch, events: EPOLLIN.rawValue, tag: watchTag(transfer))
                } catch {
                    finish(transfer, failure: .transport("cannot watch the client's socket: \(error)"))
                    continue
                }
            }
            let code = curl_multi_add_handle(multi, transfer.easy)
            if code != CURLM_OK { finish(transfer, failure: .transport(String(cString: curl_multi_strerror(code)))) }
        }
        collectFinished()
    }

    private func socketAction(_ socket: Int32, events: UInt32) {
        var mask: Int32 = 0
        if events & (EPOLLIN.rawValue | EPOLLHUP.rawValue) != 0 { mask |= CURL_CSELECT_IN }
        if events & EPOLLOUT.rawValue != 0 { mask |= CURL_CSELECT_OUT }
        if events & EPOLLERR.rawValue != 0 { mask |= CURL_CSELECT_ERR }
        var stillRunning: Int32 = 0
        _ = curl_multi_socket_action(multi, socket, mask, &stillRunning)
        collectFinished()
    }

    /// Our client's socket: readable means it went away; writable means a paused transfer
    /// may deliver again.
    private func watchedSocketReady(registration: UInt32, events: UInt32) {
        guard let transfer = watched[registration], let socket = transfer.watch else { return }
        if events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            finish(transfer, failure: .watchedDescriptorReady)
            return
        }
        if events & EPOLLOUT.rawValue != 0, transfer.awaitingOutput {
            transfer.awaitingOutput = false
            transfer.lastHeard = Clock.monotonicMilliseconds()
            do {
                try epoll.modify(socket, events: EPOLLIN.rawValue, tag: watchTag(transfer))
            } catch {
                finish(transfer, failure: .transport("cannot watch the client's socket: \(error)"))
                return
            }
            // Unpausing delivers the held bytes at once; if they are refused, libcurl will not
            // schedule the transfer again, so it ends here.
            let code = curl_easy_pause(transfer.easy, CURLPAUSE_CONT)
            if code != CURLE_OK {
                finish(transfer, failure: transfer.stopRequested ? .stopped : .transport(String(cString: curl_easy_strerror(code))))
            }
            collectFinished()
        }
    }

    /// Called from the body callback when the client's socket is full. False when the socket
    /// cannot be watched for room, so the transfer could never resume.
    func awaitOutput(for transfer: Transfer) -> Bool {
        guard let watch = transfer.watch, !transfer.awaitingOutput else { return true }
        do {
            try epoll.modify(watch, events: EPOLLIN.rawValue | EPOLLOUT.rawValue, tag: watchTag(transfer))
        } catch {
            Log.error("cannot wait for room on our client's socket: \(error)")
            return false
        }
        transfer.awaitingOutput = true
        transfer.pausedSince = Clock.monotonicMilliseconds()
        return true
    }

    /// Each transfer's tick, about every `tickMilliseconds`, told whether its client's socket
    /// can take a write; and its two stall timers, both timed here to within a tick: a server
    /// that sends nothing (no head, or no byte after it) for the stall timeout, and a client that
    /// reads nothing for as long while the download is paused.
    private func sweepTicks(now: Double) {
        guard now >= nextTickSweep else { return }
        nextTickSweep = now + Self.tickSweepMilliseconds
        for transfer in running.values where now >= transfer.nextTick {
            transfer.nextTick = now + transfer.tickMilliseconds
            if transfer.awaitingOutput, now - transfer.pausedSince >= transfer.stallTimeoutMilliseconds {
                finish(transfer, failure: .timedOut("our client read nothing for \(Int(transfer.stallTimeoutMilliseconds / 1000)) s"))
                continue
            }
            if !transfer.awaitingOutput, now - transfer.lastHeard >= transfer.stallTimeoutMilliseconds {
                finish(transfer, failure: .timedOut("the server sent nothing for \(Int(transfer.stallTimeoutMilliseconds / 1000)) s"))
                continue
            }
            if !transfer.tick(outputHasRoom: !transfer.awaitingOutput && transfer.outputHasRoom) {
                finish(transfer, failure: .stopped)
            }
        }
    }

    private func collectFinished() {
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                let transfer = running[easy]
            else { continue }
            let result = message.pointee.data.result
            let failure: TransferError? = switch result {
            case CURLE_OK: nil
            case CURLE_WRITE_ERROR where transfer.stopRequested: .stopped
            case CURLE_OPERATION_TIMEDOUT: .timedOut(String(cString: curl_easy_strerror(result)))
            default: .transport(String(cString: curl_easy_strerror(result)))
            }
            finish(transfer, failure: failure)
        }
    }

    /// Hands the transfer back to its caller.
    private func finish(_ transfer: Transfer, failure: TransferError?) {
        _ = curl_multi_remove_handle(multi, transfer.easy)
        running[transfer.easy] = nil
        if let watch = transfer.watch, watched[transfer.registration] === transfer {
            watched[transfer.registration] = nil
            // The descriptor is still open (its request has not finished), so this cannot fail
            // but for lack of memory, and a stale registration is dropped with the descriptor.
            do { try epoll.remove(watch) } catch { Log.warning("\(error)") }
        }
        transfer.markDone(failure: failure)
    }

    fileprivate func curlSocket(_ socket: Int32, what: Int32) {
        if what == CURL_POLL_REMOVE {
            curlSockets.remove(socket)
            do { try epoll.remove(socket) } catch { Log.warning("\(error)") }
            return
        }
        var events: UInt32 = 0
        if what & CURL_POLL_IN != 0 { events |= EPOLLIN.rawValue }
        if what & CURL_POLL_OUT != 0 { events |= EPOLLOUT.rawValue }
        let tag = Self.tag(.curlSocket, socket)
        // The kernel forgets a closed descriptor on its own, so the set can be stale either way.
        let isNew = curlSockets.insert(socket).inserted
        do {
            do {
                try isNew ? epoll.add(socket, events: events, tag: tag) : epoll.modify(socket, events: events, tag: tag)
            } catch where error.code == (isNew ? EEXIST : ENOENT) {
                try isNew ? epoll.modify(socket, events: events, tag: tag) : epoll.add(socket, events: events, tag: tag)
            }
        } catch {
            // Unwatched, the transfer hears nothing more: libcurl's timeouts end it.
            Log.error("cannot watch a model connection: \(error)")
        }
    }

    fileprivate func setCurlTimer(milliseconds: Int) {
        curlDeadline = milliseconds < 0 ? nil : Clock.monotonicMilliseconds() + Double(milliseconds)
    }
}

private let loopSocketCallback: curl_socket_callback = { _, socket, what, context, _ in
    Unmanaged<TransferLoop>.fromOpaque(context!).takeUnretainedValue().curlSocket(socket, what: what)
    return 0
}

private let loopTimerCallback: curl_multi_timer_callback = { _, milliseconds, context in
    Unmanaged<TransferLoop>.fromOpaque(context!).takeUnretainedValue().setCurlTimer(milliseconds: milliseconds)
    return 0
}

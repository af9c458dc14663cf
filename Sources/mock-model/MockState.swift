import ChatKitFCGI

/// Process-wide request log and counters shared by all connection threads.
/// Everything sits behind one mutex: critical sections are tiny, and a single
/// lock keeps the stats mutually consistent.
final class MockState: Sendable {
    /// Identifies the stats generation a stream was started in, so a stream
    /// that straddles `DELETE /_mock/requests` does not skew the fresh counters.
    struct StreamTicket {
        fileprivate let epoch: Int
        fileprivate let stream: Int
    }

    private struct State {
        var log: [JSON] = []
        var requests = 0
        var streamsStarted = 0
        var streamsCompleted = 0
        var streamsCancelled = 0
        /// A live gauge: not reset, since those streams really are still running.
        var activeStreams = 0
        /// Never reset, so a stream keeps its number in `waitingToWriteSince`.
        var lastStream = 0
        /// Live too: when each stream whose socket is full began to wait for its peer to read.
        var waitingToWriteSince: [Int: UInt64] = [:]
        /// How many times a stream found its socket full.
        var writeWaits = 0
        var epoch = 0
        /// Never reset, so ids stay unique for the life of the process.
        var lastRequestNumber = 0
        /// How often each `flaky` request was seen, by its whole body.
        var attempts: [String: Int] = [:]
    }

    private let state = Locked(State())

    /// Logs a valid chat request; returns its request number (1, 2, ...),
    /// used for `chatcmpl-mock<n>` and `call_mock_<n>_<i>`.
    func logRequest(_ body: JSON) -> Int {
        state.withLock { s in
            s.log.append(body)
            s.requests += 1
            s.lastRequestNumber += 1
            return s.lastRequestNumber
        }
    }

    /// Counts one more sending of the same request body: 1 the first time.
    func attempt(of body: String) -> Int {
        state.withLock { s in
            s.attempts[body, default: 0] += 1
            return s.attempts[body]!
        }
    }

    func loggedRequests() -> [JSON] {
        // Copy-on-write: the array is copied out cheaply, serialized outside the lock.
        state.withLock { $0.log }
    }

    func reset() {
        state.withLock { s in
            s.log = []
            s.requests = 0
            s.streamsStarted = 0
            s.streamsCompleted = 0
            s.streamsCancelled = 0
            s.writeWaits = 0
            s.epoch += 1
        }
    }

    func streamStarted() -> StreamTicket {
        state.withLock { s in
            s.streamsStarted += 1
            s.activeStreams += 1
            s.lastStream += 1
            return StreamTicket(epoch: s.epoch, stream: s.lastStream)
        }
    }

    /// A stream's socket is full and its next bytes wait for the peer to read (`true`), or that
    /// wait is over (`false`): how a test sees that a reader stopped reading, and for how long.
    func stream(_ ticket: StreamTicket, waitsToWrite waiting: Bool) {
        let now = Clock.monotonicNanoseconds()
        state.withLock { s in
            if waiting {
                s.waitingToWriteSince[ticket.stream] = now
                if ticket.epoch == s.epoch { s.writeWaits += 1 }
            } else {
                s.waitingToWriteSince[ticket.stream] = nil
            }
        }
    }

    func streamEnded(_ ticket: StreamTicket, cancelled: Bool) {
        state.withLock { s in
            s.activeStreams -= 1
            guard ticket.epoch == s.epoch else { return }
            if cancelled { s.streamsCancelled += 1 } else { s.streamsCompleted += 1 }
        }
    }

    func statsJSON() -> JSON {
        let now = Clock.monotonicNanoseconds()
        return state.withLock { s in
            let longestWait = s.waitingToWriteSince.values.min().map { now - min($0, now) } ?? 0
            return [
                "requests": .int(s.requests),
                "streams_started": .int(s.streamsStarted),
                "streams_completed": .int(s.streamsCompleted),
                "streams_cancelled": .int(s.streamsCancelled),
                "active_streams": .int(s.activeStreams),
                "streams_waiting_to_write": .int(s.waitingToWriteSince.count),
                "longest_write_wait_ms": .int(Int(longestWait / 1_000_000)),
                "write_waits": .int(s.writeWaits),
            ]
        }
    }
}

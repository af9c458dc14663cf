/// A per-user limit was reached: answered 429 with `Retry-After`, before anything is stored or
/// sent to the model.
public struct LimitReached: Error, Equatable {
    /// `streams`, `requests` or `tokens`: the metrics' label.
    public let limit: String
    public let detail: String
    public let retryAfterSeconds: Int
}

/// The limits this process keeps per user (the token's `sub`): concurrent streams, and requests
/// per window (a minute unless configured). They count what this host serves; the daily token
/// budget, which must hold across hosts, is kept in the database (`Worker.beginModelUse`).
final class UserLimits: Sendable {
    private let maxStreams: Int
    private let requests: Int
    private let windowSeconds: Int
    private let streams = Locked<[String: Int]>([:])
    /// Requests in the current window; the whole table starts over with the next window, so it
    /// never holds more users than one window brought.
    private let window = Locked<(number: Int64, counts: [String: Int])>((0, [:]))

    init(maxStreams: Int, requests: Int, windowSeconds: Int) {
        self.maxStreams = maxStreams
        self.requests = requests
        self.windowSeconds = windowSeconds
    }

    /// Counts one request; the headers that tell the client where it stands.
    func admitRequest(from user: String) throws(LimitReached) -> [(String, String)] {
        guard requests > 0 else { return [] }
        let now = Clock.unixTime()
        let number = Int64(now) / Int64(windowSeconds)
        let resetSeconds = max(1, Int((Double((number + 1) * Int64(windowSeconds)) - now).rounded(.up)))
        let count = window.withLock { window in
            if window.number != number { window = (number, [:]) }
            window.counts[user, default: 0] += 1
            return window.counts[user]!
        }
        guard count <= requests else {
            throw LimitReached(limit: "requests", detail: "too many requests: at most \(requests) in \(windowSeconds) s",
                               retryAfterSeconds: resetSeconds)
        }
        return [("X-RateLimit-Limit-Requests", String(requests)),
                ("X-RateLimit-Remaining-Requests", String(requests - count)),
                ("X-RateLimit-Reset-Requests", "\(resetSeconds)s")]
    }

    /// Takes one of the user's stream places; `closeStream` gives it back.
    func openStream(for user: String) throws(LimitReached) {
        guard maxStreams > 0 else { return }
        let admitted = streams.withLock { streams in
            guard streams[user, default: 0] < maxStreams else { return false }
            streams[user, default: 0] += 1
            return true
        }
        guard admitted else {
            throw LimitReached(limit: "streams", detail: "too many answers at once: at most \(maxStreams) per user",
                               retryAfterSeconds: 1)
        }
    }

    func closeStream(for user: String) {
        guard maxStreams > 0 else { return }
        streams.withLock { streams in
            let left = streams[user, default: 1] - 1
            streams[user] = left > 0 ? left : nil
        }
    }
}

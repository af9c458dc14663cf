
/// A cached JWKS with jose's refresh policy: refetch when older than `maximumAge`, and on an
/// unknown `kid` (key rotation) at most once per `cooldown`. One fetch runs at a time; a failed
/// fetch keeps the keys we had.
public final class JWKSource: Sendable {
    public typealias Fetch = @Sendable () throws(AuthError) -> [UInt8]

    private struct State {
        var keySet: JSONWebKeySet?
        var fetchedAt = -Double.infinity
        var lastAttempt = -Double.infinity
    }

    private let fetch: Fetch
    private let clock: @Sendable () -> Double
    private let cooldown: Double
    private let maximumAge: Double
    private let state = Locked(State())
    /// Held only while fetching, so lookups of known keys never wait for the network.
    private let fetchLock = Lock()

    public init(
        cooldown: Double = 30, maximumAge: Double = 600,
        clock: @escaping @Sendable () -> Double = Clock.unixTime, fetch: @escaping Fetch
    ) {
        self.fetch = fetch
        self.clock = clock
        self.cooldown = cooldown
        self.maximumAge = maximumAge
    }

    /// Fetches now; used at start so a bad JWKS configuration is reported early.
    @discardableResult
    public func load() throws(AuthError) -> JSONWebKeySet {
        let keySet = try JSONWebKeySet(document: try fetch())
        for reason in keySet.skipped { Log.warning("JWKS key skipped: \(reason)") }
        let now = clock()
        state.withLock {
            $0.keySet = keySet
            $0.fetchedAt = now
            $0.lastAttempt = now
        }
        return keySet
    }

    public func key(id: String) throws(AuthError) -> JSONWebKey {
        let (keySet, fetchedAt) = state.withLock { ($0.keySet, $0.fetchedAt) }
        if let key = keySet?.key(id: id) {
            if clock() - fetchedAt >= maximumAge, claimRefresh() {
                // Stale but usable: refresh on another thread, so this request never waits on it.
                DetachedThread.start(stackBytes: 256 << 10) { [self] in fetchLock.withLock { refresh() } }
            }
            return key
        }
        fetchLock.withLock {
            // Whoever held the lock may have just fetched: the claim then fails on the cooldown.
            if claimRefresh() { refresh() }
        }
        guard let key = state.withLock({ $0.keySet })?.key(id: id) else { throw .unknownKey }
        return key
    }

    /// At most one fetch per cooldown, however many requests ask.
    private func claimRefresh() -> Bool {
        let now = clock()
        return state.withLock {
            guard now - $0.lastAttempt >= cooldown else { return false }
            $0.lastAttempt = now
            return true
        }
    }

    private func refresh() {
        do throws(AuthError) {
            try load()
        } catch {
            Log.warning("JWKS refresh failed, keeping the cached keys: \(error)")
        }
    }
}

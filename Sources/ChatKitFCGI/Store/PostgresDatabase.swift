/// The PostgreSQL connections every request of this process shares: at most `poolSize`, each
/// lent to one store call (one transaction) and taken back. PostgreSQL allows a hundred
/// connections by default and hosted plans fewer, so hosts × pool must fit, however many worker
/// threads each host runs; a stream holds no connection while the model talks.
///
/// No state is kept on a connection between transactions (no session settings, no prepared
/// statements, no session locks), so the server may be behind PgBouncer in transaction pooling
/// mode. A connection that failed is closed, never lent again; the next request opens a new
/// one, so the database coming back needs no restart.
public final class PostgresDatabase: StoreDatabase {
    public struct Settings: Sendable {
        public var poolSize = 8
        /// How long a request waits for a free connection before it is told to come back later.
        public var poolWaitMilliseconds = 2_000
        /// 0: none.
        public var statementTimeoutMilliseconds = 10_000
        /// Unless the URL says otherwise (`connect_timeout`).
        public var connectTimeoutSeconds = 5

        public init() {}
    }

    let url: String
    let settings: Settings
    private let pool: ConnectionPool<PostgresConnection>

    public init(url: String, settings: Settings = Settings()) {
        self.url = url
        self.settings = settings
        pool = ConnectionPool(
            size: settings.poolSize, waitMilliseconds: settings.poolWaitMilliseconds,
            open: { try PostgresConnection(url: url, connectTimeoutSeconds: settings.connectTimeoutSeconds,
                                           applicationName: "chatkit-fcgi") },
            isBroken: { $0.isBroken }, isStillIdle: { $0.isStillIdle })
    }

    public func makeStore() throws -> any Store { PostgresStore(database: self) }

    /// Lends a connection to `body`: an idle one, or one opened now.
    func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        try pool.withConnection(body)
    }

    /// How many connections the server allows in all, and how many are open now (every host's,
    /// and everyone else's): what the pools of all hosts must fit in.
    public func serverConnections() throws -> (limit: Int, open: Int) {
        let rows = try transaction([PostgresStatement(
            "SELECT current_setting('max_connections')::int, (SELECT count(*) FROM pg_stat_activity)")])[0]
        return (Int(rows.integer(0, 0)), Int(rows.integer(0, 1)))
    }

    /// Runs `statements` as one transaction in one round trip (see `PostgresConnection.pipeline`)
    /// and returns their results. A pipeline without BEGIN is one implicit transaction that ends
    /// at its sync: committed whole, or on the first error rolled back whole, and two statements
    /// fewer for the server than BEGIN and COMMIT around it.
    @discardableResult
    func transaction(_ statements: [PostgresStatement]) throws -> [PostgresRows] {
        var framed: [PostgresStatement] = []
        if settings.statementTimeoutMilliseconds > 0 {
            // Local to the transaction: nothing outlives it on a pooled server connection.
            framed.append(PostgresStatement("SELECT set_config('statement_timeout', $1, true)",
                                            [.text(String(settings.statementTimeoutMilliseconds))]))
        }
        let skipped = framed.count
        framed += statements
        let results = try withConnection { try $0.pipeline(framed) }
        return Array(results[skipped...])
    }
}

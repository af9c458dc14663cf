import Glibc

/// Whether the process's limits can hold the concurrency it is configured for, and whether
/// what it hands out works on every host: what `check-config` warns about and `serve` logs at start.
public enum Capacity {
    /// Two descriptors per request (its FastCGI connection and its connection to the model),
    /// three per SQLite connection (database, WAL, shared memory; the readers, the writer, the
    /// checkpointer) or one per PostgreSQL connection, and a few of the process's own.
    public static func descriptorsNeeded(_ config: Config) -> Int {
        let database = config.database.isPostgres ? config.databasePoolSize : 3 * (config.databasePoolSize + 2)
        return 2 * config.maxRequests + database + 16
    }

    /// `openFileLimit`: the most descriptors the process may open (the hard limit: `serve`
    /// raises its soft limit to it). `backlogCap`: `net.core.somaxconn`, which caps every
    /// listen backlog.
    public static func warnings(for config: Config, openFileLimit: Int, backlogCap: Int?) -> [String] {
        var warnings: [String] = []
        let needed = descriptorsNeeded(config)
        if openFileLimit < needed {
            warnings.append("CHATKIT_MAX_REQUESTS=\(config.maxRequests) needs about \(needed) open files, but this process "
                            + "may open \(openFileLimit): raise LimitNOFILE= in the unit (or ulimit -n), or lower "
                            + "CHATKIT_MAX_REQUESTS")
        }
        if let backlogCap, backlogCap < config.listenBacklog {
            warnings.append("net.core.somaxconn (\(backlogCap)) caps the listen backlog below CHATKIT_LISTEN_BACKLOG="
                            + "\(config.listenBacklog) (and below a socket unit's Backlog=): raise the sysctl")
        }
        if config.urlSigningKey == nil, config.betterAuthSecret == nil {
            warnings.append("attachment URLs are signed with a key of this process only: they stop working on restart and "
                            + "on other hosts; set CHATKIT_URL_SIGNING_KEY (the same on every host)")
        }
        return warnings
    }

    /// The same for this process, as the system has it now.
    public static func warnings(for config: Config) -> [String] {
        var limit = rlimit()
        let openFiles = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Int(clamping: limit.rlim_max) : Int.max
        let somaxconn = (try? FileSystem.read("/proc/sys/net/core/somaxconn", limit: 64))
            .flatMap { Int(String(decoding: $0, as: UTF8.self).trimmed()) }
        return warnings(for: config, openFileLimit: openFiles, backlogCap: somaxconn)
    }
}

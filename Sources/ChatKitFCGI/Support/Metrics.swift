/// Counters, gauges and histograms, written out in Prometheus' text exposition format 0.0.4.
/// Each family keeps its series under a lock of its own; a series is named by its label values,
/// which callers keep few (faces, statuses, tools, error kinds: never user ids). Recording costs
/// a lock and a dictionary update, so it happens per request or per model call, never per chunk.
public final class MetricFamily: Sendable {
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    public let name: String
    let help: String
    let kind: Kind
    let labelNames: [String]
    /// Upper bounds, for a histogram.
    let buckets: [Double]
    /// Every series by its label values. A `Series` is changed only under this lock too.
    private let series = Locked<[[String]: Series]>([:])

    /// One series. A caller that always records the same labels keeps its `Series` and skips
    /// the lookup (`MetricFamily.series(_:)`).
    ///
    /// `@unchecked Sendable`: its fields change only under its family's lock.
    public final class Series: @unchecked Sendable {
        fileprivate var value = 0.0
        fileprivate var bucketCounts: [UInt64]
        fileprivate var count: UInt64 = 0

        fileprivate init(buckets: Int) {
            bucketCounts = Array(repeating: 0, count: buckets)
        }
    }

    init(_ name: String, _ kind: Kind, help: String, labels: [String] = [], buckets: [Double] = []) {
        self.name = name
        self.kind = kind
        self.help = help
        labelNames = labels
        self.buckets = buckets
    }

    /// The series with these label values, made now if need be.
    public func series(_ labels: [String] = []) -> Series {
        series.withLock { all in
            if let found = all[labels] { return found }
            let made = Series(buckets: buckets.count)
            all[labels] = made
            return made
        }
    }

    public func add(_ amount: Double = 1, labels: [String] = []) { add(amount, to: series(labels)) }
    public func set(_ value: Double, labels: [String] = []) { set(value, of: series(labels)) }
    public func observe(_ value: Double, labels: [String] = []) { observe(value, in: series(labels)) }

    public func add(_ amount: Double = 1, to one: Series) {
        series.withLock { _ in one.value += amount }
    }

    public func set(_ value: Double, of one: Series) {
        series.withLock { _ in one.value = value }
    }

    public func observe(_ value: Double, in one: Series) {
        let bucket = buckets.firstIndex(where: { value <= $0 })
        series.withLock { _ in
            if let bucket { one.bucketCounts[bucket] += 1 }
            one.value += value
            one.count += 1
        }
    }

    /// The value of one series (a histogram's sum), for tests and health checks.
    public func value(labels: [String] = []) -> Double {
        series.withLock { all in all[labels].map { $0.value } ?? 0 }
    }

    func write(to out: inout String) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n"
        let snapshot = series.withLock { all in
            all.map { labels, one in (labels, (value: one.value, bucketCounts: one.bucketCounts, count: one.count)) }
        }
        for (labels, one) in snapshot.sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) {
            let pairs = zip(labelNames, labels).map { "\($0)=\"\(Self.escape($1))\"" }
            guard kind == .histogram else {
                out += name + Self.braced(pairs) + " " + Self.number(one.value) + "\n"
                continue
            }
            var cumulative: UInt64 = 0
            for (bound, count) in zip(buckets, one.bucketCounts) {
                cumulative += count
                out += "\(name)_bucket\(Self.braced(pairs + ["le=\"\(Self.number(bound))\""])) \(cumulative)\n"
            }
            out += "\(name)_bucket\(Self.braced(pairs + ["le=\"+Inf\""])) \(one.count)\n"
            out += "\(name)_sum\(Self.braced(pairs)) \(Self.number(one.value))\n"
            out += "\(name)_count\(Self.braced(pairs)) \(one.count)\n"
        }
    }

    private static func braced(_ pairs: [String]) -> String { pairs.isEmpty ? "" : "{" + pairs.joined(separator: ",") + "}" }

    static func number(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }

    /// Label values escape backslash, double quote and line feed.
    static func escape(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}

/// A set of families, rendered together.
public final class MetricRegistry: Sendable {
    private let families = Locked<[MetricFamily]>([])

    public init() {}

    func register(_ family: MetricFamily) -> MetricFamily {
        families.withLock { $0.append(family) }
        return family
    }

    public func counter(_ name: String, _ help: String, labels: [String] = []) -> MetricFamily {
        register(MetricFamily(name, .counter, help: help, labels: labels))
    }

    public func gauge(_ name: String, _ help: String, labels: [String] = []) -> MetricFamily {
        register(MetricFamily(name, .gauge, help: help, labels: labels))
    }

    public func histogram(_ name: String, _ help: String, labels: [String] = [], buckets: [Double]) -> MetricFamily {
        register(MetricFamily(name, .histogram, help: help, labels: labels, buckets: buckets))
    }

    /// The exposition text, every family in the order registered.
    public func render() -> String {
        var out = ""
        for family in families.withLock({ $0 }) { family.write(to: &out) }
        return out
    }
}

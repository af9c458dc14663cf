import Glibc

/// What the responder counts, served at `GET /metrics`. The model call's names follow
/// OpenTelemetry's GenAI conventions (dots become underscores); the rest follow Prometheus'
/// naming. No label ever holds a user id, a conversation or anything else without bound.
public final class ServerMetrics: Sendable {
    private let registry = MetricRegistry()
    private static let seconds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

    let requests: MetricFamily
    let requestDuration: MetricFamily
    private let inflightStreams: MetricFamily
    private let inflightStreamsSeries: MetricFamily.Series
    private let requestsInFlight: MetricFamily
    let operationDuration: MetricFamily
    let timeToFirstChunk: MetricFamily
    let tokenUsage: MetricFamily
    let upstreamErrors: MetricFamily
    let upstreamRetries: MetricFamily
    let toolCalls: MetricFamily
    let rateLimited: MetricFamily
    private let process: ProcessMetrics

    public init() {
        requests = registry.counter("chatkit_requests_total", "Requests answered, by face and HTTP status.",
                                    labels: ["face", "status"])
        requestDuration = registry.histogram("chatkit_request_duration_seconds", "Time from a request's start to its end.",
                                             labels: ["face"], buckets: Self.seconds)
        inflightStreams = registry.gauge("chatkit_inflight_streams", "Event streams being written now.")
        inflightStreamsSeries = inflightStreams.series()
        requestsInFlight = registry.gauge(
            "chatkit_requests_in_flight", "Requests being served now, streams included (at most CHATKIT_MAX_REQUESTS).")
        operationDuration = registry.histogram(
            "gen_ai_client_operation_duration_seconds", "Duration of one chat completions call to the model server.",
            labels: ["gen_ai_request_model", "error_type"], buckets: Self.seconds)
        timeToFirstChunk = registry.histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds", "Time from a model call's start to its first chunk.",
            labels: ["gen_ai_request_model"], buckets: Self.seconds)
        tokenUsage = registry.counter("gen_ai_client_token_usage_total", "Tokens the model server reported using.",
                                      labels: ["gen_ai_token_type"])
        upstreamErrors = registry.counter("chatkit_upstream_errors_total", "Model calls that failed, by kind.",
                                          labels: ["error_type"])
        upstreamRetries = registry.counter("chatkit_upstream_retries_total", "Model calls sent again after a failure.")
        toolCalls = registry.counter("chatkit_tool_calls_total", "Tool runs, by tool and outcome.", labels: ["tool", "outcome"])
        rateLimited = registry.counter("chatkit_ratelimited_total", "Requests refused by a per-user limit, by limit.",
                                       labels: ["limit"])
        process = ProcessMetrics(registry)
    }

    /// An event stream began (+1) or ended (-1).
    func streamsChanged(by change: Double) { inflightStreams.add(change, to: inflightStreamsSeries) }

    func recordRequest(face: String, status: Int, seconds: Double) {
        requests.add(labels: [face, String(status)])
        requestDuration.observe(seconds, labels: [face])
    }

    /// The series a model's successful calls record into, looked up once by each client.
    struct ModelCallSeries {
        let duration: MetricFamily.Series
        let firstChunk: MetricFamily.Series
        let inputTokens: MetricFamily.Series
        let outputTokens: MetricFamily.Series
    }

    func modelCallSeries(model: String) -> ModelCallSeries {
        ModelCallSeries(duration: operationDuration.series([model, ""]), firstChunk: timeToFirstChunk.series([model]),
                        inputTokens: tokenUsage.series(["input"]), outputTokens: tokenUsage.series(["output"]))
    }

    /// One model call, as `ModelClient` saw it.
    func recordModelCall(_ series: ModelCallSeries, model: String, seconds: Double, firstChunkAfter: Double?,
                         usage: ChatCompletionChunk.Usage, failure: ModelError?) {
        if let failure {
            operationDuration.observe(seconds, labels: [model, failure.kind])
            if failure != .cancelled { upstreamErrors.add(labels: [failure.kind]) }
        } else {
            operationDuration.observe(seconds, in: series.duration)
        }
        if let firstChunkAfter { timeToFirstChunk.observe(firstChunkAfter, in: series.firstChunk) }
        if usage.promptTokens > 0 { tokenUsage.add(Double(usage.promptTokens), to: series.inputTokens) }
        if usage.completionTokens > 0 { tokenUsage.add(Double(usage.completionTokens), to: series.outputTokens) }
    }

    /// The exposition text; the gauges read at scrape time are read now.
    public func render(requestsInFlight inFlight: Int) -> String {
        requestsInFlight.set(Double(inFlight))
        process.update()
        return registry.render()
    }
}

extension ModelError {
    /// A short, bounded name for the kind of failure (OpenTelemetry's `error.type`).
    var kind: String {
        switch self {
        case .unreachable: "unreachable"
        case .timedOut: "timeout"
        case .http(let status, _, _): status == 429 ? "rate_limited" : status >= 500 ? "server_error" : "http_\(status)"
        case .streamError: "stream_error"
        case .cancelled: "cancelled"
        }
    }
}

/// Prometheus' usual process figures, read from /proc when scraped.
private final class ProcessMetrics: Sendable {
    private let residentMemory: MetricFamily
    private let virtualMemory: MetricFamily
    private let openFileDescriptors: MetricFamily
    private let maxFileDescriptors: MetricFamily
    private let cpuSeconds: MetricFamily
    private let startTime: MetricFamily
    private let started = Clock.unixTime()

    init(_ registry: MetricRegistry) {
        residentMemory = registry.gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
        virtualMemory = registry.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
        openFileDescriptors = registry.gauge("process_open_fds", "Number of open file descriptors.")
        maxFileDescriptors = registry.gauge("process_max_fds", "Maximum number of open file descriptors.")
        cpuSeconds = registry.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
        startTime = registry.gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
    }

    func update() {
        startTime.set(started)
        var usage = rusage()
        if getrusage(RUSAGE_SELF.rawValue, &usage) == 0 {
            let user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            let system = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
            cpuSeconds.set(user + system)
        }
        // statm: sizes in pages, virtual first, then resident.
        if let statm = try? FileSystem.read("/proc/self/statm") {
            let fields = String(decoding: statm, as: UTF8.self).split(separator: " ").compactMap { Double($0) }
            let page = Double(sysconf(Int32(_SC_PAGESIZE)))
            if fields.count >= 2 {
                virtualMemory.set(fields[0] * page)
                residentMemory.set(fields[1] * page)
            }
        }
        if let directory = opendir("/proc/self/fd") {
            var count = 0
            while readdir(directory) != nil { count += 1 }
            closedir(directory)
            openFileDescriptors.set(Double(max(0, count - 3)))  // ".", "..", and the directory itself
        }
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 { maxFileDescriptors.set(Double(limit.rlim_cur)) }
    }
}

import ChatKitFCGI
import Glibc

// The benchmark's load generator: Tests/Benchmarks/bench.py runs one per phase, with the
// phase's settings as a JSON object on standard input, and reads one line per request from
// standard output (`ok TTFT TOTAL CONNECT` in nanoseconds, or `error REASON`), then one
// `slot RATE` line per stream slot (its completed requests per second of its own running time).
//
// Native code on epoll because the client shares the benchmark's two cores with nginx, the
// responder and the mock: the asyncio client it replaced needed 0.3 ms of CPU per stream.

func readSettings() -> LoadSettings? {
    var input: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let count = read(0, &chunk, chunk.count)
        if count <= 0 { break }
        input += chunk[..<count]
    }
    guard let json = try? JSON.parse(input),
        let port = json["port"]?.intValue.flatMap(UInt16.init(exactly:)),
        let request = json["request"]?.stringValue,
        let concurrency = json["concurrency"]?.intValue, concurrency > 0,
        let requestsPerSlot = json["requests_per_slot"]?.intValue, requestsPerSlot > 0,
        let expectedRecords = json["expected_records"]?.intValue,
        let lastRecord = json["last_record"]?.stringValue,
        let timeout = json["timeout_s"]?.doubleValue, timeout > 0
    else { return nil }
    let seconds = json["seconds"]?.doubleValue, stagger = json["stagger_s"]?.doubleValue ?? 0
    guard seconds.map({ $0 >= 0 }) != false, stagger >= 0 else { return nil }
    let now = Clock.monotonicNanoseconds()
    return LoadSettings(
        port: port, request: Array(request.utf8), concurrency: concurrency, requestsPerSlot: requestsPerSlot,
        deadline: seconds.map { now + UInt64($0 * 1e9) }, staggerNanoseconds: UInt64(stagger * 1e9),
        expectedRecords: expectedRecords, lastRecord: Array(lastRecord.utf8), timeoutNanoseconds: UInt64(timeout * 1e9))
}

func writeAll(_ text: String, to fd: Int32) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return }
        bytes = bytes.dropFirst(count)
    }
}

guard let settings = readSettings() else {
    writeAll("""
        bench-client: expected a JSON object on standard input with port, request, concurrency and
        requests_per_slot (positive), expected_records, last_record and timeout_s (positive);
        optional: seconds and stagger_s (not negative)

        """, to: 2)
    exit(2)
}
signal(SIGPIPE, SIG_IGN)
let generator = LoadGenerator(settings: settings)
generator.run()
var report = ""
for outcome in generator.outcomes {
    switch outcome {
    case .completed(let ttft, let total, let connect): report += "ok \(ttft) \(total) \(connect)\n"
    case .failed(let reason): report += "error \(reason)\n"
    }
}
for rate in generator.slotRates { report += "slot \(rate)\n" }
writeAll(report, to: 1)

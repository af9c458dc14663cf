/// Writes Server-Sent Event records to a response, each flushed as soon as it exists. Records
/// that come into being together (a lazily written head with its first record, the events that
/// open an item) may leave in one write: `flush: false` holds a record for the next send.
/// One buffer is reused for every record: this is the per-token path.
///
/// Used by one thread at a time: the worker before and after a model call, the transfer loop
/// (through the face's stream observer) during it.
public final class SSEWriter {
    private let writer: ResponseWriter
    private var buffer: [UInt8] = []
    public private(set) var clientGone = false
    private var lastWriteMilliseconds = Clock.monotonicMilliseconds()

    /// What the record buffer keeps between records (malloc rounds the 1 KiB asked for up). One
    /// larger record (a new thread's first items) gets a buffer of its own, not kept for as long
    /// as the stream lasts.
    private let keptCapacity: Int

    public init(writer: ResponseWriter) {
        self.writer = writer
        buffer.reserveCapacity(1024)
        keptCapacity = buffer.capacity
    }

    public static let headers: [(String, String)] = [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    ]

    public var started: Bool { writer.headWritten }

    public func start(extraHeaders: [(String, String)] = []) {
        guard !writer.headWritten else { return }
        writer.writeHead(status: 200, headers: Self.headers + extraHeaders)
    }

    /// `data: <payload>\n\n`, the payload written by `payload` straight into the record buffer.
    @discardableResult
    public func send(flush: Bool = true, _ payload: (inout [UInt8]) -> Void) -> Bool {
        buffer.append(contentsOf: "data: ".utf8)
        payload(&buffer)
        buffer.append(contentsOf: "\n\n".utf8)
        return flush ? self.flush() : !clientGone
    }

    /// For a payload that is already one line of JSON.
    @discardableResult
    public func send(payload: [UInt8], flush: Bool = true) -> Bool {
        send(flush: flush) { $0.append(contentsOf: payload) }
    }

    @discardableResult
    public func send(_ json: JSON, flush: Bool = true) -> Bool {
        send(flush: flush) { json.write(to: &$0) }
    }

    /// True when nothing was written for `seconds`: time for a keepalive.
    public func isQuiet(for seconds: Int) -> Bool {
        Clock.monotonicMilliseconds() - lastWriteMilliseconds >= Double(seconds) * 1000
    }

    /// A comment record: ignored by clients, but it keeps nginx and proxies from timing out.
    @discardableResult
    public func keepalive() -> Bool {
        buffer.append(contentsOf: ": keepalive\n\n".utf8)
        return flush()
    }

    @discardableResult
    public func done() -> Bool { send(payload: Self.donePayload) }

    private static let donePayload = Array("[DONE]".utf8)

    private func flush() -> Bool {
        defer {
            if buffer.capacity > keptCapacity {
                buffer = []
                buffer.reserveCapacity(keptCapacity)
            } else {
                buffer.removeAll(keepingCapacity: true)
            }
        }
        guard !clientGone else { return false }
        if !writer.write(buffer) { clientGone = true }
        lastWriteMilliseconds = Clock.monotonicMilliseconds()
        return !clientGone
    }
}

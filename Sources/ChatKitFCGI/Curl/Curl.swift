import CCurl
import Glibc

/// The one place that talks to libcurl.
public enum Curl {
    /// Must run once, before any thread starts (libcurl's global init is not thread-safe).
    public static func globalInit() {
        precondition(ccurl_global_init() == CURLE_OK, "curl_global_init failed")
    }
}

/// DNS answers and TLS sessions shared by every thread's handle, so a thread whose connection
/// went idle resumes a TLS session instead of a full handshake. (libcurl does not support
/// sharing the connections themselves across threads.)
///
/// `@unchecked Sendable`: libcurl serialises its use of the share through the lock callbacks,
/// one pthread mutex per kind of data; nothing else touches it after `init`.
private final class CurlShare: @unchecked Sendable {
    static let shared = CurlShare()

    let handle: UnsafeMutableRawPointer
    private let locks: UnsafeMutablePointer<pthread_mutex_t>
    private static let lockCount = Int(CURL_LOCK_DATA_LAST.rawValue)

    private init() {
        guard let handle = curl_share_init() else { fatalError("libcurl could not allocate a share") }
        self.handle = handle
        locks = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: Self.lockCount)
        for index in 0..<Self.lockCount { pthread_mutex_init(locks + index, nil) }
        let context = Unmanaged.passUnretained(self).toOpaque()
        _ = ccurl_share_setopt_pointer(handle, CURLSHOPT_USERDATA, context)
        _ = ccurl_share_setopt_lock_function(handle) { _, data, _, context in
            if let mutex = Unmanaged<CurlShare>.fromOpaque(context!).takeUnretainedValue().lock(data) {
                pthread_mutex_lock(mutex)
            }
        }
        _ = ccurl_share_setopt_unlock_function(handle) { _, data, context in
            if let mutex = Unmanaged<CurlShare>.fromOpaque(context!).takeUnretainedValue().lock(data) {
                pthread_mutex_unlock(mutex)
            }
        }
        _ = ccurl_share_setopt_long(handle, CURLSHOPT_SHARE, Int(CURL_LOCK_DATA_DNS.rawValue))
        _ = ccurl_share_setopt_long(handle, CURLSHOPT_SHARE, Int(CURL_LOCK_DATA_SSL_SESSION.rawValue))
    }

    private func lock(_ data: curl_lock_data) -> UnsafeMutablePointer<pthread_mutex_t>? {
        let index = Int(data.rawValue)
        return index < Self.lockCount ? locks + index : nil
    }
}

/// Why a transfer produced no usable response.
public enum TransferError: Error, Equatable, CustomStringConvertible {
    /// libcurl's own failure: DNS, connect, TLS.
    case transport(String)
    /// The connect timeout, the stall timeout or the total timeout ran out.
    case timedOut(String)
    /// The watched descriptor became readable: our client went away.
    case watchedDescriptorReady
    /// The body consumer or the tick asked to stop.
    case stopped

    public var description: String {
        switch self {
        case .transport(let message), .timedOut(let message): message
        case .watchedDescriptorReady: "client disconnected"
        case .stopped: "stopped"
        }
    }
}

public struct HTTPResponseHead {
    public var status = 0
    /// Lower-cased names.
    public var headers: [String: String] = [:]
}

/// One easy handle, reused for every request a worker thread makes. Its transfers run on the
/// process's transfer loop; connections to the model API stay alive in the loop's connection
/// cache, shared by every worker.
///
/// Not thread-safe: each worker owns one.
public final class HTTPClient {
    private let easy: UnsafeMutableRawPointer

    public init() {
        guard let easy = curl_easy_init() else { fatalError("libcurl could not allocate a handle") }
        self.easy = easy
    }

    deinit { curl_easy_cleanup(easy) }

    public struct Request {
        public var url: String
        public var method = "GET"
        public var headers: [String] = []
        public var body: [UInt8]?
        public var connectTimeoutMilliseconds = 5_000
        /// Abort when the server sends nothing for this long (timed by the transfer loop).
        public var stallTimeoutSeconds = 60
        /// Hard cap on the whole transfer; 0 means none (a model may stream for minutes).
        public var totalTimeoutMilliseconds = 0

        public init(url: String) { self.url = url }
    }

    /// Performs `request`, handing the response to `consumer` as it arrives. The calling
    /// thread waits while the transfer loop runs it; `consumer` is called on the loop's thread.
    public func perform(_ request: Request, into consumer: some TransferConsumer, tickMilliseconds: Int32 = 100)
        throws(TransferError) -> HTTPResponseHead
    {
        let transfer = Transfer(
            easy: easy, consumer: consumer, tickMilliseconds: Double(tickMilliseconds),
            stallTimeoutMilliseconds: Double(request.stallTimeoutSeconds) * 1000)
        try configure(request, for: transfer)
        if let failure = TransferLoop.shared.run(transfer) { throw failure }
        return transfer.head
    }

    private func configure(_ request: Request, for transfer: Transfer) throws(TransferError) {
        curl_easy_reset(easy)  // drops the last request's options
        var code = ccurl_setopt_string(easy, CURLOPT_URL, request.url)
        func set(_ option: CURLoption, _ value: Int) {
            if code == CURLE_OK { code = ccurl_setopt_long(easy, option, value) }
        }
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeoutMilliseconds)
        // The stall timeout is the transfer loop's: libcurl's low-speed check averages over a
        // window and fires seconds late.
        set(CURLOPT_TIMEOUT_MS, request.totalTimeoutMilliseconds)
        set(CURLOPT_TCP_NODELAY, 1)
        set(CURLOPT_FOLLOWLOCATION, 0)
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_SHARE, CurlShare.shared.handle) }
        if code == CURLE_OK, request.method != "GET" { code = ccurl_setopt_string(easy, CURLOPT_CUSTOMREQUEST, request.method) }
        if let body = request.body {
            set(CURLOPT_POSTFIELDSIZE_LARGE, body.count)
            // COPYPOSTFIELDS: libcurl keeps its own copy, so the array may go away. An empty
            // array may have no storage at all; an empty C string stands in for it.
            if code == CURLE_OK {
                code = body.isEmpty
                    ? ccurl_setopt_string(easy, CURLOPT_COPYPOSTFIELDS, "")
                    : body.withUnsafeBytes { ccurl_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0.baseAddress!)) }
            }
        }
        for header in request.headers { transfer.headerList = curl_slist_append(transfer.headerList, header) }
        if code == CURLE_OK { code = ccurl_setopt_slist(easy, CURLOPT_HTTPHEADER, transfer.headerList) }
        let context = Unmanaged.passUnretained(transfer).toOpaque()
        if code == CURLE_OK { code = ccurl_setopt_write_function(easy, CURLOPT_WRITEFUNCTION, transferWriteBody) }
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_WRITEDATA, context) }
        if code == CURLE_OK { code = ccurl_setopt_write_function(easy, CURLOPT_HEADERFUNCTION, transferWriteHeader) }
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_HEADERDATA, context) }
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_PRIVATE, context) }
        guard code == CURLE_OK else { throw .transport(String(cString: curl_easy_strerror(code))) }
    }
}

/// Where a transfer's response goes. Its methods run on the transfer loop's thread, while the
/// thread that called `perform` waits for the transfer to end.
public protocol TransferConsumer: AnyObject {
    /// Our client's socket: the transfer stops when it becomes readable (the client went away).
    var watchedDescriptor: Int32? { get }
    /// Whether the consumer can write to its client now without blocking. While it says no,
    /// body bytes are held back (the download pauses) until `watchedDescriptor` polls writable,
    /// and a pause longer than the stall timeout ends the transfer.
    var outputHasRoom: Bool { get }
    /// About every `tickMilliseconds`, told whether the client can take a write now; false
    /// stops the transfer.
    func tick(outputHasRoom: Bool) -> Bool
    /// Before the first body byte, or at the end for a response without a body.
    func head(_ head: HTTPResponseHead)
    /// False stops the transfer.
    func body(_ bytes: UnsafeRawBufferPointer) -> Bool
}

extension TransferConsumer {
    public var watchedDescriptor: Int32? { nil }
    public var outputHasRoom: Bool { true }
    public func tick(outputHasRoom: Bool) -> Bool { true }
    public func head(_ head: HTTPResponseHead) {}
}

/// One transfer, from the caller's thread to the loop's and back. libcurl's C callbacks reach
/// it through an unretained pointer; `perform` keeps it alive until the loop hands it back.
///
/// `@unchecked Sendable`: the caller configures it, then waits on `done` while the loop alone
/// uses it; the loop's last act is to drop the consumer and signal `done`.
final class Transfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    let watch: Int32?
    let tickMilliseconds: Double
    let stallTimeoutMilliseconds: Double
    private var consumer: (any TransferConsumer)?
    var headerList: UnsafeMutablePointer<curl_slist>?
    var head = HTTPResponseHead()
    var headReported = false
    var stopRequested = false
    /// Paused because `watch` could not take more output.
    var awaitingOutput = false
    var pausedSince = 0.0
    /// When the server last sent anything, head or body (monotonic milliseconds).
    var lastHeard = 0.0
    var nextTick = 0.0
    /// The loop's number for this transfer's registration of `watch`.
    var registration: UInt32 = 0
    var failure: TransferError?
    private let done = Semaphore()

    init(easy: UnsafeMutableRawPointer, consumer: any TransferConsumer, tickMilliseconds: Double,
         stallTimeoutMilliseconds: Double) {
        self.easy = easy
        self.consumer = consumer
        watch = consumer.watchedDescriptor
        self.tickMilliseconds = tickMilliseconds
        self.stallTimeoutMilliseconds = stallTimeoutMilliseconds
    }

    deinit {
        headerList.map { curl_slist_free_all($0) }
    }

    func waitUntilDone() { done.wait() }

    /// On the loop's thread: the last thing it does with this transfer.
    func markDone(failure: TransferError?) {
        if failure == nil { reportHeadIfNeeded() }
        self.failure = failure
        consumer = nil
        done.signal()
    }

    func tick(outputHasRoom: Bool) -> Bool { consumer?.tick(outputHasRoom: outputHasRoom) ?? false }

    /// One header line, read as bytes: this runs for every line of every model response.
    func header(_ line: UnsafeRawBufferPointer) {
        lastHeard = Clock.monotonicMilliseconds()
        if line.starts(with: "HTTP/".utf8) {
            head = HTTPResponseHead()  // a new response (after 100-continue, say)
            return
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return }
        var value = line[(colon + 1)...]
        let isSpace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0A }
        while let first = value.first, isSpace(first) { value = value.dropFirst() }
        while let last = value.last, isSpace(last) { value = value.dropLast() }
        head.headers[String(decoding: line[..<colon], as: UTF8.self).lowercased()] = String(decoding: value, as: UTF8.self)
    }

    /// Called before the first body byte, or at the end for a response without a body.
    private func reportHeadIfNeeded() {
        guard !headReported else { return }
        headReported = true
        var status = 0
        _ = ccurl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
        head.status = status
        consumer?.head(head)
    }

    /// True when the consumer can write to our client now without blocking the loop.
    var outputHasRoom: Bool { consumer?.outputHasRoom ?? true }

    /// The number of bytes taken, 0 to abort, or CURL_WRITEFUNC_PAUSE to be called again with
    /// the same bytes once `watch` has room.
    func body(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastHeard = Clock.monotonicMilliseconds()
        guard outputHasRoom else {
            guard TransferLoop.shared.awaitOutput(for: self) else {
                stopRequested = true
                return 0
            }
            return Int(CURL_WRITEFUNC_PAUSE)
        }
        reportHeadIfNeeded()
        if consumer?.body(bytes) != true { stopRequested = true }
        return stopRequested ? 0 : bytes.count
    }
}

private let transferWriteBody: curl_write_callback = { data, size, count, context in
    let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
    return transfer.body(UnsafeRawBufferPointer(start: data, count: size * count))
}

private let transferWriteHeader: curl_write_callback = { data, size, count, context in
    let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
    let length = size * count
    transfer.header(UnsafeRawBufferPointer(start: data, count: length))
    return length
}

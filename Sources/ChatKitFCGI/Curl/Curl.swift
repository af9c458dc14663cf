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

/// One easy handle, reused for every call one request makes. Its transfers run on the process's
/// transfer loop; connections to the model API stay alive in the loop's connection cache,
/// shared by every request.
///
/// Not thread-safe: used by one request at a time.
public final class HTTPClient {
    private let easy: UnsafeMutableRawPointer

    /// Handles of finished requests, for the next ones: making and cleaning up one cost about
    /// 12,000 instructions, 1% of a request. A few are kept, not one per stream of the peak.
    private static let idleHandles = Locked<[UnsafeMutableRawPointer]>([])
    private static let idleHandleLimit = 64

    public init() {
        guard let easy = Self.idleHandles.withLock({ $0.popLast() }) ?? curl_easy_init() else {
            fatalError("libcurl could not allocate a handle")
        }
        self.easy = easy
    }

    deinit {
        let kept = Self.idleHandles.withLock { idle in
            guard idle.count < Self.idleHandleLimit else { return false }
            idle.append(easy)
            return true
        }
        if !kept { curl_easy_cleanup(easy) }
    }

    /// A request body libcurl reads where it lies (`CURLOPT_POSTFIELDS`, not a copy of its
    /// own): one copy of it per call, however often the call is sent, held by each transfer.
    public final class Body {
        let bytes: UnsafeMutableRawBufferPointer

        public init(_ source: [UInt8]) {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(source.count, 1), alignment: 1)
            source.withUnsafeBytes { copy.copyMemory(from: $0) }
            bytes = copy
            count = source.count
        }

        public let count: Int

        deinit { bytes.deallocate() }
    }

    /// One field of a `multipart/form-data` body.
    public struct FormField {
        public var name: String
        public var bytes: [UInt8]
        public var filename: String?
        public var contentType: String?

        public init(name: String, bytes: [UInt8], filename: String? = nil, contentType: String? = nil) {
            self.name = name
            self.bytes = bytes
            self.filename = filename
            self.contentType = contentType
        }
    }

    public struct Request {
        public var url: String
        public var method = "GET"
        public var headers: [String] = []
        public var body: Body?
        /// A `multipart/form-data` body instead, built by libcurl's MIME API.
        public var form: [FormField] = []
        public var connectTimeoutMilliseconds = 5_000
        /// Abort when the server sends nothing for this long (timed by the transfer loop).
        public var stallTimeoutSeconds = 60
        /// Hard cap on the whole transfer; 0 means none (a model may stream for minutes).
        public var totalTimeoutMilliseconds = 0

        public init(url: String) { self.url = url }
    }

    /// Performs `request`, handing the response to `consumer` as it arrives, on the transfer
    /// loop's thread. The calling task holds no thread until the transfer ends.
    public func perform(_ request: Request, into consumer: some TransferConsumer, tickMilliseconds: Int32 = 100)
        async throws(TransferError) -> HTTPResponseHead
    {
        let transfer = try transfer(request, into: consumer, tickMilliseconds: tickMilliseconds)
        if let failure = await TransferLoop.shared.run(transfer) { throw failure }
        return transfer.head
    }

    /// The same for a caller that cannot suspend (the token verifier's key fetch, rare and
    /// short): its thread waits.
    public func performWaiting(_ request: Request, into consumer: some TransferConsumer) throws(TransferError) -> HTTPResponseHead {
        let transfer = try transfer(request, into: consumer, tickMilliseconds: 100)
        if let failure = TransferLoop.shared.runWaiting(transfer) { throw failure }
        return transfer.head
    }

    private func transfer(_ request: Request, into consumer: some TransferConsumer, tickMilliseconds: Int32)
        throws(TransferError) -> Transfer
    {
        let transfer = Transfer(
            easy: easy, consumer: consumer, tickMilliseconds: Double(tickMilliseconds),
            stallTimeoutMilliseconds: Double(request.stallTimeoutSeconds) * 1000)
        try configure(request, for: transfer)
        return transfer
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
        // The most libcurl reads from the server at once, and what it holds for it while the
        // transfer lives: a streamed answer's records are a few hundred bytes each, and every
        // open stream holds one (the default is 16 KiB).
        set(CURLOPT_BUFFERSIZE, 2048)
        if let body = request.body {
            set(CURLOPT_POSTFIELDSIZE_LARGE, body.count)
            if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_POSTFIELDS, body.bytes.baseAddress!) }
            transfer.body = body
        }
        if !request.form.isEmpty, code == CURLE_OK {
            guard let form = curl_mime_init(easy) else { throw .transport("libcurl could not allocate a form") }
            transfer.form = form
            for field in request.form where code == CURLE_OK {
                let part = curl_mime_addpart(form)
                code = curl_mime_name(part, field.name)
                // Copied by libcurl.
                if code == CURLE_OK { code = field.bytes.withUnsafeBytes { curl_mime_data(part, $0.baseAddress, $0.count) } }
                if code == CURLE_OK, let filename = field.filename { code = curl_mime_filename(part, filename) }
                if code == CURLE_OK, let type = field.contentType { code = curl_mime_type(part, type) }
            }
            if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_MIMEPOST, UnsafeMutableRawPointer(form)) }
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
/// caller of `perform` waits for the transfer to end.
public protocol TransferConsumer: AnyObject {
    /// Our client's socket: the transfer stops when it becomes readable (the client went away).
    var watchedDescriptor: Int32? { get }
    /// Whether the consumer can write to its client now without blocking. While it says no,
    /// body bytes are held back (the download pauses) until `watchedDescriptor` polls writable,
    /// and a pause longer than the stall timeout ends the transfer.
    var outputHasRoom: Bool { get }
    /// About every `tickMilliseconds`, able to ask whether the client can take a write now;
    /// false stops the transfer.
    func tick(outputHasRoom: @autoclosure () -> Bool) -> Bool
    /// Before the first body byte, or at the end for a response without a body.
    func head(_ head: HTTPResponseHead)
    /// False stops the transfer.
    func body(_ bytes: UnsafeRawBufferPointer) -> Bool
}

/// A whole response body, up to `limit` bytes: past it the transfer stops.
public final class CollectedBody: TransferConsumer {
    public let limit: Int
    public private(set) var bytes: [UInt8] = []
    public var exceededLimit: Bool { bytes.count > limit }

    public init(limit: Int) { self.limit = limit }

    public func body(_ chunk: UnsafeRawBufferPointer) -> Bool {
        bytes.append(contentsOf: chunk)
        return !exceededLimit
    }
}

extension TransferConsumer {
    public var watchedDescriptor: Int32? { nil }
    public var outputHasRoom: Bool { true }
    public func tick(outputHasRoom: @autoclosure () -> Bool) -> Bool { true }
    public func head(_ head: HTTPResponseHead) {}
}

/// One transfer, from the caller to the loop's thread and back. libcurl's C callbacks reach it
/// through an unretained pointer; `perform` keeps it alive until the loop hands it back.
///
/// `@unchecked Sendable`: the caller configures it, then waits for `whenDone` while the loop
/// alone uses it; the loop's last act is to drop the consumer and call `whenDone`.
final class Transfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    let watch: Int32?
    let tickMilliseconds: Double
    let stallTimeoutMilliseconds: Double
    private var consumer: (any TransferConsumer)?
    var headerList: UnsafeMutablePointer<curl_slist>?
    /// Read by libcurl in place until the transfer ends.
    var body: HTTPClient.Body?
    /// A form body (`CURLOPT_MIMEPOST`). Freeing it also unbinds it from the easy handle, which
    /// outlives the transfer: its client holds the handle for the whole request.
    var form: OpaquePointer?
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
    /// Set by the caller before it hands the transfer to the loop.
    var whenDone: (@Sendable (TransferError?) -> Void)?
    /// Held by the loop's last act with the transfer and taken by the caller's first after its
    /// wait: so everything the loop did (the consumer's reading included) is ordered before
    /// what the caller reads, in terms ThreadSanitizer sees too. (A resumed task is ordered by
    /// the concurrency runtime's atomics, which it does not see.)
    private let handBack = Lock()

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
        form.map { curl_mime_free($0) }
    }

    /// On the loop's thread: the last thing it does with this transfer.
    func markDone(failure: TransferError?) {
        let done = handBack.withLock {
            if failure == nil { reportHeadIfNeeded() }
            self.failure = failure
            consumer = nil
            // Taken first: once called, the caller may go on with the transfer on another thread.
            defer { whenDone = nil }
            return whenDone
        }
        done?(failure)
    }

    /// The caller's first act after its wait.
    func takeBack() { handBack.withLock {} }

    func tick(outputHasRoom: @autoclosure () -> Bool) -> Bool { consumer?.tick(outputHasRoom: outputHasRoom()) ?? false }

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

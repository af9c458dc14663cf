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
        /// Abort when fewer than one byte per second arrives for this long.
        public var stallTimeoutSeconds = 60
        /// Hard cap on the whole transfer; 0 means none (a model may stream for minutes).
        public var totalTimeoutMilliseconds = 0

        public init(url: String) { self.url = url }
    }

    /// Performs `request`, handing body bytes to `onBody` as they arrive; the calling thread
    /// waits while the transfer loop runs it, and the callbacks run on the loop's thread.
    ///
    /// `watch` is our client's socket: the transfer stops when it becomes readable (the client
    /// went away). `outputHasRoom` says whether the callbacks can write to it now without
    /// blocking; while it says no, body bytes are held back (the download pauses) until `watch`
    /// polls writable, and a pause longer than the stall timeout ends the transfer. `onTick` runs about
    /// every `tickMilliseconds`, told whether `watch` can take a write now; `onBody` or `onTick`
    /// returning false aborts the transfer.
    public func perform(
        _ request: Request,
        watch: Int32? = nil,
        outputHasRoom: () -> Bool = { true },
        tickMilliseconds: Int32 = 100,
        onTick: (_ outputHasRoom: Bool) -> Bool = { _ in true },
        onHead: (HTTPResponseHead) -> Void = { _ in },
        onBody: (UnsafeRawBufferPointer) -> Bool
    ) throws(TransferError) -> HTTPResponseHead {
        try withoutActuallyEscaping(onBody) { onBody throws(TransferError) in
            try withoutActuallyEscaping(onHead) { onHead throws(TransferError) in
                try withoutActuallyEscaping(onTick) { onTick throws(TransferError) in
                    try withoutActuallyEscaping(outputHasRoom) { outputHasRoom throws(TransferError) in
                        let transfer = Transfer(
                            easy: easy, watch: watch, tickMilliseconds: Double(tickMilliseconds),
                            stallTimeoutMilliseconds: Double(request.stallTimeoutSeconds) * 1000,
                            callbacks: .init(outputHasRoom: outputHasRoom, onTick: onTick, onHead: onHead, onBody: onBody))
                        try configure(request, for: transfer)
                        if let failure = TransferLoop.shared.run(transfer) { throw failure }
                        return transfer.head
                    }
                }
            }
        }
    }

    private func configure(_ request: Request, for transfer: Transfer) throws(TransferError) {
        curl_easy_reset(easy)  // drops the last request's options
        var code = ccurl_setopt_string(easy, CURLOPT_URL, request.url)
        func set(_ option: CURLoption, _ value: Int) {
            if code == CURLE_OK { code = ccurl_setopt_long(easy, option, value) }
        }
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeoutMilliseconds)
        set(CURLOPT_LOW_SPEED_LIMIT, 1)
        set(CURLOPT_LOW_SPEED_TIME, request.stallTimeoutSeconds)
        set(CURLOPT_TIMEOUT_MS, request.totalTimeoutMilliseconds)
        set(CURLOPT_TCP_NODELAY, 1)
        set(CURLOPT_FOLLOWLOCATION, 0)
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_SHARE, CurlShare.shared.handle) }
        if code == CURLE_OK, request.method != "GET" { code = ccurl_setopt_string(easy, CURLOPT_CUSTOMREQUEST, request.method) }
        if let body = request.body {
            set(CURLOPT_POSTFIELDSIZE_LARGE, body.count)
            // COPYPOSTFIELDS: libcurl keeps its own copy, so the array may go away.
            if code == CURLE_OK {
                code = body.withUnsafeBytes { ccurl_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!)) }
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

/// One transfer, from the caller's thread to the loop's and back. libcurl's C callbacks reach
/// it through an unretained pointer; `perform` keeps it alive until the loop hands it back.
///
/// `@unchecked Sendable`: the caller configures it, then waits on `done` while the loop alone
/// uses it; the loop drops every reference to it before posting `done`.
final class Transfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    let watch: Int32?
    let tickMilliseconds: Double
    let stallTimeoutMilliseconds: Double
    /// The caller's closures, which `perform` lets escape only until the transfer is done:
    /// dropped before the caller wakes, whatever else still holds this object.
    private var callbacks: Callbacks?
    var headerList: UnsafeMutablePointer<curl_slist>?
    var head = HTTPResponseHead()
    var headReported = false
    var stopRequested = false
    /// Paused because `watch` could not take more output.
    var awaitingOutput = false
    var pausedSince = 0.0
    var nextTick = 0.0
    /// The loop's number for this transfer's registration of `watch`.
    var registration: UInt32 = 0
    var failure: TransferError?
    private let done = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

    init(easy: UnsafeMutableRawPointer, watch: Int32?, tickMilliseconds: Double, stallTimeoutMilliseconds: Double,
         callbacks: Callbacks) {
        self.easy = easy
        self.watch = watch
        self.tickMilliseconds = tickMilliseconds
        self.stallTimeoutMilliseconds = stallTimeoutMilliseconds
        self.callbacks = callbacks
        sem_init(done, 0, 0)
    }

    struct Callbacks {
        let outputHasRoom: () -> Bool
        let onTick: (Bool) -> Bool
        let onHead: (HTTPResponseHead) -> Void
        let onBody: (UnsafeRawBufferPointer) -> Bool
    }

    deinit {
        headerList.map { curl_slist_free_all($0) }
        sem_destroy(done)
        done.deallocate()
    }

    func waitUntilDone() { while sem_wait(done) != 0 {} }

    /// On the loop's thread: the last thing it does with this transfer.
    func markDone(failure: TransferError?) {
        if failure == nil { reportHeadIfNeeded() }
        self.failure = failure
        callbacks = nil
        sem_post(done)
    }

    func tick(outputHasRoom: Bool) -> Bool { callbacks?.onTick(outputHasRoom) ?? false }

    /// One header line, read as bytes: this runs for every line of every model response.
    func header(_ line: UnsafeRawBufferPointer) {
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
        callbacks?.onHead(head)
    }

    /// True when the callbacks can write to our client now without blocking the loop.
    var outputHasRoom: Bool { callbacks?.outputHasRoom() ?? true }

    /// The number of bytes taken, 0 to abort, or CURL_WRITEFUNC_PAUSE to be called again with
    /// the same bytes once `watch` has room.
    func body(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard outputHasRoom else {
            TransferLoop.shared.awaitOutput(for: self)
            return Int(CURL_WRITEFUNC_PAUSE)
        }
        reportHeadIfNeeded()
        if callbacks?.onBody(bytes) != true { stopRequested = true }
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

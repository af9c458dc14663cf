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

/// One easy handle plus one multi handle, reused for every request a worker thread makes, so
/// connections to the model API stay alive between requests.
///
/// Not thread-safe: each worker owns one.
public final class HTTPClient {
    private let easy: UnsafeMutableRawPointer
    private let multi: UnsafeMutableRawPointer

    public init() {
        guard let easy = curl_easy_init(), let multi = curl_multi_init() else {
            fatalError("libcurl could not allocate a handle")
        }
        self.easy = easy
        self.multi = multi
    }

    deinit {
        curl_multi_cleanup(multi)
        curl_easy_cleanup(easy)
    }

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

    /// Performs `request`, handing body bytes to `onBody` as they arrive.
    ///
    /// While waiting it also polls `watch` (our client's socket) and calls `onTick` at least
    /// every `tickMilliseconds`; `onBody` or `onTick` returning false aborts the transfer.
    public func perform(
        _ request: Request,
        watch: Int32? = nil,
        tickMilliseconds: Int32 = 100,
        onTick: () -> Bool = { true },
        onHead: (HTTPResponseHead) -> Void = { _ in },
        onBody: (UnsafeRawBufferPointer) -> Bool
    ) throws(TransferError) -> HTTPResponseHead {
        try withoutActuallyEscaping(onBody) { onBody throws(TransferError) in
            try withoutActuallyEscaping(onHead) { onHead throws(TransferError) in
                let sink = TransferSink(onHead: onHead, onBody: onBody)
                return try withExtendedLifetime(sink) { () throws(TransferError) in
                    try configure(request, sink: sink)
                    try drive(sink: sink, watch: watch, tickMilliseconds: tickMilliseconds, onTick: onTick)
                    sink.reportHeadIfNeeded()
                    return sink.head
                }
            }
        }
    }

    private func configure(_ request: Request, sink: TransferSink) throws(TransferError) {
        curl_easy_reset(easy)  // keeps the connection cache, drops the last request's options
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
        sink.headerList.map { curl_slist_free_all($0) }
        sink.headerList = nil
        for header in request.headers { sink.headerList = curl_slist_append(sink.headerList, header) }
        if code == CURLE_OK { code = ccurl_setopt_slist(easy, CURLOPT_HTTPHEADER, sink.headerList) }
        let context = Unmanaged.passUnretained(sink).toOpaque()
        if code == CURLE_OK { code = ccurl_setopt_write_function(easy, CURLOPT_WRITEFUNCTION, transferWriteBody) }
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_WRITEDATA, context) }
        if code == CURLE_OK { code = ccurl_setopt_write_function(easy, CURLOPT_HEADERFUNCTION, transferWriteHeader) }
        if code == CURLE_OK { code = ccurl_setopt_pointer(easy, CURLOPT_HEADERDATA, context) }
        guard code == CURLE_OK else { throw .transport(String(cString: curl_easy_strerror(code))) }
        sink.easy = easy
    }

    private func drive(sink: TransferSink, watch: Int32?, tickMilliseconds: Int32, onTick: () -> Bool) throws(TransferError) {
        curl_multi_add_handle(multi, easy)
        defer { curl_multi_remove_handle(multi, easy) }
        var running: Int32 = 1
        while true {
            curl_multi_perform(multi, &running)
            if sink.stopRequested { throw .stopped }
            if running == 0 { break }
            var waitFD = curl_waitfd(fd: watch ?? -1, events: Int16(CURL_WAIT_POLLIN), revents: 0)
            var ready: Int32 = 0
            curl_multi_wait(multi, &waitFD, watch == nil ? 0 : 1, Int32(tickMilliseconds), &ready)
            if watch != nil, waitFD.revents != 0 { throw .watchedDescriptorReady }
            if !onTick() { throw .stopped }
        }
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            if message.pointee.msg == CURLMSG_DONE, message.pointee.data.result != CURLE_OK {
                let result = message.pointee.data.result
                if result == CURLE_WRITE_ERROR, sink.stopRequested { throw .stopped }
                let message = String(cString: curl_easy_strerror(result))
                throw result == CURLE_OPERATION_TIMEDOUT ? .timedOut(message) : .transport(message)
            }
        }
    }
}

/// Lives for one transfer; libcurl's C callbacks reach it through an unretained pointer, which
/// `perform` keeps alive with `withExtendedLifetime`.
private final class TransferSink {
    let onHead: (HTTPResponseHead) -> Void
    let onBody: (UnsafeRawBufferPointer) -> Bool
    var head = HTTPResponseHead()
    var headReported = false
    var stopRequested = false
    var headerList: UnsafeMutablePointer<curl_slist>?
    var easy: UnsafeMutableRawPointer?

    init(onHead: @escaping (HTTPResponseHead) -> Void, onBody: @escaping (UnsafeRawBufferPointer) -> Bool) {
        self.onHead = onHead
        self.onBody = onBody
    }

    deinit { headerList.map { curl_slist_free_all($0) } }

    func header(_ line: UnsafeRawBufferPointer) {
        let text = String(decoding: line, as: UTF8.self)
        if text.hasPrefix("HTTP/") {
            head = HTTPResponseHead()  // a new response (after 100-continue, say)
            return
        }
        guard let colon = text.firstIndex(of: ":") else { return }
        head.headers[text[..<colon].lowercased()] = String(text[text.index(after: colon)...].trimmed())
    }

    /// Called before the first body byte, or at the end for a response without a body.
    func reportHeadIfNeeded() {
        guard !headReported else { return }
        headReported = true
        var status = 0
        if let easy { _ = ccurl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status) }
        head.status = status
        onHead(head)
    }

    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        reportHeadIfNeeded()
        if !onBody(bytes) { stopRequested = true }
        return !stopRequested
    }
}

private let transferWriteBody: curl_write_callback = { data, size, count, context in
    let sink = Unmanaged<TransferSink>.fromOpaque(context!).takeUnretainedValue()
    let length = size * count
    return sink.body(UnsafeRawBufferPointer(start: data, count: length)) ? length : 0
}

private let transferWriteHeader: curl_write_callback = { data, size, count, context in
    let sink = Unmanaged<TransferSink>.fromOpaque(context!).takeUnretainedValue()
    let length = size * count
    sink.header(UnsafeRawBufferPointer(start: data, count: length))
    return length
}

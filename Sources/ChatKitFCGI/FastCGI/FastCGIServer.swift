import CFastCGI
import Glibc

/// Where the listening socket comes from, in the order systemd, spawn-fcgi and a developer
/// would hand it over.
public enum ListenSocket {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public enum Origin: Equatable {
        case socketActivation
        case inheritedStandardInput
        /// Created by us: we remove it on shutdown.
        case created(path: String)
    }

    public static func acquire(path: String?, mode: UInt32, backlog: Int) throws(Failure) -> (fd: Int32, origin: Origin) {
        if let fds = getenv("LISTEN_FDS").flatMap({ Int32(String(cString: $0)) }),
            let pid = getenv("LISTEN_PID").flatMap({ pid_t(String(cString: $0)) }), pid == getpid(), fds >= 1
        {
            // As sd_listen_fds(1) does: children must not think the sockets are theirs.
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDNAMES")
            _ = fcntl(3, F_SETFD, FD_CLOEXEC)
            return (3, .socketActivation)
        }
        if isListeningSocket(0) { return (0, .inheritedStandardInput) }
        guard let path else {
            throw Failure(description: "no listening socket: use systemd socket activation, spawn-fcgi, or --socket PATH")
        }
        let fd = FCGX_OpenSocket(path, Int32(backlog))
        guard fd >= 0 else { throw Failure(description: "cannot listen on \(path): \(String(cString: strerror(errno)))") }
        guard chmod(path, mode_t(mode)) == 0 else {
            throw Failure(description: "cannot chmod \(path): \(String(cString: strerror(errno)))")
        }
        return (fd, .created(path: path))
    }

    private static func isListeningSocket(_ fd: Int32) -> Bool {
        var accepting: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0 && accepting == 1
    }
}

/// Worker threads, each blocking in `FCGX_Accept_r` on the shared listening socket.
public final class FastCGIServer: Sendable {
    private let listenFD: Int32
    private let app: Application
    /// Every running worker thread, and whether it is waiting in accept (safe to interrupt).
    private let workers = Locked<[pthread_t: Bool]>([:])

    /// SIGUSR1 interrupts a worker's accept() when the server drains, so it stops taking
    /// connections from a socket systemd still owns. A handler that does nothing, installed
    /// without SA_RESTART, is all it takes; installed before FCGX_Init, libfcgi keeps it.
    public static let wakeSignal = SIGUSR1

    public static func installWakeSignalHandler() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        precondition(sigaction(wakeSignal, &action, nil) == 0, "sigaction: \(String(cString: strerror(errno)))")
    }

    public var runningWorkers: Int { workers.withLock { $0.count } }

    /// Interrupts the workers waiting for a connection; busy ones see `isDraining` when done.
    public func wakeIdleWorkers() {
        workers.withLock { workers in
            for (thread, idle) in workers where idle { pthread_kill(thread, Self.wakeSignal) }
        }
    }

    private func setWorker(_ thread: pthread_t, idle: Bool?) {
        workers.withLock { $0[thread] = idle }
    }

    public init(listenFD: Int32, app: Application) {
        self.listenFD = listenFD
        self.app = app
    }

    public func startWorkers(count: Int) {
        for index in 0..<count {
            let started = DetachedThread.start(stackBytes: app.config.threadStackKiB << 10) { [self] in serve() }
            precondition(started, "the system refused to start worker thread \(index + 1) of \(count)")
        }
    }

    private func serve() {
        let worker = Worker(app: app)
        // Heap-allocated: libfcgi keeps pointers into it for the life of the thread.
        let request = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
        request.initialize(to: FCGX_Request())
        defer { request.deallocate() }
        guard FCGX_InitRequest(request, listenFD, Int32(FCGI_FAIL_ACCEPT_ON_INTR)) == 0 else {
            Log.error("FCGX_InitRequest failed")
            return
        }
        // Frees the request's streams and parameters, closing a connection still open.
        defer { FCGX_Free(request, 1) }
        let thread = pthread_self()
        setWorker(thread, idle: false)
        defer { setWorker(thread, idle: nil) }
        // The wake signal may only interrupt accept(), never a request's reads and writes.
        var wakeSignalOnly = sigset_t()
        sigemptyset(&wakeSignalOnly)
        sigaddset(&wakeSignalOnly, Self.wakeSignal)
        System.setSignalMask(SIG_BLOCK, wakeSignalOnly)
        while !app.lifecycle.isDraining {
            setWorker(thread, idle: true)
            System.setSignalMask(SIG_UNBLOCK, wakeSignalOnly)
            let accepted = FCGX_Accept_r(request)
            System.setSignalMask(SIG_BLOCK, wakeSignalOnly)
            setWorker(thread, idle: false)
            guard accepted >= 0 else {
                if app.lifecycle.isDraining { return }
                // EMFILE and friends: back off instead of spinning.
                usleep(50_000)
                continue
            }
            app.lifecycle.requestStarted()
            let exchange = FastCGIExchange(request, metrics: app.metrics)
            var log: RequestLog
            switch exchange.readRequest(maxBodyBytes: app.config.maxBodyBytes) {
            case .success(let httpRequest):
                log = worker.handle(httpRequest, writer: exchange)
            case .failure(let error):
                log = RequestLog(method: exchange.param("REQUEST_METHOD") ?? "?", path: exchange.param("DOCUMENT_URI") ?? "?")
                error.write(to: exchange)
            }
            exchange.finish()
            log.requestID = exchange.requestID
            log.status = exchange.status
            app.metrics.recordRequest(face: log.face, status: log.status, seconds: log.seconds)
            // libfcgi closes with a lingering close, so that input we never read cannot turn
            // into a connection reset that loses the answer. With the input read to its end a
            // plain close is as safe and saves a sleep and a wake-up. (FCGX_Detach only marks
            // the request for that; the flag is cleared with the connection.)
            if exchange.inputFullyRead { FCGX_Detach(request) }
            FCGX_Finish_r(request)
            app.lifecycle.requestEnded()
            Log.info(log.line)
        }
    }
}

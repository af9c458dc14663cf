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

/// Accepts FastCGI connections and serves each request as a task on the worker pool. A request
/// holds a thread only while it works: waiting for the model, it holds its connection and its
/// state, not a thread, so one process holds thousands of streams on a few threads.
public final class FastCGIServer: Sendable {
    private let listenFD: Int32
    private let app: Application
    private let pool: WorkerPool
    /// A place for each request served at once (`maxRequests`): an acceptor takes one before it
    /// accepts, so past that, connections wait in the listen backlog.
    private let places: Semaphore
    /// The acceptor threads, and whether each is waiting in accept (safe to interrupt).
    private let acceptors = Locked<[pthread_t: Bool]>([:])
    /// Two: one reading a request's parameters never holds the next connection back.
    static let acceptorCount = 2

    /// SIGUSR1 interrupts an acceptor's accept() when the server drains, so it stops taking
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

    /// Starts the worker pool's threads.
    public init(listenFD: Int32, app: Application) {
        self.listenFD = listenFD
        self.app = app
        pool = WorkerPool(threads: app.config.threads, stackBytes: app.config.threadStackKiB << 10)
        places = Semaphore(value: UInt32(app.config.maxRequests))
    }

    public var runningAcceptors: Int { acceptors.withLock { $0.count } }

    /// Interrupts the acceptors waiting for a connection.
    public func wakeAcceptors() {
        acceptors.withLock { acceptors in
            for (thread, idle) in acceptors where idle { pthread_kill(thread, Self.wakeSignal) }
        }
    }

    private func setAcceptor(_ thread: pthread_t, idle: Bool?) {
        acceptors.withLock { $0[thread] = idle }
    }

    public func startAccepting() {
        for index in 0..<Self.acceptorCount {
            let started = DetachedThread.start(stackBytes: 256 << 10) { [self] in accept() }
            precondition(started, "the system refused to start acceptor thread \(index + 1)")
        }
    }

    /// The accepted request's libfcgi state, handed from the acceptor to the request's task and
    /// never used by both.
    private struct Accepted: @unchecked Sendable {
        let request: UnsafeMutablePointer<FCGX_Request>
    }

    private func accept() {
        let thread = pthread_self()
        setAcceptor(thread, idle: false)
        defer { setAcceptor(thread, idle: nil) }
        // The wake signal may only interrupt accept(), never a request's reads and writes.
        var wakeSignalOnly = sigset_t()
        sigemptyset(&wakeSignalOnly)
        sigaddset(&wakeSignalOnly, Self.wakeSignal)
        System.setSignalMask(SIG_BLOCK, wakeSignalOnly)
        while !app.lifecycle.isDraining {
            guard places.wait(milliseconds: 100) else { continue }
            // Heap-allocated: libfcgi keeps pointers into it until the exchange has read the
            // request and frees it.
            let request = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
            request.initialize(to: FCGX_Request())
            guard FCGX_InitRequest(request, listenFD, Int32(FCGI_FAIL_ACCEPT_ON_INTR)) == 0 else {
                fatalError("FCGX_InitRequest failed")  // it only fills the struct in
            }
            setAcceptor(thread, idle: true)
            System.setSignalMask(SIG_UNBLOCK, wakeSignalOnly)
            let accepted = FCGX_Accept_r(request)
            System.setSignalMask(SIG_BLOCK, wakeSignalOnly)
            setAcceptor(thread, idle: false)
            guard accepted >= 0 else {
                FCGX_Free(request, 1)
                request.deallocate()
                places.signal()
                if app.lifecycle.isDraining { return }
                // EMFILE and friends: back off instead of spinning.
                usleep(50_000)
                continue
            }
            app.lifecycle.requestStarted()
            let handed = Accepted(request: request)
            Task(executorPreference: pool) { [self] in
                await serve(handed.request)
                places.signal()
            }
        }
    }

    private func serve(_ request: UnsafeMutablePointer<FCGX_Request>) async {
        let exchange = FastCGIExchange(
            reading: request, bodyLimit: { [app] in app.config.bodyLimit(forPath: $0) }, metrics: app.metrics,
            writeWaitSeconds: app.config.stallTimeoutSeconds)
        var log: RequestLog
        switch exchange.incoming {
        case .success(let httpRequest):
            log = await Worker(app: app).handle(httpRequest, writer: exchange)
        case .failure(let error):
            log = RequestLog(method: exchange.method, path: exchange.path)
            error.write(to: exchange)
        }
        exchange.finish()
        log.requestID = exchange.requestID
        log.status = exchange.status
        app.metrics.recordRequest(face: log.face, status: log.status, seconds: log.seconds)
        app.lifecycle.requestEnded()
        Log.info(log.line)
    }
}

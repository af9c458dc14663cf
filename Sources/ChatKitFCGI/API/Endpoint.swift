/// One face of the API. Each answers its own requests and reports its own failures: before the
/// response head as JSON `{"detail": ...}` with the face's own headers, after it in-band, in its
/// protocol's terms.
protocol Endpoint {
    /// The face's name in the metrics.
    var face: String { get }
    /// What `Allow` lists when a request's method is not served.
    var allowedMethods: [String] { get }
    /// Health checks answer while the server drains; everything else is turned away.
    var servedWhileDraining: Bool { get }
    func accepts(_ request: HTTPRequest) -> Bool
    /// A face that calls the model suspends while it answers; the others never do.
    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) async throws
    /// Headers every answer carries, errors included.
    func headers(for request: HTTPRequest) -> [(String, String)]
    /// A failure after the head went out, when the status can no longer say it.
    func reportInBand(_ error: APIError, to sse: SSEWriter)
}

extension Endpoint {
    var servedWhileDraining: Bool { false }
    func accepts(_ request: HTTPRequest) -> Bool { allowedMethods.contains(request.method) }
    func headers(for request: HTTPRequest) -> [(String, String)] { [] }
    func reportInBand(_ error: APIError, to sse: SSEWriter) {}

    func fail(_ error: APIError, request: HTTPRequest, writer: ResponseWriter) {
        if writer.headWritten {
            reportInBand(error, to: SSEWriter(writer: writer))
        } else {
            error.write(to: writer, headers: headers(for: request))
        }
    }
}

/// What both streaming faces share while an agent turn runs: the transfer loop watches the
/// client's socket and asks whether it has room, keepalives go out while the model is silent,
/// and the stream gives up once the drain deadline has passed. Called on the transfer loop's
/// thread while the request waits for the model.
protocol TurnStream: AgentObserver {
    var sse: SSEWriter { get }
    var writer: ResponseWriter { get }
    var app: Application { get }
    /// Writes the face's head if it is written lazily, before a keepalive needs it.
    func startIfNeeded()
}

extension TurnStream {
    var clientDescriptor: Int32? { writer.clientDescriptor }
    var outputHasRoom: Bool { writer.hasRoom }
    func startIfNeeded() {}

    func idle(canWrite: @autoclosure () -> Bool) -> Bool {
        if app.lifecycle.graceExpired { return false }
        if sse.isQuiet(for: app.config.keepaliveSeconds), canWrite() {
            startIfNeeded()
            return sse.keepalive()
        }
        return !sse.clientGone
    }

    func ending(of end: TurnEnd, log: inout RequestLog) -> StreamEnding {
        let ending = StreamEnding(end, graceExpired: app.lifecycle.graceExpired)
        log.note = ending.logNote
        return ending
    }
}

/// How a turn's stream ends, in the terms both faces report it in.
enum StreamEnding: Equatable {
    /// The model answered, or handed the turn to the client (a client tool call).
    case answered
    case roundLimitReached(Int)
    /// The drain deadline passed: the server stopped the turn, not the user.
    case serverShutdown
    case clientGone
    case failed(ModelError)

    init(_ end: TurnEnd, graceExpired: Bool) {
        switch end {
        case .answered, .awaitingClientTool: self = .answered
        case .roundLimitReached(let rounds): self = .roundLimitReached(rounds)
        case .failed(.cancelled): self = graceExpired ? .serverShutdown : .clientGone
        case .failed(let error): self = .failed(error)
        }
    }

    var logNote: String? {
        switch self {
        case .answered: nil
        case .roundLimitReached: "round limit"
        case .serverShutdown: "ended by shutdown"
        case .clientGone: "client disconnected"
        case .failed(let error): error.description
        }
    }
}

import ChatKitFCGI

/// Maps method + path to handlers. Returns whether the connection stays open.
struct Router: Sendable {
    let config: Config
    let state: MockState

    func handle(_ request: HTTPRequest, on connection: ClientConnection) -> Bool {
        let keepAlive = request.wantsKeepAlive
        func reply(_ response: HTTPResponse) -> Bool {
            connection.send(response, keepAlive: keepAlive) && keepAlive
        }
        func methodNotAllowed(_ allowed: String) -> Bool {
            reply(.error(405, message: "Method \(request.method) not allowed for \(request.path) (mock)",
                         type: "invalid_request_error", headers: [("Allow", allowed)]))
        }

        switch (request.path, request.method) {
        case ("/health", "GET"):
            return reply(.json(200, ["ok": true]))
        case ("/health", _):
            return methodNotAllowed("GET")

        case ("/v1/chat/completions", "POST"), ("/chat/completions", "POST"):
            return ChatCompletions(config: config, state: state).handle(request, on: connection, keepAlive: keepAlive)
        case ("/v1/chat/completions", _), ("/chat/completions", _):
            return methodNotAllowed("POST")

        case ("/v1/audio/transcriptions", "POST"), ("/audio/transcriptions", "POST"):
            return reply(Transcriptions(config: config, state: state).handle(request))
        case ("/v1/audio/transcriptions", _), ("/audio/transcriptions", _):
            return methodNotAllowed("POST")

        case ("/_mock/requests", "GET"):
            return reply(.json(200, .array(state.loggedRequests())))
        case ("/_mock/requests", "DELETE"):
            state.reset()
            return reply(HTTPResponse(status: 204))
        case ("/_mock/requests", _):
            return methodNotAllowed("GET, DELETE")

        case ("/_mock/stats", "GET"):
            return reply(.json(200, state.statsJSON()))
        case ("/_mock/stats", _):
            return methodNotAllowed("GET")

        default:
            return reply(.error(404, message: "Unknown request URL: \(request.method) \(request.path) (mock)",
                                type: "invalid_request_error", code: "unknown_url"))
        }
    }
}

/// `GET /livez` and `GET /readyz`: cheap, unauthenticated, no user data. Live while the process
/// serves; ready while it is not draining and its database answers.
struct HealthEndpoint: Endpoint {
    let worker: Worker
    let checksReadiness: Bool

    var face: String { "health" }
    var allowedMethods: [String] { ["GET"] }
    var servedWhileDraining: Bool { true }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) throws {
        guard checksReadiness else { return writer.writeJSON(status: 200, ["status": "live"]) }
        if worker.app.lifecycle.isDraining {
            log.note = "not ready: draining"
            return writer.writeJSON(status: 503, ["detail": "the server is draining for a restart"], headers: [("Retry-After", "1")])
        }
        do {
            try worker.store().ping()
        } catch {
            log.note = "not ready: \(error)"
            return writer.writeJSON(status: 503, ["detail": "the database does not answer"], headers: [("Retry-After", "1")])
        }
        writer.writeJSON(status: 200, ["status": "ready"])
    }
}

/// `GET /metrics`, in Prometheus' text format. nginx lets only loopback reach it unless the
/// operator opens it to a scraper.
struct MetricsEndpoint: Endpoint {
    let app: Application

    var face: String { "metrics" }
    var allowedMethods: [String] { ["GET"] }
    var servedWhileDraining: Bool { true }

    func handle(_ request: HTTPRequest, writer: ResponseWriter, log: inout RequestLog) throws {
        // This request is one of those in flight; the figure is about everyone else.
        let text = app.metrics.render(requestsInFlight: max(0, app.lifecycle.activeRequests - 1))
        writer.writeHead(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                                ("Cache-Control", "no-store")])
        _ = writer.write(Array(text.utf8))
    }
}

/// One line per request on stderr: request id, method, path, status, duration, model rounds,
/// upstream retries, tokens. The id is the one the response carried in `X-Request-Id`, so a
/// user's complaint leads to its line.
public struct RequestLog {
    var requestID = ""
    var method = ""
    var path = ""
    /// Which face served it, for the metrics (`none` when no face did).
    var face = "none"
    var status = 0
    var rounds = 0
    var retries = 0
    var usage = ChatCompletionChunk.Usage()
    var note: String?
    let startedMilliseconds = Clock.monotonicMilliseconds()

    var seconds: Double { (Clock.monotonicMilliseconds() - startedMilliseconds) / 1000 }

    var line: String {
        let duration = String(Double(Int(seconds * 10_000)) / 10)
        var line = "id=\(requestID) \(method) \(path) \(status) \(duration)ms rounds=\(rounds) "
        if retries > 0 { line += "retries=\(retries) " }
        line += "tokens=\(usage.promptTokens)+\(usage.completionTokens)"
        if let note { line += " (\(note))" }
        return line
    }
}

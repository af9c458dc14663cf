/// One line per request on stderr: method, path, status, duration, model rounds, tokens.
public struct RequestLog {
    var method = ""
    var path = ""
    var status = 0
    var rounds = 0
    var usage = ChatCompletionChunk.Usage()
    var note: String?
    let startedMilliseconds = Clock.monotonicMilliseconds()

    var line: String {
        let milliseconds = Clock.monotonicMilliseconds() - startedMilliseconds
        let duration = String(Double(Int(milliseconds * 10)) / 10)
        var line = "\(method) \(path) \(status) \(duration)ms rounds=\(rounds) "
            + "tokens=\(usage.promptTokens)+\(usage.completionTokens)"
        if let note { line += " (\(note))" }
        return line
    }
}

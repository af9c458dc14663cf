import ChatKitFCGI
import Glibc

/// `POST /v1/chat/completions`: validation, logging, then either a JSON
/// `chat.completion` or an SSE stream of `chat.completion.chunk`s.
struct ChatCompletions: Sendable {
    let config: Config
    let state: MockState

    /// Per-response identity shared by every chunk.
    private struct Context {
        let id: String
        let created: Int
        let model: String
        let requestNumber: Int
        let promptTokens: Int
    }

    func handle(_ request: HTTPRequest, on connection: ClientConnection, keepAlive: Bool) -> Bool {
        func reply(_ response: HTTPResponse) -> Bool {
            connection.send(response, keepAlive: keepAlive) && keepAlive
        }
        func invalid(_ message: String) -> Bool {
            reply(.error(400, message: message, type: "invalid_request_error"))
        }

        if let key = config.apiKey, request.header("authorization") != "Bearer \(key)" {
            return reply(.error(401, message: "Incorrect API key provided (mock): expected 'Authorization: Bearer <MOCK_API_KEY>'",
                                type: "invalid_request_error", code: "invalid_api_key"))
        }
        let body: JSON
        do {
            body = try JSON.parse(request.body)
        } catch {
            return invalid("We could not parse the JSON body of your request: \(error) (mock)")
        }
        guard case .object = body else {
            return invalid("The request body must be a JSON object (mock)")
        }
        guard let messages = body["messages"]?.arrayValue, !messages.isEmpty else {
            return invalid("'messages' is required and must be a non-empty array (mock)")
        }

        let requestNumber = state.logRequest(body)
        // "flaky N STATUS": the first N sendings of this very request fail, the next succeeds,
        // as a model server that recovers does. STATUS `reset` closes without any answer.
        if let flaky = Script.flaky(messages) {
            let attempt = state.attempt(of: String(decoding: request.body, as: UTF8.self))
            if attempt <= flaky.failures {
                guard let status = flaky.status else { return false }
                let failure = Script.failure(status: status)
                return reply(.error(failure.status, message: failure.message, type: failure.type, code: failure.code,
                                    headers: status == 429 ? [("Retry-After", "1")] : []))
            }
        }
        // "silent": the response head, then nothing; "silent head": not even the head. Either
        // way the connection stays open until the client gives up (at most two minutes).
        if let silence = Script.silence(messages) {
            if silence == .afterHead {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                guard connection.write(Array(head.utf8), waiting: { _ in }) else { return false }
            }
            _ = connection.waitUnlessClosed(milliseconds: 120_000)
            return false
        }
        let plan: MockPlan
        switch Script.decide(messages) {
        case .failure(let failure):
            let extra = failure.retryAfterSeconds.map { [("Retry-After", String($0))] } ?? []
            return reply(.error(failure.status, message: failure.message, type: failure.type,
                                code: failure.code, headers: extra))
        case .completion(let p):
            plan = p
        }

        let context = Context(
            id: "chatcmpl-mock\(requestNumber)",
            created: time(nil),
            model: body["model"]?.stringValue ?? "mock-model",
            requestNumber: requestNumber,
            promptTokens: ChatCompletions.promptTokens(messages)
        )
        if body["stream"]?.boolValue == true {
            let includeUsage = body["stream_options"]?["include_usage"]?.boolValue == true
            return stream(plan, context, includeUsage: includeUsage, request: request, connection: connection, keepAlive: keepAlive)
        }
        return respond(plan, context, connection: connection, keepAlive: keepAlive)
    }

    /// P = ceil(characters of all message contents / 4); characters are Unicode scalars.
    static func promptTokens(_ messages: [JSON]) -> Int {
        let characters = messages.reduce(0) { $0 + Script.text(of: $1).unicodeScalars.count }
        return (characters + 3) / 4
    }

    private func callId(_ context: Context, _ index: Int) -> String {
        "call_mock_\(context.requestNumber)_\(index)"
    }

    // MARK: - Non-streaming

    private func respond(_ plan: MockPlan, _ context: Context, connection: ClientConnection, keepAlive: Bool) -> Bool {
        if plan.ending == .midstreamError {
            let response = HTTPResponse.error(500, message: "mock upstream failure", type: "server_error")
            return connection.send(response, keepAlive: keepAlive) && keepAlive
        }
        let message: JSON
        let finishReason: String
        let completionTokens: Int
        switch plan.answer {
        case .text(let pieces):
            message = ["role": "assistant", "content": .string((plan.preamble + pieces).joined()), "refusal": .null]
            finishReason = "stop"
            completionTokens = plan.preamble.count + pieces.count
        case .toolCalls(let calls):
            let toolCalls: [JSON] = calls.enumerated().map { i, call in
                [
                    "id": .string(callId(context, i)),
                    "type": "function",
                    "function": ["name": .string(call.name), "arguments": .string(call.arguments)],
                ]
            }
            message = ["role": "assistant", "content": plan.preamble.isEmpty ? .null : .string(plan.preamble.joined()),
                       "tool_calls": .array(toolCalls), "refusal": .null]
            finishReason = "tool_calls"
            completionTokens = plan.preamble.count + calls.reduce(0) { $0 + Script.argumentFragments($1.arguments).count }
        }
        let choice: JSON = ["index": 0, "message": message, "logprobs": .null, "finish_reason": .string(finishReason)]
        let completion: JSON = [
            "id": .string(context.id),
            "object": "chat.completion",
            "created": .int(context.created),
            "model": .string(context.model),
            "choices": [choice],
            "usage": usage(context, completionTokens),
        ]
        let response = HTTPResponse.json(200, completion)
        if plan.ending == .truncate {
            // Promise the full length, deliver half, hang up.
            let bytes = response.head(keepAlive: false) + response.body.prefix(response.body.count / 2)
            _ = connection.write(Array(bytes))
            return false
        }
        return connection.send(response, keepAlive: keepAlive) && keepAlive
    }

    private func usage(_ context: Context, _ completionTokens: Int) -> JSON {
        [
            "prompt_tokens": .int(context.promptTokens),
            "completion_tokens": .int(completionTokens),
            "total_tokens": .int(context.promptTokens + completionTokens),
        ]
    }

    // MARK: - Streaming

    /// A `chat.completion.chunk`, encoded as `JSON` would encode the whole object, from a head
    /// (id, object, created, model) encoded once per response.
    private struct ChunkEncoder {
        let head: [UInt8]

        init(_ context: Context) {
            var head = Array(#"{"id":"#.utf8)
            JSON.writeString(context.id, to: &head)
            head += #","object":"chat.completion.chunk","created":"#.utf8
            JSON.int(context.created).write(to: &head)
            head += #","model":"#.utf8
            JSON.writeString(context.model, to: &head)
            head += #","choices":[{"index":0,"delta":"#.utf8
            self.head = head
        }

        func chunk(delta: JSON, finishReason: String? = nil, into out: inout [UInt8]) {
            out += head
            delta.write(to: &out)
            out += #","logprobs":null,"finish_reason":"#.utf8
            JSON(finishReason).write(to: &out)
            out += "}]}".utf8
        }
    }

    /// The SSE records of the whole stream, in order (without `: keepalive` comments).
    private func records(_ plan: MockPlan, _ context: Context, includeUsage: Bool) -> [[UInt8]] {
        let recordEnd = Array((plan.crlf ? "\r\n\r\n" : "\n\n").utf8)
        let encoder = ChunkEncoder(context)
        var records: [[UInt8]] = []
        func add(_ payload: (inout [UInt8]) -> Void) {
            var record = Array("data: ".utf8)
            record.reserveCapacity(512)
            payload(&record)
            record += recordEnd
            records.append(record)
        }
        func add(_ value: JSON) { add { value.write(to: &$0) } }
        func chunk(delta: JSON, finishReason: String? = nil) {
            add { encoder.chunk(delta: delta, finishReason: finishReason, into: &$0) }
        }

        chunk(delta: ["role": "assistant", "content": ""])
        for piece in plan.preamble {
            chunk(delta: ["content": .string(piece)])
        }
        let finishReason: String
        var completionTokens = plan.preamble.count
        switch plan.answer {
        case .text(let pieces):
            for piece in pieces {
                chunk(delta: ["content": .string(piece)])
            }
            completionTokens += pieces.count
            finishReason = "stop"
        case .toolCalls(let calls):
            for (i, call) in calls.enumerated() {
                let header: JSON = [
                    "index": .int(i),
                    "id": .string(callId(context, i)),
                    "type": "function",
                    "function": ["name": .string(call.name), "arguments": ""],
                ]
                chunk(delta: ["tool_calls": [header]])
                for fragment in Script.argumentFragments(call.arguments) {
                    let part: JSON = ["index": .int(i), "function": ["arguments": .string(fragment)]]
                    chunk(delta: ["tool_calls": [part]])
                    completionTokens += 1
                }
            }
            finishReason = "tool_calls"
        }

        switch plan.ending {
        case .normal, .linger:
            chunk(delta: [:], finishReason: finishReason)
            if includeUsage {
                add([
                    "id": .string(context.id),
                    "object": "chat.completion.chunk",
                    "created": .int(context.created),
                    "model": .string(context.model),
                    "choices": [],
                    "usage": usage(context, completionTokens),
                ])
            }
        case .midstreamError:
            add(["error": ["message": "mock upstream failure", "type": "server_error", "param": .null, "code": .null]])
        case .truncate:
            return records
        }
        add { $0 += "[DONE]".utf8 }
        return records
    }

    private func stream(_ plan: MockPlan, _ context: Context, includeUsage: Bool, request: HTTPRequest,
                        connection: ClientConnection, keepAlive requestedKeepAlive: Bool) -> Bool {
        // HTTP/1.0 clients cannot take chunked encoding: stream raw and close.
        let chunked = request.isHTTP11
        let keepAlive = requestedKeepAlive && chunked && plan.ending != .truncate && plan.ending != .linger
        var head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        if chunked { head += "Transfer-Encoding: chunked\r\n" }
        head += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"

        /// One HTTP chunk per record, so each is delivered on its own.
        func chunk(_ payload: [UInt8]) -> [UInt8] {
            guard chunked else { return payload }
            var frame = Array("\(String(payload.count, radix: 16))\r\n".utf8)
            frame.reserveCapacity(frame.count + payload.count + 2)
            frame += payload
            frame += "\r\n".utf8
            return frame
        }

        let records = records(plan, context, includeUsage: includeUsage)
        let keepaliveComment = chunk(Array(": keepalive\r\n\r\n".utf8))
        // What each record's turn writes: the record, and in CRLF mode a comment between records.
        let frames = records.indices.map { index in
            chunk(records[index]) + (plan.crlf && index < records.count - 1 ? keepaliveComment : [])
        }
        let delayMs = plan.fixedDelayMs ?? config.delayMs
        let ticket = state.streamStarted()
        let waiting: @Sendable (Bool) -> Void = { [state] in state.stream(ticket, waitsToWrite: $0) }

        var allRecordsSent = connection.write(Array(head.utf8) + frames[0], waiting: waiting)
        if allRecordsSent && frames.count > 1 {
            if delayMs > 0 {
                // Records fall due on a fixed schedule, like tokens from a model that runs
                // elsewhere: a wake-up made late by a busy machine does not push every later
                // record back with it.
                allRecordsSent = Pacer.shared.send(
                    Array(frames.dropFirst()), on: connection.fd, start: Clock.monotonicNanoseconds(),
                    interval: UInt64(delayMs) * 1_000_000, waiting: waiting)
            } else {
                allRecordsSent = frames.dropFirst().allSatisfy { connection.write($0, waiting: waiting) }
            }
        }
        var ok = allRecordsSent
        if ok && plan.ending == .linger { _ = connection.waitUnlessClosed(milliseconds: 3_000) }
        if ok && chunked && plan.ending != .truncate && plan.ending != .linger {
            ok = connection.write(Array("0\r\n\r\n".utf8), waiting: waiting)
        }
        // Only a failure before the last record ([DONE]) counts as a cancellation;
        // `truncate` is a scripted ending and counts as completed.
        state.streamEnded(ticket, cancelled: !allRecordsSent)
        return ok && keepAlive
    }
}

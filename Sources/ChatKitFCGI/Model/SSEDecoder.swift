/// One dispatched Server-Sent Event.
public struct SSEEvent: Equatable, Sendable {
    public var event: String?
    public var data: String
    public var id: String?
    public var retry: Int?
    /// More than one `data:` line, so `data` holds line feeds.
    public var spansLines = false
}

/// Incremental decoder following the WHATWG event-stream algorithm: bytes may arrive in any
/// slices, lines end in CR, LF or CRLF (even when a CRLF is split across reads), `:` starts a
/// comment, one space after the colon is dropped and multi-line `data` is joined with LF.
public struct SSEDecoder {
    private static let byteOrderMark: [UInt8] = [0xEF, 0xBB, 0xBF]
    private var line: [UInt8] = []
    private var lastByteWasCR = false
    private var byteOrderMarkMatched = 0
    private var atStreamStart = true
    private var event: String?
    private var data: [UInt8] = []
    private var hasData = false
    private var dataSpansLines = false
    private var id: String?
    private var retry: Int?

    public init() {}

    /// Bytes held for a line or an event not finished yet; callers cap it.
    public var pendingBytes: Int { line.count + data.count }

    /// Feeds bytes and calls `dispatch` for every complete event, in order.
    public mutating func feed<Bytes: Sequence>(_ bytes: Bytes, dispatch: (SSEEvent) throws -> Void) rethrows
    where Bytes.Element == UInt8 {
        for byte in bytes {
            if atStreamStart {
                if byte == Self.byteOrderMark[byteOrderMarkMatched] {
                    byteOrderMarkMatched += 1
                    if byteOrderMarkMatched == Self.byteOrderMark.count { atStreamStart = false }
                    continue
                }
                atStreamStart = false
                line.append(contentsOf: Self.byteOrderMark.prefix(byteOrderMarkMatched))
            }
            switch byte {
            case 0x0A:
                if lastByteWasCR {
                    lastByteWasCR = false
                    continue
                }
                try endLine(dispatch)
            case 0x0D:
                lastByteWasCR = true
                try endLine(dispatch)
            default:
                lastByteWasCR = false
                line.append(byte)
            }
        }
    }

    private mutating func endLine(_ dispatch: (SSEEvent) throws -> Void) rethrows {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            // Per WHATWG an event without data lines is dropped, not dispatched empty.
            guard hasData else { event = nil; retry = nil; return }
            let dispatched = SSEEvent(event: event, data: String(decoding: data, as: UTF8.self), id: id, retry: retry,
                                      spansLines: dataSpansLines)
            event = nil
            data.removeAll(keepingCapacity: true)
            hasData = false
            dataSpansLines = false
            retry = nil
            try dispatch(dispatched)
            return
        }
        if line[0] == UInt8(ascii: ":") { return }
        let colon = line.firstIndex(of: UInt8(ascii: ":"))
        let name = line[..<(colon ?? line.endIndex)]
        var valueStart = colon.map { $0 + 1 } ?? line.endIndex
        if valueStart < line.endIndex, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let value = line[valueStart...]
        switch String(decoding: name, as: UTF8.self) {
        case "data":
            if hasData {
                data.append(0x0A)
                dataSpansLines = true
            }
            data.append(contentsOf: value)
            hasData = true
        case "event":
            event = String(decoding: value, as: UTF8.self)
        case "id":
            if !value.contains(0) { id = String(decoding: value, as: UTF8.self) }
        case "retry":
            retry = Int(String(decoding: value, as: UTF8.self))
        default:
            break
        }
    }
}

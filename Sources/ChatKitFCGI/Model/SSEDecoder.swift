import Glibc

/// One dispatched Server-Sent Event.
public struct SSEEvent: Equatable, Sendable {
    public var event: String?
    /// The data as received: the relay forwards these bytes without decoding them.
    public var dataBytes: [UInt8]
    public var id: String?
    public var retry: Int?
    /// More than one `data:` line, so `data` holds line feeds.
    public var spansLines = false

    public init(event: String?, data: String, id: String?, retry: Int?, spansLines: Bool = false) {
        self.init(event: event, dataBytes: Array(data.utf8), id: id, retry: retry, spansLines: spansLines)
    }

    init(event: String?, dataBytes: [UInt8], id: String?, retry: Int?, spansLines: Bool) {
        self.event = event
        self.dataBytes = dataBytes
        self.id = id
        self.retry = retry
        self.spansLines = spansLines
    }

    public var data: String { String(decoding: dataBytes, as: UTF8.self) }
}

/// Incremental decoder following the WHATWG event-stream algorithm: bytes may arrive in any
/// slices, lines end in CR, LF or CRLF (even when a CRLF is split across reads), `:` starts a
/// comment, one space after the colon is dropped and multi-line `data` is joined with LF.
///
/// This is the per-chunk path: a line that arrives whole is read where it lies, and the data
/// buffer is handed to the event and reused once the event is gone.
public struct SSEDecoder {
    private static let byteOrderMark: [UInt8] = [0xEF, 0xBB, 0xBF]
    /// The start of a line whose end has not arrived yet.
    private var partialLine: [UInt8] = []
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
    public var pendingBytes: Int { partialLine.count + data.count }

    /// Feeds bytes and calls `dispatch` for every complete event, in order.
    public mutating func feed(_ input: UnsafeRawBufferPointer, dispatch: (SSEEvent) throws -> Void) rethrows {
        var position = 0
        // The next LF at or after `position` (the input's end if none), kept from line to line:
        // searched again only once passed, so a stream of CR-ended lines is not searched to its
        // end for each line.
        var nextLineFeed = -1
        while position < input.count {
            if atStreamStart {
                let byte = input[position]
                if byte == Self.byteOrderMark[byteOrderMarkMatched] {
                    byteOrderMarkMatched += 1
                    if byteOrderMarkMatched == Self.byteOrderMark.count { atStreamStart = false }
                    position += 1
                    continue
                }
                atStreamStart = false
                partialLine.append(contentsOf: Self.byteOrderMark.prefix(byteOrderMarkMatched))
            }
            if lastByteWasCR {
                lastByteWasCR = false
                if input[position] == 0x0A {
                    position += 1
                    continue
                }
            }
            if nextLineFeed < position { nextLineFeed = Self.firstIndex(of: 0x0A, in: input, from: position, before: input.count) }
            let end = Self.firstIndex(of: 0x0D, in: input, from: position, before: nextLineFeed)
            let piece = UnsafeRawBufferPointer(rebasing: input[position..<end])
            guard end < input.count else {
                partialLine.append(contentsOf: piece)
                return
            }
            lastByteWasCR = input[end] == 0x0D
            position = end + 1
            if partialLine.isEmpty {
                try endLine(piece, dispatch)
            } else {
                partialLine.append(contentsOf: piece)
                // Swapped out, so the line is not read from self while endLine changes self.
                var line: [UInt8] = []
                swap(&line, &partialLine)
                try line.withUnsafeBytes { try endLine($0, dispatch) }
                line.removeAll(keepingCapacity: true)
                swap(&line, &partialLine)
            }
        }
    }

    /// Where `byte` first is in `input[start..<end]`, or `end`: memchr, a fraction of the cost
    /// of a loop over the bytes on the per-chunk path.
    private static func firstIndex(of byte: UInt8, in input: UnsafeRawBufferPointer, from start: Int, before end: Int) -> Int {
        guard start < end, let base = input.baseAddress?.advanced(by: start), let found = memchr(base, Int32(byte), end - start)
        else { return end }
        return start + (UnsafeRawPointer(found) - base)
    }

    public mutating func feed(_ bytes: [UInt8], dispatch: (SSEEvent) throws -> Void) rethrows {
        try bytes.withUnsafeBytes { try feed($0, dispatch: dispatch) }
    }

    private mutating func endLine(_ line: UnsafeRawBufferPointer, _ dispatch: (SSEEvent) throws -> Void) rethrows {
        if line.isEmpty {
            // Per WHATWG an event without data lines is dropped, not dispatched empty.
            guard hasData else { event = nil; retry = nil; return }
            defer {
                event = nil
                data.removeAll(keepingCapacity: true)  // unshared again once the event is gone
                hasData = false
                dataSpansLines = false
                retry = nil
            }
            try dispatch(SSEEvent(event: event, dataBytes: data, id: id, retry: retry, spansLines: dataSpansLines))
            return
        }
        if line[0] == UInt8(ascii: ":") { return }
        let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
        let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        var valueStart = Swift.min(colon + 1, line.endIndex)
        if valueStart < line.endIndex, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let value = UnsafeRawBufferPointer(rebasing: line[valueStart...])
        if name.equals("data") {
            if hasData {
                data.append(0x0A)
                dataSpansLines = true
            }
            data.append(contentsOf: value)
            hasData = true
        } else if name.equals("event") {
            event = String(decoding: value, as: UTF8.self)
        } else if name.equals("id") {
            if !value.contains(0) { id = String(decoding: value, as: UTF8.self) }
        } else if name.equals("retry") {
            retry = Int(String(decoding: value, as: UTF8.self))
        }
    }
}

import ChatKitFCGI
import Glibc

/// One HTTP/1.1 response read as it arrives: the status, the body (chunked or not) and the
/// moment the first record with answer text was complete.
struct StreamedResponse {
    private(set) var status = 0
    private(set) var isChunked = false
    /// The chunked body's last (empty) chunk arrived.
    private(set) var sawLastChunk = false
    private(set) var body: [UInt8] = []
    private(set) var malformed: String?
    /// Whether a complete record in the body carries answer text.
    private(set) var sawContent = false

    private var headDone = false
    /// Bytes not parsed yet: the head, or chunk framing cut by a read.
    private var pending: [UInt8] = []
    private var chunkLeft = 0
    private var chunkNeedsCRLF = false
    /// Where the first record not yet looked at starts in `body`.
    private var scanned = 0

    private static let headEnd = Array("\r\n\r\n".utf8), lineEnd = Array("\r\n".utf8), recordEnd = Array("\n\n".utf8)
    private static let chunkedField = Array("\r\ntransfer-encoding: chunked".utf8)
    private static let dataField = Array("data: ".utf8)
    /// An in-band error: the responder's and ChatKit's error events, or the model's.
    private static let errorMarkers = [Array(#""type":"error""#.utf8), Array(#"data: {"error""#.utf8)]

    /// Takes the bytes of one read. Returns true when they completed the first record with text.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard malformed == nil else { return false }
        if !headDone {
            pending.append(contentsOf: bytes)
            guard let end = Self.find(Self.headEnd, in: pending[...]) else {
                if pending.count > 65536 { malformed = "response head too large" }
                return false
            }
            let rest = Array(pending[(end + 4)...])
            guard readHead(pending[..<end]) else { return false }
            pending = []
            headDone = true
            feedBody(rest[...])
        } else {
            feedBody(bytes.bindMemory(to: UInt8.self)[...])
        }
        guard !sawContent, status == 200 else { return false }
        sawContent = scanForContent()
        return sawContent
    }

    private mutating func readHead(_ head: ArraySlice<UInt8>) -> Bool {
        let statusLine = head.split(separator: UInt8(ascii: "\n"), maxSplits: 1).first ?? []
        let fields = statusLine.split(separator: UInt8(ascii: " "), maxSplits: 2)
        guard fields.count >= 2, let code = Int(String(decoding: fields[1], as: UTF8.self)) else {
            malformed = "bad status line"
            return false
        }
        status = code
        let lowered = head.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 + 32 : $0 }
        isChunked = Self.find(Self.chunkedField, in: lowered[...]) != nil
        return true
    }

    private mutating func feedBody<C: Collection<UInt8>>(_ bytes: C) {
        guard isChunked else {
            body.append(contentsOf: bytes)
            return
        }
        pending.append(contentsOf: bytes)
        var position = 0
        while !sawLastChunk {
            if chunkLeft > 0 {
                let take = min(chunkLeft, pending.count - position)
                body.append(contentsOf: pending[position..<(position + take)])
                position += take
                chunkLeft -= take
                if chunkLeft > 0 { break }
                chunkNeedsCRLF = true
            }
            if chunkNeedsCRLF {
                guard pending.count - position >= 2 else { break }
                position += 2
                chunkNeedsCRLF = false
            }
            guard let lineEnd = Self.find(Self.lineEnd, in: pending[position...]) else { break }
            let sizeField = pending[position..<lineEnd].prefix { $0 != UInt8(ascii: ";") }
            guard let size = Int(String(decoding: sizeField, as: UTF8.self), radix: 16) else {
                malformed = "bad chunk size"
                return
            }
            position = lineEnd + 2
            if size == 0 { sawLastChunk = true } else { chunkLeft = size }
        }
        pending.removeFirst(position)
    }

    /// Looks at each record completed since the last call, as the browser would: the first
    /// non-empty `choices[0].delta.content`, or ChatKit's first non-empty text delta.
    private mutating func scanForContent() -> Bool {
        while let end = Self.find(Self.recordEnd, in: body[scanned...]) {
            let record = body[scanned..<end]
            scanned = end + 2
            guard record.starts(with: Self.dataField), let event = try? JSON.parse(Array(record.dropFirst(6))) else { continue }
            if let content = event["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue, !content.isEmpty {
                return true
            }
            if event["type"]?.stringValue == "thread.item.updated", let update = event["update"],
                update["type"]?.stringValue == "assistant_message.content_part.text_delta",
                let delta = update["delta"]?.stringValue, !delta.isEmpty
            {
                return true
            }
        }
        return false
    }

    /// Why the finished response does not count, or nil when it does.
    func failure(expectedRecords: Int, lastRecord: [UInt8]) -> String? {
        if let malformed { return malformed }
        if status != 200 { return "HTTP \(status)" }
        if isChunked && !sawLastChunk { return "stream ended without the last chunk" }
        if !body.ends(with: lastRecord) { return "stream did not end with its last record" }
        if Self.errorMarkers.contains(where: { Self.find($0, in: body[...]) != nil }) {
            return "error record in stream"
        }
        let records = Self.count(Self.dataField, in: body)
        if records != expectedRecords { return "\(records) records, expected \(expectedRecords)" }
        if !sawContent { return "no content chunk" }
        return nil
    }

    /// The index in the slice's base of the first occurrence of `needle` (not empty).
    static func find(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        haystack.withUnsafeBufferPointer { hay -> Int? in
            needle.withUnsafeBufferPointer { pattern -> Int? in
                var offset = 0
                while hay.count - offset >= pattern.count {
                    guard let hit = memchr(hay.baseAddress! + offset, Int32(pattern[0]), hay.count - offset - pattern.count + 1)
                    else { return nil }
                    let at = UnsafePointer(hit.assumingMemoryBound(to: UInt8.self)) - hay.baseAddress!
                    if memcmp(hay.baseAddress! + at, pattern.baseAddress!, pattern.count) == 0 { return haystack.startIndex + at }
                    offset = at + 1
                }
                return nil
            }
        }
    }

    static func count(_ needle: [UInt8], in haystack: [UInt8]) -> Int {
        var total = 0
        var from = 0
        while let found = find(needle, in: haystack[from...]) {
            total += 1
            from = found + needle.count
        }
        return total
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && self[(count - suffix.count)...].elementsEqual(suffix) }
}

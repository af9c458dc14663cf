@testable import ChatKitFCGI
import Testing

@Suite struct SSEDecoderTests {
    private func decode(_ chunks: [[UInt8]]) -> [SSEEvent] {
        var decoder = SSEDecoder()
        var events: [SSEEvent] = []
        for chunk in chunks { decoder.feed(chunk) { events.append($0) } }
        return events
    }

    private func decode(_ text: String) -> [SSEEvent] { decode([Array(text.utf8)]) }

    /// A realistic stream with CRLF, a comment, a multi-line data field, UTF-8 and an event name.
    private let stream = Array(
        ": keepalive\r\ndata: {\"a\":\"é😀\"}\r\n\r\nevent: note\ndata: line one\ndata: line two\n\nid: 7\rdata:no-space\r\rdata: [DONE]\n\n".utf8)

    private let expected = [
        SSEEvent(event: nil, data: "{\"a\":\"é😀\"}", id: nil, retry: nil),
        SSEEvent(event: "note", data: "line one\nline two", id: nil, retry: nil, spansLines: true),
        SSEEvent(event: nil, data: "no-space", id: "7", retry: nil),
        SSEEvent(event: nil, data: "[DONE]", id: "7", retry: nil),
    ]

    @Test func decodesAWholeStream() {
        #expect(decode([stream]) == expected)
    }

    @Test func decodesTheSameWhenSplitAtEveryByteOffset() {
        for offset in 0...stream.count {
            let events = decode([Array(stream[..<offset]), Array(stream[offset...])])
            #expect(events == expected, "split at \(offset)")
        }
    }

    @Test func decodesTheSameWhenFedOneByteAtATime() {
        #expect(decode(stream.map { [$0] }) == expected)
    }

    @Test func treatsACRLFSplitAcrossReadsAsOneLineEnd() {
        let events = decode([Array("data: a\r".utf8), Array("\ndata: b\r".utf8), Array("\n\r\n".utf8)])
        #expect(events.map(\.data) == ["a\nb"])
    }

    @Test func skipsALeadingByteOrderMark() {
        #expect(decode([[0xEF, 0xBB], [0xBF] + Array("data: x\n\n".utf8)]).map(\.data) == ["x"])
    }

    @Test func dropsEventsWithoutDataAndUnterminatedTails() {
        #expect(decode("event: ping\n\n: only a comment\n\ndata: tail-without-blank-line\n").isEmpty)
    }

    @Test func keepsEmptyDataAndColonsInValues() {
        #expect(decode("data\n\ndata: a: b\n\n").map(\.data) == ["", "a: b"])
    }

    @Test func reportsWhatItHoldsSoCallersCanCapIt() {
        var decoder = SSEDecoder()
        decoder.feed(Array("data: ".utf8) + Array(repeating: UInt8(ascii: "x"), count: 1000)) { _ in }
        #expect(decoder.pendingBytes >= 1000)
        decoder.feed(Array("\n\n".utf8)) { _ in }
        #expect(decoder.pendingBytes == 0)
    }

    @Test func matchesFieldNamesWholeNotByTheirStart() {
        let events = decode("dat: a\ndatas: b\nevents: c\nids: 9\nretry5: 1\ndata: d\n\n")
        #expect(events == [SSEEvent(event: nil, data: "d", id: nil, retry: nil)])
    }

    @Test func parsesRetryAndIgnoresUnknownFields() {
        let events = decode("retry: 1500\nfoo: bar\ndata: x\n\n")
        #expect(events == [SSEEvent(event: nil, data: "x", id: nil, retry: 1500)])
    }
}

@Suite struct ByteComparisonTests {
    private func check(_ text: String, equals literal: StaticString) -> Bool {
        Array(text.utf8).withUnsafeBytes { $0.equals(literal) }
    }

    private func check(_ text: String, startsWith literal: StaticString) -> Bool {
        Array(text.utf8).withUnsafeBytes { $0.starts(with: literal) }
    }

    @Test func comparesWholeBytesWithLiteralsOfAnyLength() {
        #expect(check("data", equals: "data"))
        #expect(!check("datas", equals: "data"))
        #expect(!check("dat", equals: "data"))
        #expect(check("", equals: ""))
        #expect(!check("", equals: "d"))
        #expect(check(":", equals: ":"))
        #expect(check("é", equals: "é"))
        #expect(!check(";", equals: ":"))
    }

    @Test func comparesPrefixes() {
        #expect(check("[DONE]", startsWith: "[DONE]"))
        #expect(check("[DONE] and more", startsWith: "[DONE]"))
        #expect(!check("[DON", startsWith: "[DONE]"))
        #expect(check("x", startsWith: ""))
        #expect(check(":x", startsWith: ":"))
    }
}

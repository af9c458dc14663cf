import Glibc

/// A `multipart/form-data` body (RFC 7578), as browsers send a file: its fields in order, each
/// a slice of the body, so a file is never copied to be read.
public struct MultipartForm {
    public struct Field {
        public var name = ""
        public var filename: String?
        public var contentType: String?
        public var bytes: ArraySlice<UInt8> = []
    }

    public let fields: [Field]

    /// Nil when `contentType` is not multipart/form-data with a boundary, or the body is not
    /// framed by it.
    public init?(body: [UInt8], contentType: String?) {
        guard let boundary = Self.boundary(of: contentType), let fields = Self.fields(of: body, boundary: boundary) else {
            return nil
        }
        self.fields = fields
    }

    public func field(_ name: String) -> Field? { fields.first { $0.name == name } }

    /// `multipart/form-data; boundary=…` (the boundary may be quoted).
    public static func boundary(of contentType: String?) -> String? {
        guard let contentType, contentType.lowercased().hasPrefix("multipart/form-data"),
            let boundary = parameter("boundary", in: contentType), (1...70).contains(boundary.utf8.count)
        else { return nil }
        return boundary
    }

    /// The parts between `--boundary` lines: each a head of lines, an empty line, the bytes.
    static func fields(of body: [UInt8], boundary: String) -> [Field]? {
        let delimiter = Array("--\(boundary)".utf8)
        let crlf: [UInt8] = [0x0D, 0x0A]
        guard var position = find(delimiter, in: body, from: 0) else { return nil }
        var fields: [Field] = []
        while true {
            position += delimiter.count
            if body[position...].starts(with: "--".utf8) { return fields }
            guard body[position...].starts(with: crlf), let headEnd = find(crlf + crlf, in: body, from: position) else {
                return nil
            }
            var field = Field()
            // A part without headers has its blank line right after the delimiter's.
            let head = headEnd > position ? body[(position + 2)..<headEnd] : []
            for line in head.split(separator: 0x0A) {
                let text = String(String(decoding: line, as: UTF8.self).trimmed())
                let lower = text.lowercased()
                if lower.hasPrefix("content-disposition:") {
                    field.name = parameter("name", in: text) ?? ""
                    field.filename = parameter("filename", in: text)
                } else if lower.hasPrefix("content-type:") {
                    field.contentType = String(text.dropFirst("content-type:".count).trimmed())
                }
            }
            let start = headEnd + 4
            guard let end = find(crlf + delimiter, in: body, from: start) else { return nil }
            field.bytes = body[start..<end]
            fields.append(field)
            position = end + 2
        }
    }

    /// `name="value"` (or unquoted) after the first `;` of a header value. A quoted value may
    /// hold `;`, so pieces are split outside quotes only.
    public static func parameter(_ name: String, in line: String) -> String? {
        var pieces: [Substring] = []
        var start = line.startIndex
        var quoted = false
        for index in line.indices {
            if line[index] == "\"" { quoted.toggle() }
            if line[index] == ";", !quoted {
                pieces.append(line[start..<index])
                start = line.index(after: index)
            }
        }
        pieces.append(line[start...])
        for piece in pieces.dropFirst() {
            let pair = piece.split(separator: "=", maxSplits: 1).map { $0.trimmed() }
            guard pair.count == 2, pair[0].lowercased() == name else { continue }
            let value = pair[1]
            return value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") ? String(value.dropFirst().dropLast()) : String(value)
        }
        return nil
    }

    /// memchr to each candidate first byte, memcmp for the rest: a file's bytes are searched
    /// once for the closing delimiter, at libc's speed.
    private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard !needle.isEmpty, start >= 0, haystack.count - start >= needle.count else { return nil }
        return haystack.withUnsafeBytes { hay in
            needle.withUnsafeBytes { pattern in
                let base = hay.baseAddress!
                let lastStart = hay.count - pattern.count
                var offset = start
                while offset <= lastStart {
                    guard let candidate = memchr(base + offset, Int32(pattern[0]), lastStart - offset + 1) else { return nil }
                    offset = UnsafeRawPointer(candidate) - base
                    if memcmp(candidate, pattern.baseAddress!, pattern.count) == 0 { return offset }
                    offset += 1
                }
                return nil
            }
        }
    }
}

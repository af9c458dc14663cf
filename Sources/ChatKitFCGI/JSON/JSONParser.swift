public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "\(message) at byte \(offset)" }
}

extension JSON {
    /// Nesting deeper than this is refused: the parser recurses, and a worker thread's stack is
    /// `CHATKIT_THREAD_STACK_KIB`.
    public static let maximumDepth = 64
    /// A document of more values than this is refused: a tree of small values takes about twenty
    /// times its text in memory (a 1 MB body of `[0],` raised the responder's peak by 22 MB).
    public static let maximumValues = 1 << 16

    /// A smaller `maximumDepth` leaves room for the levels a value will be nested in.
    public static func parse(_ text: String, maximumDepth: Int = maximumDepth) throws(JSONParseError) -> JSON {
        try parse(Array(text.utf8), maximumDepth: maximumDepth)
    }

    public static func parse(_ bytes: [UInt8], maximumDepth: Int = maximumDepth) throws(JSONParseError) -> JSON {
        try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) in try parse(buffer, maximumDepth: maximumDepth) }
    }

    public static func parse(_ buffer: UnsafeBufferPointer<UInt8>, maximumDepth: Int = maximumDepth) throws(JSONParseError) -> JSON {
        var parser = JSONParser(buffer, maximumDepth: maximumDepth)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.index == buffer.count else { throw parser.error("unexpected trailing data") }
        return value
    }
}

/// A strict RFC 8259 recursive-descent parser over UTF-8 bytes.
struct JSONParser {
    private let bytes: UnsafeBufferPointer<UInt8>
    private let maximumDepth: Int
    private(set) var index = 0
    /// Values built into the tree so far; skipped ones take no memory and are not counted.
    private var builtValues = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>, maximumDepth: Int = JSON.maximumDepth) {
        self.bytes = bytes
        self.maximumDepth = maximumDepth
    }

    func error(_ message: String) -> JSONParseError { JSONParseError(message: message, offset: index) }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSON {
        guard depth < maximumDepth else { throw error("nesting too deep") }
        builtValues += 1
        guard builtValues <= JSON.maximumValues else { throw error("more than \(JSON.maximumValues) values") }
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw error("unexpected character")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("invalid literal") }
        let expected = UnsafeBufferPointer(start: literal.utf8Start, count: count)
        for offset in 0..<count where bytes[index + offset] != expected[offset] {
            throw error("invalid literal")
        }
        index += count
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSON {
        var members: [(String, JSON)] = []
        try forEachMember(depth: depth) { name, parser throws(JSONParseError) in
            members.append((String(decoding: name, as: UTF8.self), try parser.parseValue(depth: depth + 1)))
        }
        return .object(members)
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSON {
        var elements: [JSON] = []
        try forEachElement(depth: depth) { parser throws(JSONParseError) in elements.append(try parser.parseValue(depth: depth + 1)) }
        return .array(elements)
    }

    private mutating func parseNumber() throws(JSONParseError) -> JSON {
        let start = index
        var isInteger = true
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else {
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if isInteger, index - start <= 18 {
            // Up to 18 characters cannot overflow: the digits add up here, without a String.
            var value = 0
            for byte in bytes[start..<index] where byte != UInt8(ascii: "-") { value = value * 10 + Int(byte - UInt8(ascii: "0")) }
            return .int(bytes[start] == UInt8(ascii: "-") ? -value : value)
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        if isInteger, let value = Int(text) { return .int(value) }
        guard let value = Double(text), value.isFinite else { throw error("number out of range") }
        return .double(value)
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func parseString() throws(JSONParseError) -> String {
        if let raw = try rawString() { return try validatedString(raw) }
        return try parseEscapedString()
    }

    /// Consumes a string without escapes and returns its bytes (not yet checked as UTF-8);
    /// nil, having consumed nothing, when it has escapes.
    private mutating func rawString() throws(JSONParseError) -> UnsafeBufferPointer<UInt8>? {
        let start = index + 1
        var end = start
        while end < bytes.count {
            let byte = bytes[end]
            if byte == UInt8(ascii: "\"") {
                index = end + 1
                return UnsafeBufferPointer(rebasing: bytes[start..<end])
            }
            if byte == UInt8(ascii: "\\") { return nil }
            if byte < 0x20 {
                index = end
                throw error("control character in string")
            }
            end += 1
        }
        index = end
        throw error("unterminated string")
    }

    private mutating func parseEscapedString() throws(JSONParseError) -> String {
        index += 1
        let start = index
        while bytes[index] != UInt8(ascii: "\\") { index += 1 }  // rawString found one
        var scalars = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return try scalars.withUnsafeBufferPointer { buffer throws(JSONParseError) in try validatedString(buffer) }
            case UInt8(ascii: "\\"):
                index += 1
                try appendEscape(to: &scalars)
            case 0..<0x20:
                throw error("control character in string")
            default:
                scalars.append(byte)
                index += 1
            }
        }
        throw error("unterminated string")
    }

    private func validatedString(_ utf8: UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> String {
        // ASCII needs no validation, and the generic validating initialiser costs a metadata
        // lookup per string: most strings on the per-chunk path are ASCII.
        if utf8.allSatisfy({ $0 < 0x80 }) { return String(decoding: utf8, as: UTF8.self) }
        guard let string = String(validating: utf8, as: UTF8.self) else { throw error("invalid UTF-8") }
        return string
    }

    /// Refuses invalid UTF-8 without making a string of it.
    private func checkUTF8(_ utf8: UnsafeBufferPointer<UInt8>) throws(JSONParseError) {
        if !utf8.allSatisfy({ $0 < 0x80 }) { _ = try validatedString(utf8) }
    }

    // MARK: Reading in place
    //
    // For the per-chunk path: walk a document, decode the few values wanted and check and skip
    // the rest, without building a tree for it.

    /// The next byte, if any (after whitespace the caller skipped).
    var next: UInt8? { index < bytes.count ? bytes[index] : nil }

    /// Checks one value as `parseValue` would, without keeping it.
    mutating func skipValue(depth: Int) throws(JSONParseError) {
        guard depth < maximumDepth else { throw error("nesting too deep") }
        switch next {
        case UInt8(ascii: "{")?: try forEachMember(depth: depth) { _, parser throws(JSONParseError) in try parser.skipValue(depth: depth + 1) }
        case UInt8(ascii: "[")?: try forEachElement(depth: depth) { parser throws(JSONParseError) in try parser.skipValue(depth: depth + 1) }
        case UInt8(ascii: "\"")?:
            if let raw = try rawString() {
                try checkUTF8(raw)
            } else {
                _ = try parseEscapedString()
            }
        default: _ = try parseValue(depth: depth)  // a scalar: nothing to allocate
        }
    }

    /// Calls `body` with each member's name (its UTF-8, unescaped and checked) and the parser at
    /// its value, which `body` must consume. The parser must be at the object's `{`.
    mutating func forEachMember(
        depth: Int, _ body: (UnsafeBufferPointer<UInt8>, inout JSONParser) throws(JSONParseError) -> Void
    ) throws(JSONParseError) {
        try forEachItem(depth: depth, closing: UInt8(ascii: "}"), container: "object") { parser throws(JSONParseError) in
            guard parser.next == UInt8(ascii: "\"") else { throw parser.error("expected member name") }
            if let raw = try parser.rawString() {
                try parser.checkUTF8(raw)
                try parser.expectColon()
                try body(raw, &parser)
            } else {
                let name = Array(try parser.parseEscapedString().utf8)
                try parser.expectColon()
                try name.withUnsafeBufferPointer { name throws(JSONParseError) in try body(name, &parser) }
            }
        }
    }

    /// Calls `body` with the parser at each element, which `body` must consume. The parser must
    /// be at the array's `[`.
    mutating func forEachElement(depth: Int, _ body: (inout JSONParser) throws(JSONParseError) -> Void) throws(JSONParseError) {
        try forEachItem(depth: depth, closing: UInt8(ascii: "]"), container: "array", body)
    }

    /// The walk both containers share: past the opening bracket, `item` once per item, the
    /// separators, the closing bracket.
    private mutating func forEachItem(
        depth: Int, closing: UInt8, container: String, _ item: (inout JSONParser) throws(JSONParseError) -> Void
    ) throws(JSONParseError) {
        guard depth < maximumDepth else { throw error("nesting too deep") }
        index += 1
        skipWhitespace()
        if next == closing {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            try item(&self)
            skipWhitespace()
            switch next {
            case UInt8(ascii: ",")?: index += 1
            case closing?: index += 1; return
            case nil: throw error("unterminated \(container)")
            default: throw error("expected ',' or '\(Character(Unicode.Scalar(closing)))'")
            }
        }
    }

    private mutating func expectColon() throws(JSONParseError) {
        skipWhitespace()
        guard next == UInt8(ascii: ":") else { throw error("expected ':'") }
        index += 1
        skipWhitespace()
    }

    private mutating func appendEscape(to output: inout [UInt8]) throws(JSONParseError) {
        guard index < bytes.count else { throw error("unterminated escape") }
        let byte = bytes[index]
        index += 1
        switch byte {
        case UInt8(ascii: "\""): output.append(0x22)
        case UInt8(ascii: "\\"): output.append(0x5C)
        case UInt8(ascii: "/"): output.append(0x2F)
        case UInt8(ascii: "b"): output.append(0x08)
        case UInt8(ascii: "f"): output.append(0x0C)
        case UInt8(ascii: "n"): output.append(0x0A)
        case UInt8(ascii: "r"): output.append(0x0D)
        case UInt8(ascii: "t"): output.append(0x09)
        case UInt8(ascii: "u"):
            var code = try parseHex4()
            if (0xD800..<0xDC00).contains(code), index + 5 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                bytes[index + 1] == UInt8(ascii: "u")
            {
                let start = index
                index += 2
                let low = try parseHex4()
                if (0xDC00..<0xE000).contains(low) {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    index = start  // not a pair: the second escape is read on its own
                }
            }
            // A lone surrogate (text cut inside an emoji by JavaScript or Python) cannot be
            // stored as UTF-8: it becomes U+FFFD, as browsers do when they decode it.
            let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
            output.append(contentsOf: UTF8.encode(scalar)!)
        default:
            throw error("invalid escape")
        }
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("invalid \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }
}

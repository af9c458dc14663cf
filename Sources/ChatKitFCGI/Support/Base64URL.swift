/// Unpadded base64url (RFC 4648 §5), as JOSE uses it.
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let decodeTable = Base64Symbols.table(alphabet)

    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        Base64Symbols.encode(bytes, alphabet: alphabet, padded: false)
    }

    /// Strict: no padding, no whitespace, nothing outside the alphabet.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? { decode(text.utf8) }

    public static func decode(_ symbols: some Collection<UInt8>) -> [UInt8]? {
        Base64Symbols.decode(symbols, table: decodeTable)
    }
}

/// Standard base64 (RFC 4648 §4), as ChatKit sends dictated audio: the padding may be left
/// off, and nothing else outside the alphabet is allowed.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let decodeTable = Base64Symbols.table(alphabet)

    /// Padded, as data URLs carry it.
    public static func encode(_ bytes: [UInt8]) -> String { Base64Symbols.encode(bytes, alphabet: alphabet, padded: true) }

    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var symbols = Substring(text).utf8[...]
        if symbols.count % 4 == 0 {
            for _ in 0..<2 where symbols.last == UInt8(ascii: "=") { symbols = symbols.dropLast() }
        }
        return Base64Symbols.decode(symbols, table: decodeTable)
    }
}

/// Both alphabets' coding: six bits per symbol; decoding ignores the spare bits of the last one.
private enum Base64Symbols {
    static func encode<Bytes: Collection>(_ bytes: Bytes, alphabet: [UInt8], padded: Bool) -> String
    where Bytes.Element == UInt8 {
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var iterator = bytes.makeIterator()
        while let first = iterator.next() {
            let second = iterator.next()
            let third = second == nil ? nil : iterator.next()
            let group = UInt32(first) << 16 | UInt32(second ?? 0) << 8 | UInt32(third ?? 0)
            output.append(alphabet[Int(group >> 18 & 0x3F)])
            output.append(alphabet[Int(group >> 12 & 0x3F)])
            if second != nil { output.append(alphabet[Int(group >> 6 & 0x3F)]) } else if padded { output.append(UInt8(ascii: "=")) }
            if third != nil { output.append(alphabet[Int(group & 0x3F)]) } else if padded { output.append(UInt8(ascii: "=")) }
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func table(_ alphabet: [UInt8]) -> [UInt8] {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, symbol) in alphabet.enumerated() { table[Int(symbol)] = UInt8(value) }
        return table
    }

    static func decode(_ symbols: some Collection<UInt8>, table: [UInt8]) -> [UInt8]? {
        guard symbols.count % 4 != 1 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(symbols.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bitCount = 0
        for symbol in symbols {
            let value = table[Int(symbol)]
            guard value != 0xFF else { return nil }
            accumulator = accumulator << 6 | UInt32(value)
            bitCount += 6
            if bitCount >= 8 {
                bitCount -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bitCount)))
            }
        }
        return output
    }
}

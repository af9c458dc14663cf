import Glibc

extension StringProtocol {
    /// Drops whitespace and line ends (including the "\r\n" grapheme) at both ends.
    func trimmed() -> SubSequence {
        guard let start = firstIndex(where: { !$0.isWhitespace }), let end = lastIndex(where: { !$0.isWhitespace }) else {
            return self[endIndex...]
        }
        return self[start...end]
    }
}

extension String {
    /// As a store keeps it: U+0000, which no PostgreSQL text can hold, becomes U+FFFD (the
    /// character that stands for one that could not be kept), in every store alike.
    var storable: String {
        // Searched where the bytes lie: through the view's iterator it costs several times more.
        guard utf8.withContiguousStorageIfAvailable({ $0.contains(0) }) ?? utf8.contains(0) else { return self }
        return String(String.UnicodeScalarView(unicodeScalars.map { $0 == "\0" ? "\u{FFFD}" : $0 }))
    }
}

/// Comparisons with a literal for bytes read off the wire: `memcmp`, where a generic
/// `elementsEqual` against a `String.UTF8View` costs a few hundred instructions a call on the
/// per-chunk path. Inlined, so the literal's length and address are constants.
extension UnsafeRawBufferPointer {
    @inline(__always)
    func equals(_ literal: StaticString) -> Bool {
        literal.withUTF8Buffer { count == $0.count && hasPrefix($0) }
    }

    @inline(__always)
    func starts(with literal: StaticString) -> Bool {
        literal.withUTF8Buffer { hasPrefix($0) }
    }

    /// A `StaticString` may hold one Unicode scalar instead of a pointer to bytes
    /// (`utf8Start` would trap on it); `withUTF8Buffer` gives either as bytes.
    @inline(__always)
    private func hasPrefix(_ prefix: UnsafeBufferPointer<UInt8>) -> Bool {
        count >= prefix.count && (prefix.isEmpty || memcmp(baseAddress!, prefix.baseAddress!, prefix.count) == 0)
    }
}

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
        guard utf8.contains(0) else { return self }
        return String(String.UnicodeScalarView(unicodeScalars.map { $0 == "\0" ? "\u{FFFD}" : $0 }))
    }
}

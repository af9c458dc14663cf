extension StringProtocol {
    /// Drops whitespace and line ends (including the "\r\n" grapheme) at both ends.
    func trimmed() -> SubSequence {
        guard let start = firstIndex(where: { !$0.isWhitespace }), let end = lastIndex(where: { !$0.isWhitespace }) else {
            return self[endIndex...]
        }
        return self[start...end]
    }
}

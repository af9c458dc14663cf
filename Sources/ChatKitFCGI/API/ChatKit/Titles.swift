/// Thread titles: a short truncation of the first message by default, or a few words written
/// by the model (`CHATKIT_TITLES=model`), falling back to the truncation if that call fails.
public enum Titles {
    static func make(for message: String, style: Config.TitleStyle, model: any ChatModel) async -> String {
        guard style == .model else { return truncate(message) }
        let prompt = [
            ChatMessage(role: .system, content: "Write a title of at most six words for a chat that begins with the user's "
                        + "message. Answer with the title only, no quotes."),
            .user(String(message.prefix(2000))),
        ]
        let answer = await model.stream(messages: prompt, tools: .none, observer: SilentObserver())
        let title = answer.text.trimmed().trimmingQuotes()
        guard answer.failure == nil, !title.isEmpty else { return truncate(message) }
        return truncate(String(title))
    }

    /// What a thread is named after: the user's first message, or, when it is attachments
    /// alone, its first file's name.
    static func source(of message: ChatMessage) -> String {
        let text = message.content ?? ""
        return text.trimmed().isEmpty ? message.attachments.first?.name ?? text : text
    }

    /// On a word boundary where one is near, with an ellipsis when cut.
    public static func truncate(_ message: String, limit: Int = 60) -> String {
        let (text, cut) = prefix(message.trimmed(), characters: limit)
        guard cut else { return flattened(text) }
        if let space = text.lastIndex(where: { $0 == " " || $0.isNewline }),
            text.distance(from: text.startIndex, to: space) >= limit / 2 {
            return flattened(text[..<space]) + "…"
        }
        return flattened(text) + "…"
    }

    /// At most `limit` characters and four times as many code points (a character may carry any
    /// number of combining marks, and a title must stay small), and whether anything was cut.
    /// Walked by index, not made Character by Character: that cost more than the rest of a new
    /// thread's request.
    static func prefix(_ text: Substring, characters limit: Int) -> (Substring, cut: Bool) {
        var bounded = text
        var cut = false
        let scalars = text.unicodeScalars
        if let end = scalars.index(scalars.startIndex, offsetBy: 4 * limit, limitedBy: scalars.endIndex), end < scalars.endIndex {
            bounded = Substring(scalars[..<end])
            cut = true
            // The cut may fall inside the last character (an emoji sequence, say), so that one
            // goes, unless it is the only one.
            let last = bounded.index(before: bounded.endIndex)
            if last > bounded.startIndex { bounded = bounded[..<last] }
        }
        if let end = bounded.index(bounded.startIndex, offsetBy: limit, limitedBy: bounded.endIndex), end < bounded.endIndex {
            return (bounded[..<end], true)
        }
        return (bounded, cut)
    }

    /// One line: newlines become spaces. Only text with a byte that can begin a newline
    /// character (ASCII 10 to 13, U+0085, U+2028, U+2029) needs looking at Character by Character.
    private static func flattened(_ text: Substring) -> String {
        let mayHoldNewline = text.utf8.contains { (0x0A...0x0D).contains($0) || $0 == 0xC2 || $0 == 0xE2 }
        return mayHoldNewline ? String(text.map { $0.isNewline ? " " : $0 }) : String(text)
    }

    /// The title call streams nowhere; nobody is waiting on it.
    private final class SilentObserver: ModelStreamObserver {
        func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool { true }
        func idle(canWrite: @autoclosure () -> Bool) -> Bool { true }
        var clientDescriptor: Int32? { nil }
        var outputHasRoom: Bool { true }
    }
}

extension Substring {
    fileprivate func trimmingQuotes() -> Substring {
        let quotes: Set<Character> = ["\"", "'", "“", "”"]
        return drop(while: { quotes.contains($0) }).reversed().drop(while: { quotes.contains($0) }).reversed()
            .reduce(into: Substring()) { $0.append($1) }
    }
}

/// Thread titles: a short truncation of the first message by default, or a few words written
/// by the model (`CHATKIT_TITLES=model`), falling back to the truncation if that call fails.
public enum Titles {
    public enum Style: String, Sendable { case truncate, model }

    static func make(for message: String, style: Style, model: any ChatModel) -> String {
        guard style == .model else { return truncate(message) }
        let prompt = [
            ChatMessage(role: .system, content: "Write a title of at most six words for a chat that begins with the user's "
                        + "message. Answer with the title only, no quotes."),
            .user(String(message.prefix(2000))),
        ]
        let answer = model.stream(messages: prompt, tools: .none, observer: SilentObserver())
        let title = answer.text.trimmed().trimmingQuotes()
        guard answer.failure == nil, !title.isEmpty else { return truncate(message) }
        return truncate(String(title))
    }

    /// On a word boundary where one is near, with an ellipsis when cut.
    public static func truncate(_ message: String, limit: Int = 60) -> String {
        let flat = String(message.trimmed().map { $0.isNewline ? " " : $0 })
        guard flat.count > limit else { return flat }
        let cut = flat.prefix(limit)
        let boundary = cut.lastIndex(of: " ").map { cut[..<$0] } ?? cut
        return String(boundary.count >= limit / 2 ? boundary : cut) + "…"
    }

    /// The title call streams nowhere; nobody is waiting on it.
    private final class SilentObserver: ModelStreamObserver {
        func modelChunk(payload: [UInt8], parsed: ChatCompletionChunk) -> Bool { true }
        func idle(canWrite: Bool) -> Bool { true }
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

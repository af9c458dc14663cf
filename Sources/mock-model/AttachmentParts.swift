import ChatKitFCGI

/// What the mock says of the files a message carried, so a test sees their bytes arrived
/// intact: `image image/png 1234 bytes`, `file report.pdf application/pdf 5678 bytes`,
/// `text notes.txt text/plain 12 bytes`; a part that is not a base64 data URL is `unreadable`.
enum AttachmentParts {
    /// A text file's part: it opens with the responder's header, and is not what the user typed.
    static func isAttachedText(_ text: String) -> Bool { text.hasPrefix(Attachment.textPartPrefix) }

    static func describe(_ message: JSON) -> [String] {
        guard let parts = message["content"]?.arrayValue else { return [] }
        return parts.compactMap { part in
            switch part["type"]?.stringValue {
            case "image_url":
                guard let decoded = part["image_url"]?["url"]?.stringValue.flatMap(ChatRequest.dataURL) else { return "unreadable" }
                return "image \(decoded.mimeType) \(decoded.bytes.count) bytes"
            case "file":
                guard let name = part["file"]?["filename"]?.stringValue,
                    let decoded = part["file"]?["file_data"]?.stringValue.flatMap(ChatRequest.dataURL)
                else { return "unreadable" }
                return "file \(name) \(decoded.mimeType) \(decoded.bytes.count) bytes"
            case "text":
                guard let text = part["text"]?.stringValue, isAttachedText(text), let lineEnd = text.firstIndex(of: "\n") else {
                    return nil
                }
                // "[Attached file NAME (TYPE)]": the type is in the last parentheses.
                let header = text[text.index(text.startIndex, offsetBy: Attachment.textPartPrefix.count)..<lineEnd].dropLast()
                guard let open = header.lastIndex(of: "(") else { return "unreadable" }
                let name = header[..<open].dropLast()
                let type = header[header.index(after: open)...].dropLast()
                return "text \(name) \(type) \(text[text.index(after: lineEnd)...].utf8.count) bytes"
            default:
                return nil
            }
        }
    }
}

/// A dictated clip, as ChatKit's `input.transcribe` sends it, for the model server's
/// `/audio/transcriptions`.
public struct AudioClip: Sendable {
    public let bytes: [UInt8]
    /// The media type without its parameters: `audio/webm` of `audio/webm;codecs=opus`.
    public let mediaType: String

    /// What ChatKit's recorder produces (WebM or Ogg with Opus, MP4) and what OpenAI's endpoint
    /// takes besides, with the file extension it goes by.
    static let fileExtensions: [String: String] = [
        "audio/webm": "webm", "audio/ogg": "ogg", "audio/mp4": "mp4", "audio/m4a": "m4a", "audio/x-m4a": "m4a",
        "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/x-wav": "wav", "audio/flac": "flac",
    ]

    public static var mediaTypes: [String] { fileExtensions.keys.sorted() }

    /// Nil for a type the transcription endpoint does not take.
    public init?(bytes: [UInt8], mimeType: String) {
        let mediaType = mimeType.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)[0].trimmed().lowercased()
        guard Self.fileExtensions[mediaType] != nil else { return nil }
        self.bytes = bytes
        self.mediaType = mediaType
    }

    /// The endpoint tells the format by the file name's extension.
    public var filename: String { "audio." + Self.fileExtensions[mediaType, default: "bin"] }
}

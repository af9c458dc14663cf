import Glibc

/// One line per call to stderr (the journal under systemd). Never pass tokens or secrets.
public enum Log {
    public static func info(_ message: String) { write("info", message) }
    public static func warning(_ message: String) { write("warning", message) }
    public static func error(_ message: String) { write("error", message) }

    /// Longer messages are cut: parts of them can come from clients.
    static let maximumLineBytes = 2048

    private static func write(_ level: String, _ message: String) {
        toStandardError(line(level, message))
    }

    /// A whole line per call: a pipe takes up to 4 KiB in one piece, so lines written by
    /// many threads never interleave.
    static func toStandardError(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            // On failure stderr is closed or full: there is nowhere left to say so.
            _ = try? System.writeAll(2, buffer)
        }
    }

    static func line(_ level: String, _ message: String) -> [UInt8] {
        var line = Array("chatkit-fcgi \(level): ".utf8)
        // One event per line: control characters (CR, LF, ESC, ...) must not forge or hide lines.
        line.append(contentsOf: message.utf8.prefix(maximumLineBytes).map { $0 < 0x20 || $0 == 0x7F ? 0x20 : $0 })
        line.append(0x0A)
        return line
    }
}

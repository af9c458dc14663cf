import Glibc

/// One line per call to stderr (the journal under systemd). Never pass tokens or secrets.
public enum Log {
    public static func info(_ message: String) { write("info", message) }
    public static func warning(_ message: String) { write("warning", message) }
    public static func error(_ message: String) { write("error", message) }

    /// Longer messages are cut: parts of them can come from clients.
    static let maximumLineBytes = 2048

    private static func write(_ level: String, _ message: String) {
        let bytes = line(level, message)
        bytes.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    static func line(_ level: String, _ message: String) -> [UInt8] {
        var line = Array("chatkit-fcgi \(level): ".utf8)
        // One event per line: control characters (CR, LF, ESC, ...) must not forge or hide lines.
        line.append(contentsOf: message.utf8.prefix(maximumLineBytes).map { $0 < 0x20 || $0 == 0x7F ? 0x20 : $0 })
        line.append(0x0A)
        return line
    }
}

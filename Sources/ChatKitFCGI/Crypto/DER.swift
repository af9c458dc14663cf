/// Just enough DER to build the SubjectPublicKeyInfo and ECDSA-Sig-Value structures that
/// OpenSSL expects from JWK key material and JWS signatures.
enum DER {
    static func sequence(_ parts: [UInt8]...) -> [UInt8] { element(tag: 0x30, parts.flatMap { $0 }) }

    static func bitString(_ content: [UInt8]) -> [UInt8] { element(tag: 0x03, [0x00] + content) }

    /// A non-negative INTEGER from unsigned big-endian bytes.
    static func unsignedInteger(_ bytes: [UInt8]) -> [UInt8] {
        var trimmed = Array(bytes.drop(while: { $0 == 0 }))
        if trimmed.isEmpty || trimmed[0] & 0x80 != 0 { trimmed.insert(0, at: 0) }
        return element(tag: 0x02, trimmed)
    }

    static let null: [UInt8] = [0x05, 0x00]
    static let ed25519Algorithm: [UInt8] = [0x06, 0x03, 0x2B, 0x65, 0x70]
    static let ecPublicKeyAlgorithm: [UInt8] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
    static let prime256v1Curve: [UInt8] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]
    static let rsaEncryptionAlgorithm: [UInt8] = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]

    private static func element(tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        [tag] + length(content.count) + content
    }

    private static func length(_ count: Int) -> [UInt8] {
        if count < 0x80 { return [UInt8(count)] }
        var bytes: [UInt8] = []
        var remaining = count
        while remaining > 0 {
            bytes.insert(UInt8(remaining & 0xFF), at: 0)
            remaining >>= 8
        }
        return [0x80 | UInt8(bytes.count)] + bytes
    }
}

import CCrypto

/// The one place that talks to OpenSSL's libcrypto.
public enum Crypto {
    public static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = key.withUnsafeBufferPointer { keyBuffer in
            message.withUnsafeBufferPointer { messageBuffer in
                HMAC(
                    EVP_sha256(), keyBuffer.baseAddress, Int32(keyBuffer.count),
                    messageBuffer.baseAddress, messageBuffer.count, &digest, &length)
            }
        }
        precondition(result != nil, "HMAC-SHA256 cannot fail with a valid digest")
        return Array(digest.prefix(Int(length)))
    }

    /// Compares without an early exit, so timing does not reveal how many bytes matched.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return CRYPTO_memcmp(a, b, a.count) == 0
    }

    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        precondition(RAND_bytes(&bytes, Int32(count)) == 1, "the OpenSSL random generator failed")
        return bytes
    }
}

/// A public key parsed from DER SubjectPublicKeyInfo.
///
/// `@unchecked Sendable`: after `init` the EVP_PKEY is only read; OpenSSL 3 allows concurrent
/// verification with one key as long as each call has its own EVP_MD_CTX, which `verify` does.
public final class PublicKey: @unchecked Sendable {
    public enum Kind: Sendable { case ed25519, ecP256, rsa }

    private let key: OpaquePointer
    public let kind: Kind

    public init?(subjectPublicKeyInfo der: [UInt8], kind: Kind) {
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
        guard let parsed else { return nil }
        key = parsed
        self.kind = kind
    }

    deinit { EVP_PKEY_free(key) }

    public var bits: Int { Int(EVP_PKEY_get_bits(key)) }

    /// Ed25519 signs the message itself; ECDSA and RSA sign its SHA-256 digest.
    /// ECDSA signatures must be DER here (JWS's raw R||S is converted by the caller).
    public func verify(signature: [UInt8], message: [UInt8]) -> Bool {
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        let digest = kind == .ed25519 ? nil : EVP_sha256()
        guard EVP_DigestVerifyInit(context, nil, digest, nil, key) == 1 else { return false }
        return EVP_DigestVerify(context, signature, signature.count, message, message.count) == 1
    }
}

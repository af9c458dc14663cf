/// Signs and checks the URLs a browser uses for an attachment without the app's token: the
/// upload (ChatKit may send it without the app's `fetch`) and the preview (an `<img>`). The
/// URL itself is the credential, for one attachment, one user, one purpose, until it expires:
/// an HMAC-SHA256 over all four with a key every host shares.
public struct URLSigner: Sendable {
    public enum Purpose: String, Sendable { case upload, preview }

    private let key: [UInt8]

    public init(key: [UInt8]) {
        self.key = key
    }

    /// The key `config` names; else one derived from the Better Auth secret, which every host
    /// has too; else a random one, good for this process only (`check-config` says so).
    public init(config: Config) {
        if let key = config.urlSigningKey {
            self.init(key: Array(key.utf8))
        } else if let secret = config.betterAuthSecret {
            self.init(key: Crypto.hmacSHA256(key: Array(secret.utf8), message: Array("chatkit attachment URLs".utf8)))
        } else {
            self.init(key: Crypto.randomBytes(32))
        }
    }

    public func signature(attachmentID: String, user: String, purpose: Purpose, expires: Int64) -> String {
        // Lengths first: no two different tuples sign the same bytes.
        let message = [purpose.rawValue, attachmentID, user, String(expires)].map { "\($0.utf8.count):\($0)" }.joined()
        return Base64URL.encode(Crypto.hmacSHA256(key: key, message: Array(message.utf8)))
    }

    public func isValid(_ signature: String, attachmentID: String, user: String, purpose: Purpose, expires: Int64,
                        now: Int64 = Int64(Clock.unixTime())) -> Bool {
        guard expires >= now else { return false }
        let expected = self.signature(attachmentID: attachmentID, user: user, purpose: purpose, expires: expires)
        return Crypto.constantTimeEquals(Array(expected.utf8), Array(signature.utf8))
    }
}

/// The URLs one user is handed for their attachments, valid for `lifetimeSeconds`.
struct AttachmentLinks {
    let signer: URLSigner
    /// Where browsers reach this server (`CHATKIT_PUBLIC_URL`, or the request's own origin).
    let baseURL: String
    let user: String
    let lifetimeSeconds: Int

    /// The direct-upload URL, and the root of the signed ones.
    static let path = "/api/chatkit/attachments"

    func url(_ attachmentID: String, _ purpose: URLSigner.Purpose) -> String {
        let expires = Int64(Clock.unixTime()) + Int64(lifetimeSeconds)
        let signature = signer.signature(attachmentID: attachmentID, user: user, purpose: purpose, expires: expires)
        return "\(baseURL)\(Self.path)/\(attachmentID)/\(purpose.rawValue)?expires=\(expires)&signature=\(signature)"
    }
}

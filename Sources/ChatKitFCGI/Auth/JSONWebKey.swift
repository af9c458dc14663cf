/// The JWS algorithms this backend verifies. A key has exactly one.
public enum JWSAlgorithm: String, Sendable, CaseIterable {
    case hs256 = "HS256"
    case edDSA = "EdDSA"
    case es256 = "ES256"
    case rs256 = "RS256"
}

/// An asymmetric verification key from a JWKS.
public struct JSONWebKey: Sendable {
    public struct Unsupported: Error, CustomStringConvertible {
        public let description: String
    }

    public let id: String?
    public let algorithm: JWSAlgorithm
    private let key: PublicKey

    /// RFC 8725 §3.5 and NIST: shorter RSA moduli are not safe to accept.
    public static let minimumRSABits = 2048

    public init(_ jwk: JSON) throws(Unsupported) {
        guard case .object = jwk else { throw Unsupported(description: "key is not an object") }
        id = jwk["kid"]?.stringValue
        if let use = jwk["use"]?.stringValue, use != "sig" { throw Unsupported(description: "use \(use)") }
        if let operations = jwk["key_ops"]?.arrayValue, !operations.contains(.string("verify")) {
            throw Unsupported(description: "key_ops without verify")
        }
        let declared = jwk["alg"]?.stringValue
        func coordinate(_ name: String, bytes: Int? = nil) throws(Unsupported) -> [UInt8] {
            guard let text = jwk[name]?.stringValue, let value = Base64URL.decode(text), !value.isEmpty,
                bytes == nil || value.count == bytes
            else { throw Unsupported(description: "bad or missing \(name)") }
            return value
        }
        switch (jwk["kty"]?.stringValue, jwk["crv"]?.stringValue) {
        case ("OKP", "Ed25519"):
            algorithm = .edDSA
            let x = try coordinate("x", bytes: 32)
            key = try Self.publicKey(DER.sequence(DER.sequence(DER.ed25519Algorithm), DER.bitString(x)), .ed25519)
        case ("EC", "P-256"):
            algorithm = .es256
            let point = [0x04] + (try coordinate("x", bytes: 32)) + (try coordinate("y", bytes: 32))
            key = try Self.publicKey(
                DER.sequence(DER.sequence(DER.ecPublicKeyAlgorithm, DER.prime256v1Curve), DER.bitString(point)),
                .ecP256)
        case ("RSA", _):
            algorithm = .rs256
            let rsaKey = DER.sequence(DER.unsignedInteger(try coordinate("n")), DER.unsignedInteger(try coordinate("e")))
            key = try Self.publicKey(
                DER.sequence(DER.sequence(DER.rsaEncryptionAlgorithm, DER.null), DER.bitString(rsaKey)), .rsa)
            guard key.bits >= Self.minimumRSABits else { throw Unsupported(description: "RSA key under 2048 bits") }
        case let (kty, crv):
            throw Unsupported(description: "key type \(kty ?? "?") \(crv ?? "")")
        }
        if let declared, declared != algorithm.rawValue {
            throw Unsupported(description: "alg \(declared) does not match the key type")
        }
    }

    private static func publicKey(_ der: [UInt8], _ kind: PublicKey.Kind) throws(Unsupported) -> PublicKey {
        guard let key = PublicKey(subjectPublicKeyInfo: der, kind: kind) else {
            throw Unsupported(description: "OpenSSL rejected the key material")
        }
        return key
    }

    /// `signature` is the JWS signature as sent: raw R||S for ES256, not DER.
    public func verify(signature: [UInt8], signingInput: [UInt8]) -> Bool {
        switch algorithm {
        case .edDSA:
            return signature.count == 64 && key.verify(signature: signature, message: signingInput)
        case .es256:
            guard signature.count == 64 else { return false }
            let der = DER.sequence(
                DER.unsignedInteger(Array(signature[..<32])), DER.unsignedInteger(Array(signature[32...])))
            return key.verify(signature: der, message: signingInput)
        case .rs256:
            return key.verify(signature: signature, message: signingInput)
        case .hs256:
            return false
        }
    }
}

/// The usable keys of a JWKS document. Entries we cannot use are skipped, not fatal, so one
/// exotic key does not lock every user out.
public struct JSONWebKeySet: Sendable {
    public let keys: [JSONWebKey]
    public let skipped: [String]

    public init(document: [UInt8]) throws(AuthError) {
        guard let json = try? JSON.parse(document), let entries = json["keys"]?.arrayValue else {
            throw AuthError.keySetUnavailable("JWKS is not a JSON object with a keys array")
        }
        var keys: [JSONWebKey] = []
        var skipped: [String] = []
        for entry in entries {
            do throws(JSONWebKey.Unsupported) {
                keys.append(try JSONWebKey(entry))
            } catch {
                skipped.append("\(entry["kid"]?.stringValue ?? "(no kid)"): \(error.description)")
            }
        }
        self.keys = keys
        self.skipped = skipped
    }

    public func key(id: String) -> JSONWebKey? { keys.first { $0.id == id } }
}

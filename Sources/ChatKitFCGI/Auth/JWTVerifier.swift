/// Why a request was not authenticated. The reason is logged; the client sees only `detail`.
public enum AuthError: Error, Equatable, CustomStringConvertible {
    case missingToken
    case malformed(String)
    case algorithmNotAllowed(String)
    case unknownKey
    case badSignature
    case expired
    case notYetValid
    case issuerMismatch
    case audienceMismatch
    case missingClaim(String)
    case keySetUnavailable(String)

    public var description: String {
        switch self {
        case .missingToken: "no bearer token"
        case .malformed(let why): "malformed token: \(why)"
        case .algorithmNotAllowed(let alg): "algorithm not allowed: \(alg.count <= 16 ? alg : String(alg.prefix(16)) + "…")"
        case .unknownKey: "no key for the token's kid"
        case .badSignature: "bad signature"
        case .expired: "token expired"
        case .notYetValid: "token not yet valid"
        case .issuerMismatch: "wrong issuer"
        case .audienceMismatch: "wrong audience"
        case .missingClaim(let name): "missing claim \(name)"
        case .keySetUnavailable(let why): "JWKS unavailable: \(why)"
        }
    }

    /// What the client is told: enough to know whether to refresh the token, nothing more.
    public var detail: String {
        switch self {
        case .missingToken: "missing bearer token"
        case .expired: "token expired"
        default: "invalid token"
        }
    }
}

/// A token that passed every check. `subject` is the user id for all data access.
public struct VerifiedToken: Sendable {
    public let subject: String
    public let claims: JSON
}

/// Verifies Better Auth JWTs: HS256 with the shared secret, and EdDSA/ES256/RS256 with JWKS keys.
/// The configured keys decide which algorithms are acceptable, never the token's header alone.
public struct JWTVerifier: Sendable {
    public var issuer: String?
    public var audience: String?
    public var leewaySeconds: Double
    public static let maximumTokenBytes = 8192

    private let hmacSecret: [UInt8]?
    private let keySource: JWKSource?
    private let clock: @Sendable () -> Double

    public init(
        hmacKey: [UInt8]?, keySource: JWKSource?, issuer: String?, audience: String?,
        leewaySeconds: Double = 60, clock: @escaping @Sendable () -> Double = Clock.unixTime
    ) {
        self.hmacSecret = hmacKey
        self.keySource = keySource
        self.issuer = issuer
        self.audience = audience
        self.leewaySeconds = leewaySeconds
        self.clock = clock
    }

    /// Loads the JWKS now, so a wrong URL or file shows up at start rather than at first login.
    public func preloadKeys() throws(AuthError) {
        try keySource?.load()
    }

    /// Reads `Authorization: Bearer <jwt>`.
    public func verify(authorizationHeader: String?) throws(AuthError) -> VerifiedToken {
        guard let header = authorizationHeader else { throw .missingToken }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { throw .missingToken }
        return try verify(token: parts[1].trimmed())
    }

    public func verify(token: some StringProtocol) throws(AuthError) -> VerifiedToken {
        guard token.utf8.count <= Self.maximumTokenBytes else { throw .malformed("token too large") }
        // Split as bytes: the separator is ASCII, and splitting Characters costs more than the HMAC.
        let bytes = Array(token.utf8)
        let segments = bytes.split(separator: UInt8(ascii: "."), maxSplits: 3, omittingEmptySubsequences: false)
        guard segments.count == 3 else { throw .malformed("expected three segments") }
        guard let headerBytes = Base64URL.decode(segments[0]), let header = try? JSON.parse(headerBytes),
            case .object = header
        else { throw .malformed("header") }
        guard let signature = Base64URL.decode(segments[2]) else { throw .malformed("signature encoding") }
        guard let algName = header["alg"]?.stringValue else { throw .malformed("no alg") }
        if header["crit"] != nil { throw .malformed("crit header not understood") }
        if let typ = header["typ"], typ != .string("JWT"), typ != .string("jwt") { throw .malformed("typ") }

        let signingInput = Array(bytes[..<segments[1].endIndex])
        switch JWSAlgorithm(rawValue: algName) {
        case .hs256:
            guard let hmacSecret else { throw .algorithmNotAllowed(algName) }
            let expected = Crypto.hmacSHA256(key: hmacSecret, message: signingInput)
            guard Crypto.constantTimeEquals(expected, signature) else { throw .badSignature }
        case .some(let algorithm):
            guard let keySource else { throw .algorithmNotAllowed(algName) }
            // Better Auth always sends a kid, and its own verifier requires one.
            guard let kid = header["kid"]?.stringValue else { throw .malformed("no kid") }
            let key = try keySource.key(id: kid)
            guard key.algorithm == algorithm else { throw .algorithmNotAllowed(algName) }
            guard key.verify(signature: signature, signingInput: signingInput) else { throw .badSignature }
        case .none:
            throw .algorithmNotAllowed(algName)
        }

        guard let payloadBytes = Base64URL.decode(segments[1]), let claims = try? JSON.parse(payloadBytes),
            case .object = claims
        else { throw .malformed("payload is not a JSON object") }
        try checkClaims(claims)
        guard let subject = claims["sub"]?.stringValue, !subject.isEmpty else { throw .missingClaim("sub") }
        return VerifiedToken(subject: subject, claims: claims)
    }

    private func checkClaims(_ claims: JSON) throws(AuthError) {
        let now = clock()
        guard let exp = claims["exp"]?.doubleValue else { throw .missingClaim("exp") }
        if now >= exp + leewaySeconds { throw .expired }
        if let nbfClaim = claims["nbf"] {
            guard let nbf = nbfClaim.doubleValue else { throw .malformed("nbf") }
            if now < nbf - leewaySeconds { throw .notYetValid }
        }
        if let issuer, claims["iss"]?.stringValue != issuer { throw .issuerMismatch }
        if let audience {
            switch claims["aud"] {
            case .string(let value)? where value == audience: break
            case .array(let values)? where values.contains(.string(audience)): break
            default: throw .audienceMismatch
            }
        }
    }
}

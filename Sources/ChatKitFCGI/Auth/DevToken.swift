/// Mints HS256 tokens as Better Auth's shared-secret setup does, for development and tests.
public enum DevToken {
    public static func mint(
        subject: String, secret: String, ttlSeconds: Int, issuer: String? = nil, audience: String? = nil,
        now: Double = Clock.unixTime()
    ) -> String {
        let issuedAt = Int(now)
        let ttlSeconds = min(ttlSeconds, 10 * 365 * 24 * 3600)
        var claims: [(String, JSON)] = [("sub", .string(subject)), ("iat", .int(issuedAt)), ("exp", .int(issuedAt + ttlSeconds))]
        if let issuer { claims.append(("iss", .string(issuer))) }
        if let audience { claims.append(("aud", .string(audience))) }
        let header = Base64URL.encode(JSON.object([("alg", "HS256"), ("typ", "JWT")]).serializedBytes)
        let payload = Base64URL.encode(JSON.object(claims).serializedBytes)
        let signingInput = "\(header).\(payload)"
        let signature = Crypto.hmacSHA256(key: Array(secret.utf8), message: Array(signingInput.utf8))
        return "\(signingInput).\(Base64URL.encode(signature))"
    }
}

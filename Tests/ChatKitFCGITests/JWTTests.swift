@testable import ChatKitFCGI
import Synchronization
import Testing

/// A clock and a JWKS document the test can change while the verifier runs.
final class KeyServer: Sendable {
    let now: Mutex<Double>
    let document: Mutex<[UInt8]>
    let fetches = Mutex(0)

    init(now: Double, document: JSON) {
        self.now = Mutex(now)
        self.document = Mutex(document.serializedBytes)
    }

    func source() -> JWKSource {
        JWKSource(clock: { self.now.withLock { $0 } }) { () throws(AuthError) -> [UInt8] in
            self.fetches.withLock { $0 += 1 }
            return self.document.withLock { $0 }
        }
    }

    func advance(_ seconds: Double) { now.withLock { $0 += seconds } }
}

@Suite struct BetterAuthVectorTests {
    let vectors: JSON
    let now: Double
    let issuer: String
    let audience: String

    init() throws {
        vectors = try Fixture.json("better-auth-jwt-test-vectors.json")
        now = vectors["verify_with"]!["now"]!.doubleValue!
        issuer = vectors["verify_with"]!["issuer"]!.stringValue!
        audience = vectors["verify_with"]!["audience"]!.stringValue!
    }

    func token(_ name: String) -> String {
        vectors["cases"]!.arrayValue!.first { $0["name"]?.stringValue == name }!["token"]!.stringValue!
    }

    func edDSAVerifier(_ server: KeyServer, leeway: Double = 60) -> JWTVerifier {
        JWTVerifier(hmacKey: nil, keySource: server.source(), issuer: issuer, audience: audience,
                    leewaySeconds: leeway, clock: { server.now.withLock { $0 } })
    }

    @Test func everyCaseInTheSharedFileVerifiesAsExpectedInEdDSAMode() throws {
        for vector in vectors["cases"]!.arrayValue! {
            let name = vector["name"]!.stringValue!
            let server = KeyServer(now: now, document: vectors["jwks"]!)
            let verifier = edDSAVerifier(server)
            let result = Result { () throws(AuthError) in try verifier.verify(token: vector["token"]!.stringValue!) }
            switch name {
            case "valid", "aud_array", "typ_jwt":
                #expect((try? result.get())?.subject == "user_123", "\(name)")
            default:
                // kid_rotated needs a refetch (below); the HS256 token needs HS256 mode.
                #expect((try? result.get()) == nil, "\(name) must be rejected")
            }
        }
    }

    @Test func clockCasesHonourExpiryNotBeforeAndLeeway() throws {
        for clockCase in vectors["clock_cases"]!.arrayValue! {
            let server = KeyServer(now: clockCase["now"]!.doubleValue!, document: vectors["jwks"]!)
            let verifier = edDSAVerifier(server, leeway: clockCase["leeway"]!.doubleValue!)
            let accepted = (try? verifier.verify(token: token(clockCase["token"]!.stringValue!))) != nil
            let expectAccept = clockCase["expect"]!.stringValue!.hasPrefix("accept")
            #expect(accepted == expectAccept, "\(clockCase.serialized)")
        }
    }

    @Test func expiredAndNotYetValidTokensSayWhy() {
        let late = KeyServer(now: 1_700_000_961, document: vectors["jwks"]!)
        #expect(throws: AuthError.expired) { try edDSAVerifier(late).verify(token: token("valid")) }
        let early = KeyServer(now: 1_700_000_539, document: vectors["jwks"]!)
        #expect(throws: AuthError.notYetValid) { try edDSAVerifier(early).verify(token: token("nbf_future")) }
    }

    @Test func rejectsTheAttacksWithTheRightReason() {
        let server = KeyServer(now: now, document: vectors["jwks"]!)
        let verifier = edDSAVerifier(server)
        #expect(throws: AuthError.algorithmNotAllowed("none")) { try verifier.verify(token: token("alg_none")) }
        #expect(throws: AuthError.algorithmNotAllowed("HS256")) { try verifier.verify(token: token("hs256_with_pubkey_bytes")) }
        #expect(throws: AuthError.algorithmNotAllowed("HS256")) { try verifier.verify(token: token("hs256_with_jwk_text")) }
        #expect(throws: AuthError.badSignature) { try verifier.verify(token: token("bad_signature")) }
        #expect(throws: AuthError.badSignature) { try verifier.verify(token: token("payload_tampered")) }
        #expect(throws: AuthError.missingClaim("sub")) { try verifier.verify(token: token("no_sub")) }
        #expect(throws: AuthError.missingClaim("exp")) { try verifier.verify(token: token("no_exp")) }
        #expect(throws: AuthError.audienceMismatch) { try verifier.verify(token: token("aud_other")) }
        #expect(throws: AuthError.issuerMismatch) { try verifier.verify(token: token("iss_other")) }
        #expect(throws: AuthError.malformed("no kid")) { try verifier.verify(token: token("kid_missing")) }
        #expect(throws: AuthError.malformed("crit header not understood")) { try verifier.verify(token: token("crit_unknown")) }
    }

    @Test func malformedTokensAreRejected() {
        let verifier = edDSAVerifier(KeyServer(now: now, document: vectors["jwks"]!))
        let valid = token("valid")
        for bad in ["", "a.b", "a.b.c.d.e", valid + "=", valid.replacingOccurrences(".", " "), String(repeating: "a", count: 9000),
                    "eyJhbGciOiJFZERTQSJ9.e30.", "%%%.e30.AAAA"] {
            #expect(throws: AuthError.self, "\(bad.prefix(40))") { try verifier.verify(token: bad) }
        }
        #expect(throws: AuthError.missingToken) { try verifier.verify(authorizationHeader: nil) }
        #expect(throws: AuthError.missingToken) { try verifier.verify(authorizationHeader: "Basic abc") }
        #expect((try? verifier.verify(authorizationHeader: "bearer  \(valid) "))?.subject == "user_123")
    }

    @Test func hs256SharedSecretWorksOnlyInHS256Mode() {
        let secret = Array(vectors["hs_secret"]!.stringValue!.utf8)
        let hs256 = JWTVerifier(hmacKey: secret, keySource: nil, issuer: nil, audience: nil, clock: { 1_700_000_100 })
        #expect((try? hs256.verify(token: token("hs256_shared_secret")))?.subject == "user_123")
        #expect(throws: AuthError.badSignature) { try hs256.verify(token: token("hs256_wrong_secret")) }
        #expect(throws: AuthError.algorithmNotAllowed("EdDSA")) { try hs256.verify(token: token("valid")) }
        let edDSA = edDSAVerifier(KeyServer(now: now, document: vectors["jwks"]!))
        #expect(throws: AuthError.algorithmNotAllowed("HS256")) { try edDSA.verify(token: token("hs256_shared_secret")) }
    }

    @Test func unknownKidRefetchesTheKeySetRateLimited() throws {
        let server = KeyServer(now: now, document: vectors["jwks"]!)
        let verifier = edDSAVerifier(server)
        #expect((try? verifier.verify(token: token("valid"))) != nil)
        #expect(server.fetches.withLock { $0 } == 1)

        // The identity server rotates its key; our cache does not know test-kid-2 yet and the
        // first fetch was just now, so the cooldown holds the refetch back.
        server.document.withLock { $0 = vectors["jwks_after_rotation"]!.serializedBytes }
        #expect(throws: AuthError.unknownKey) { try verifier.verify(token: token("kid_rotated")) }
        #expect(server.fetches.withLock { $0 } == 1)

        server.advance(31)
        #expect((try? verifier.verify(token: token("kid_rotated")))?.subject == "user_123")
        #expect(server.fetches.withLock { $0 } == 2)

        // A kid that never exists costs at most one fetch per cooldown.
        server.advance(31)
        for _ in 0..<5 { _ = try? verifier.verify(token: token("kid_rotated").replacingKid()) }
        #expect(server.fetches.withLock { $0 } == 3)
    }

    @Test func rfcSignatureVectorsVerifyAndThenFailOnClaims() throws {
        let rfc = vectors["rfc_vectors"]!.arrayValue!
        // A.1 HS256 with a binary key: the signature is right, the token has expired.
        let hsKey = Base64URL.decode(rfc[0]["key"]!["k"]!.stringValue!)!
        let hs = JWTVerifier(hmacKey: hsKey, keySource: nil, issuer: nil, audience: nil, clock: { 1_300_819_000 })
        #expect(throws: AuthError.missingClaim("sub")) { try hs.verify(token: rfc[0]["token"]!.stringValue!) }
        let hsNow = JWTVerifier(hmacKey: hsKey, keySource: nil, issuer: nil, audience: nil)
        #expect(throws: AuthError.expired) { try hsNow.verify(token: rfc[0]["token"]!.stringValue!) }
        // A.3 ES256 (raw R||S) and A.4 Ed25519 signatures check out against their keys.
        for vector in rfc[1...2] {
            let parts = vector["token"]!.stringValue!.split(separator: ".")
            let key = try JSONWebKey(vector["key"]!)
            let input = Array("\(parts[0]).\(parts[1])".utf8)
            #expect(key.verify(signature: Base64URL.decode(parts[2])!, signingInput: input), "\(vector["name"]!)")
            var tampered = input
            tampered[tampered.count - 1] ^= 1
            #expect(!key.verify(signature: Base64URL.decode(parts[2])!, signingInput: tampered))
        }
    }
}

@Suite struct RSAAndECVectorTests {
    @Test func everyExtraCaseVerifiesAsExpected() throws {
        let vectors = try Fixture.json("jwt-extra-vectors.json")
        let settings = vectors["verify_with"]!
        for vector in vectors["cases"]!.arrayValue! {
            let name = vector["token"]!.stringValue!
            let server = KeyServer(now: settings["now"]!.doubleValue!, document: vectors[vector["jwks"]!.stringValue!]!)
            let verifier = JWTVerifier(
                hmacKey: nil, keySource: server.source(), issuer: settings["issuer"]!.stringValue,
                audience: settings["audience"]!.stringValue, clock: { server.now.withLock { $0 } })
            let subject = try? verifier.verify(token: vectors["tokens"]![name]!.stringValue!).subject
            if vector["expect"]!.stringValue == "accept" {
                #expect(subject == vector["sub"]!.stringValue, "\(name)")
            } else {
                #expect(subject == nil, "\(name) must be rejected")
            }
        }
    }

    @Test func weakRSAKeysAreSkippedWhenTheKeySetLoads() throws {
        let vectors = try Fixture.json("jwt-extra-vectors.json")
        let keySet = try JSONWebKeySet(document: vectors["rsa_1024_jwks"]!.serializedBytes)
        #expect(keySet.keys.isEmpty)
        #expect(keySet.skipped.count == 1)
    }
}

@Suite struct DevTokenTests {
    @Test func mintedTokensVerifyWithTheSameSecretOnly() throws {
        let secret = "a-secret-that-is-long-enough-0123456789"
        let token = DevToken.mint(subject: "alice", secret: secret, ttlSeconds: 60, issuer: "iss", audience: "aud")
        let verifier = JWTVerifier(hmacKey: Array(secret.utf8), keySource: nil, issuer: "iss", audience: "aud")
        #expect(try verifier.verify(token: token).subject == "alice")
        let other = JWTVerifier(hmacKey: Array("another-secret-also-long-enough-0123".utf8), keySource: nil, issuer: nil, audience: nil)
        #expect(throws: AuthError.badSignature) { try other.verify(token: token) }
        let later = JWTVerifier(hmacKey: Array(secret.utf8), keySource: nil, issuer: nil, audience: nil, leewaySeconds: 0,
                                clock: { Clock.unixTime() + 61 })
        #expect(throws: AuthError.expired) { try later.verify(token: token) }
    }
}

extension String {
    func replacingOccurrences(_ target: Character, _ replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }

    /// Re-signs nothing: only swaps the header for one naming an unknown kid (the signature no
    /// longer matters, the lookup fails first).
    func replacingKid() -> String {
        let parts = split(separator: ".")
        let header = Base64URL.encode(Array(#"{"alg":"EdDSA","kid":"never-published"}"#.utf8))
        return "\(header).\(parts[1]).\(parts[2])"
    }
}

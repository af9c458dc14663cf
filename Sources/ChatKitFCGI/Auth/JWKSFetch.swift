enum JWKSFetch {
    /// jose's defaults: 5 s timeout, redirects not followed, only a 200 counts.
    static func get(_ url: String) throws(AuthError) -> [UInt8] {
        var request = HTTPClient.Request(url: url)
        request.headers = ["Accept: application/json, application/jwk-set+json"]
        request.totalTimeoutMilliseconds = 5_000
        let document = CollectedBody(limit: 1 << 20)
        let head: HTTPResponseHead
        do throws(TransferError) {
            head = try HTTPClient().performWaiting(request, into: document)
        } catch {
            throw .keySetUnavailable(error.description)
        }
        guard head.status == 200 else { throw .keySetUnavailable("HTTP \(head.status) from the JWKS URL") }
        return document.bytes
    }
}

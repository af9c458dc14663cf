@testable import ChatKitFCGI
import Testing

@Suite struct MultipartFormTests {
    static func form(_ parts: [(head: String, body: [UInt8])], boundary: String = "XyZ") -> [UInt8] {
        var body: [UInt8] = Array("preamble\r\n".utf8)
        for part in parts { body += Array("--\(boundary)\r\n\(part.head)\r\n\r\n".utf8) + part.body + Array("\r\n".utf8) }
        return body + Array("--\(boundary)--\r\n".utf8)
    }

    @Test func readsEachFieldWithItsNameFileNameTypeAndBytes() throws {
        // The file holds line ends, a blank line, the boundary not after a line end, and a line
        // that starts like the delimiter: all kept.
        let file: [UInt8] = [0x89, 0x50] + Array("\r\n\r\nx--XyZ\r\n--Xy".utf8) + [0, 255]
        let body = Self.form([
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a;b.png\"\r\nContent-Type: image/png", file),
            ("content-disposition: form-data; name=note", Array("hi".utf8)),
        ])
        let form = try #require(MultipartForm(body: body, contentType: "multipart/form-data; boundary=\"XyZ\""))
        #expect(form.fields.count == 2)
        let field = try #require(form.field("file"))
        #expect(field.filename == "a;b.png")
        #expect(field.contentType == "image/png")
        #expect(Array(field.bytes) == file)
        #expect(form.field("note").map { Array($0.bytes) } == Array("hi".utf8))
        #expect(form.field("note")?.filename == nil)
    }

    @Test(arguments: [
        ("multipart/form-data", "no boundary"),
        ("application/json; boundary=XyZ", "not a form"),
        ("multipart/form-data; boundary=other", "another boundary"),
    ])
    func isNilForBodiesNotFramedAsAForm(_ contentType: String, _ why: String) {
        let body = Self.form([("Content-Disposition: form-data; name=\"a\"", [1])])
        #expect(MultipartForm(body: body, contentType: contentType) == nil, "\(why)")
    }

    @Test func aPartWithoutHeadersIsReadAsNamelessBytes() throws {
        let body = Array("--XyZ\r\n\r\nabc\r\n--XyZ--\r\n".utf8)
        let form = try #require(MultipartForm(body: body, contentType: "multipart/form-data; boundary=XyZ"))
        #expect(form.fields.count == 1 && form.fields[0].name == "" && Array(form.fields[0].bytes) == Array("abc".utf8))
    }

    @Test func isNilForAFormCutShort() {
        let whole = Self.form([("Content-Disposition: form-data; name=\"file\"; filename=\"a\"", Array(repeating: 7, count: 100))])
        for length in [0, 15, 60, whole.count - 20] {
            #expect(MultipartForm(body: Array(whole.prefix(length)), contentType: "multipart/form-data; boundary=XyZ") == nil)
        }
    }
}

@Suite struct AttachmentRuleTests {
    let rules = AttachmentRules()

    @Test func typesAreAllowedWithoutTheirParametersAndInLowerCase() throws {
        #expect(rules.allowedType("image/PNG") == "image/png")
        #expect(rules.allowedType("text/plain; charset=utf-8") == "text/plain")
        #expect(rules.allowedType("image/svg+xml") == nil)
        #expect(rules.allowedType("text/html") == nil)
        #expect(rules.allowedType("") == nil)
        #expect(AttachmentRules.kind(of: "text/markdown") == .text)
        #expect(AttachmentRules.kind(of: "application/zip") == nil)
    }

    @Test(arguments: ["", ".", "..", "a/b.png", "a\\b.png", "a\u{0}b", "line\nbreak", "tab\t", "del\u{7F}", "c1\u{85}",
                      String(repeating: "x", count: 256)])
    func namesThatAreNotPlainFileNamesAreRefused(_ name: String) {
        #expect(throws: APIError.self) { try rules.check(name: name, size: 1, mimeType: "text/plain") }
    }

    @Test func aCheckedAttachmentKeepsItsNameAndGetsItsMediaType() throws {
        let checked = try rules.check(name: "Résumé (final).pdf", size: 10, mimeType: "application/pdf")
        #expect(checked.name == "Résumé (final).pdf" && checked.mimeType == "application/pdf")
        #expect(throws: APIError.badRequest("the file is empty")) { try rules.check(name: "a.txt", size: 0, mimeType: "text/plain") }
        #expect(throws: APIError.payloadTooLarge(limit: rules.maxBytes)) {
            try rules.check(name: "a.txt", size: rules.maxBytes + 1, mimeType: "text/plain")
        }
    }

    @Test(arguments: [
        ("image/png", [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0], true),
        ("image/png", [0xFF, 0xD8, 0xFF, 0xE0], false),
        ("image/jpeg", [0xFF, 0xD8, 0xFF, 0xE0], true),
        ("image/gif", Array("GIF89a...".utf8), true),
        ("image/gif", Array("GIF90a...".utf8), false),
        ("image/webp", Array("RIFF\u{0}\u{0}\u{0}\u{0}WEBPVP8 ".utf8), true),
        ("image/webp", Array("RIFF\u{0}\u{0}\u{0}\u{0}WAVE".utf8), false),
        ("application/pdf", Array("%PDF-1.7\n".utf8), true),
        ("application/pdf", Array("<html>".utf8), false),
        ("text/plain", Array("héllo\n".utf8), true),
        ("text/plain", [0x68, 0xFF, 0x69], false),
    ] as [(String, [UInt8], Bool)])
    func theBytesMustBeWhatTheTypeSays(_ mimeType: String, _ bytes: [UInt8], _ matches: Bool) {
        #expect(AttachmentRules.content(bytes, matches: mimeType) == matches)
    }
}

@Suite struct AttachmentModelInputTests {
    @Test func eachKindReachesTheModelInItsOwnPart() throws {
        let message = ChatMessage.user("what is this?", attachments: [
            ChatKitFCGI.Attachment(id: "atc_1", name: "p.png", mimeType: "image/png", size: 3, data: [1, 2, 3]),
            ChatKitFCGI.Attachment(id: "atc_2", name: "r.pdf", mimeType: "application/pdf", size: 4, data: Array("%PDF".utf8)),
            ChatKitFCGI.Attachment(id: "atc_3", name: "n.txt", mimeType: "text/plain", size: 2, data: Array("hi".utf8)),
            ChatKitFCGI.Attachment(id: "atc_4", name: "gone.png", mimeType: "image/png", size: 9),
        ])
        #expect(message.json == [
            "role": "user",
            "content": [
                ["type": "text", "text": "what is this?"],
                ["type": "image_url", "image_url": ["url": "data:image/png;base64,AQID"]],
                ["type": "file", "file": ["filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERg=="]],
                ["type": "text", "text": "[Attached file n.txt (text/plain)]\nhi"],
                ["type": "text", "text": "[The user attached gone.png (image/png) here; it is not included now.]"],
            ],
        ])
        #expect(ChatMessage.user("plain").json == ["role": "user", "content": "plain"], "no attachments: content stays text")
    }

    @Test func theNewestMessagesFilesAllGoThenEarlierOnesWhileTheyFit() {
        func file(_ id: String, _ size: Int) -> ChatKitFCGI.Attachment { ChatKitFCGI.Attachment(id: id, name: id, mimeType: "image/png", size: size) }
        let history: [ChatMessage] = [
            .user("1", attachments: [file("old", 50)]),
            .user("2", attachments: [file("mid-a", 30), file("mid-b", 30)]),
            ChatMessage(role: .assistant, content: "ok"),
            .user("3", attachments: [file("new-a", 500), file("new-b", 500)]),
        ]
        #expect(history.attachmentsToSend(fittingIn: 100) == ["new-a", "new-b", "mid-a", "mid-b"])
        #expect(history.attachmentsToSend(fittingIn: 0) == ["new-a", "new-b"])
        #expect(history.attachmentsToSend(fittingIn: 1000) == ["new-a", "new-b", "mid-a", "mid-b", "old"])
    }

    @Test func base64IsPaddedAndReadsBack() {
        for length in 0..<8 {
            let bytes = (0..<length).map { UInt8($0 * 37 & 0xFF) }
            let encoded = Base64.encode(bytes)
            #expect(encoded.utf8.count % 4 == 0)
            #expect(Base64.decode(encoded) == bytes)
        }
        #expect(Base64.encode(Array("hello".utf8)) == "aGVsbG8=")
    }
}

@Suite struct ChatRequestPartTests {
    @Test func imageAndFilePartsAreDecoded() throws {
        let body = JSON.object([("messages", [[
            "role": "user",
            "content": [
                ["type": "text", "text": "see"],
                ["type": "image_url", "image_url": ["url": "data:image/PNG;base64,AQID"]],
                ["type": "file", "file": ["filename": "r.pdf", "file_data": "data:application/pdf;name=r.pdf;base64,JVBERg=="]],
            ],
        ]])]).serializedBytes
        let request = try ChatRequest(body: body)
        #expect(request.message == "see")
        #expect(request.files == [UploadedFile(name: "image-1.png", mimeType: "image/png", bytes: [1, 2, 3]),
                                  UploadedFile(name: "r.pdf", mimeType: "application/pdf", bytes: Array("%PDF".utf8))])
    }

    @Test(arguments: [
        #"{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}"#,
        #"{"type":"image_url","image_url":{"url":"data:image/png,AQID"}}"#,
        #"{"type":"image_url","image_url":{"url":"data:image/png;base64,%%%"}}"#,
        #"{"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERg=="}}"#,
        #"{"type":"input_audio","input_audio":{}}"#,
    ])
    func brokenPartsAre422(_ part: String) throws {
        let body = Array(#"{"messages":[{"role":"user","content":[\#(part)]}]}"#.utf8)
        #expect(throws: APIError.self) { try ChatRequest(body: body) }
        do { _ = try ChatRequest(body: body) } catch { #expect(error.status == 422) }
    }
}

@Suite struct SignedURLTests {
    let signer = URLSigner(key: Array("a key of at least thirty-two bytes!!".utf8))

    @Test func aSignatureHoldsForItsAttachmentUserPurposeAndTimeOnly() {
        let expires: Int64 = 2_000_000_000
        let signature = signer.signature(attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires)
        #expect(signer.isValid(signature, attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires, now: expires - 10))
        #expect(!signer.isValid(signature, attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires, now: expires + 1))
        #expect(!signer.isValid(signature, attachmentID: "atc_2", user: "alice", purpose: .preview, expires: expires, now: 0))
        #expect(!signer.isValid(signature, attachmentID: "atc_1", user: "bob", purpose: .preview, expires: expires, now: 0))
        #expect(!signer.isValid(signature, attachmentID: "atc_1", user: "alice", purpose: .upload, expires: expires, now: 0))
        #expect(!signer.isValid(signature, attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires + 1, now: 0))
        #expect(!signer.isValid(signature + "A", attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires, now: 0))
        let other = URLSigner(key: Array("another key of at least thirty-two bytes".utf8))
        #expect(!other.isValid(signature, attachmentID: "atc_1", user: "alice", purpose: .preview, expires: expires, now: 0))
    }

    @Test func queryParametersArePercentDecoded() {
        var request = HTTPRequest(method: "GET", path: "/")
        request.query = "expires=12&signature=a%2Bb+c&empty=&bad=%zz"
        #expect(request.queryParameter("expires") == "12")
        #expect(request.queryParameter("signature") == "a+b c")
        #expect(request.queryParameter("empty") == "")
        #expect(request.queryParameter("bad") == nil)
        #expect(request.queryParameter("missing") == nil)
    }
}

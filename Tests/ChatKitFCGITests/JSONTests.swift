@testable import ChatKitFCGI
import Testing

@Suite struct JSONTests {
    @Test func parsesEveryValueKindAndKeepsMemberOrder() throws {
        let json = try JSON.parse(#"{"z":1,"a":[true,false,null],"n":-2.5e1,"s":"x\"\\\/\n\u00e9\ud83d\ude00"}"#)
        #expect(json.objectValue?.map(\.0) == ["z", "a", "n", "s"])
        #expect(json["z"] == .int(1))
        #expect(json["a"] == [true, false, nil])
        #expect(json["n"] == .double(-25))
        #expect(json["s"] == .string("x\"\\/\né😀"))
    }

    @Test(arguments: [("0", 0), ("-0", 0), ("-7", -7), ("999999999999999999", 999_999_999_999_999_999),
                      ("-99999999999999999", -99_999_999_999_999_999), ("9223372036854775807", Int.max), ("-9223372036854775808", Int.min)])
    func integersParseExactlyAtEveryLength(text: String, value: Int) throws {
        let json = try JSON.parse(text)
        #expect(json.typeName == "integer" && json.intValue == value)
    }

    @Test func anIntegerTooLargeForIntIsADouble() throws {
        #expect(try JSON.parse("9223372036854775808") == .double(9_223_372_036_854_775_808))
    }

    @Test func serialisesCompactlyWithEscapes() {
        let json: JSON = ["text": "a\"b\\c\nd\u{01}", "list": [1, 2.5, nil, false]]
        #expect(json.serialized == #"{"text":"a\"b\\c\nd\u0001","list":[1,2.5,null,false]}"#)
    }

    /// Runs between escapes are copied whole: escapes at the edges, back to back and between
    /// multi-byte characters must come out as a byte-by-byte escaper writes them.
    @Test(arguments: ["", "\"", "\\\"\n", "plain", "\u{1}start", "end\t", "é\"😀\r\u{1F}x", String(repeating: "ab\\", count: 500)])
    func escapesEveryByteThatNeedsIt(_ text: String) throws {
        var expected = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": expected += "\\\""
            case "\\": expected += "\\\\"
            case "\n": expected += "\\n"
            case "\r": expected += "\\r"
            case "\t": expected += "\\t"
            case _ where scalar.value < 0x20: expected += "\\u00" + String(format2: scalar.value)
            default: expected.unicodeScalars.append(scalar)
            }
        }
        expected += "\""
        #expect(JSON.string(text).serialized == expected)
        #expect(try JSON.parse(JSON.string(text).serialized) == .string(text))
    }

    @Test func roundTripsThroughText() throws {
        let original: JSON = ["a": ["b": ["c": "ünïcode ✓"]], "n": 9007199254740993]
        #expect(try JSON.parse(original.serialized) == original)
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"\u{01}\"", "\"\\x\"", "{} x", "nan"])
    func rejectsMalformedText(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSON.parse(text) }
    }

    @Test func refusesDocumentsOfMoreValuesThanTheLimit() throws {
        func list(_ count: Int) -> String { "[" + Array(repeating: "0", count: count).joined(separator: ",") + "]" }
        #expect(try JSON.parse(list(JSON.maximumValues - 1)).arrayValue?.count == JSON.maximumValues - 1)
        #expect(throws: JSONParseError.self) { try JSON.parse(list(JSON.maximumValues)) }
    }

    @Test func refusesNestingDeeperThanTheLimit() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSON.parse(deep) }
        let fine = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        #expect((try? JSON.parse(fine)) != nil)
    }

    @Test func loneSurrogatesBecomeReplacementCharacters() throws {
        #expect(try JSON.parse(#""a\ud83d""#) == "a\u{FFFD}")
        #expect(try JSON.parse(#""\ude00\ud83d\ude00\ud800x""#) == "\u{FFFD}😀\u{FFFD}x")
    }

    @Test func theLastDuplicateMemberWins() throws {
        #expect(try JSON.parse(#"{"a":1,"a":2}"#)["a"] == 2)
    }

    @Test func nonFiniteNumbersSerialiseAsNull() {
        #expect(JSON.array([.double(.infinity), .double(.nan)]).serialized == "[null,null]")
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONParseError.self) { try JSON.parse([0x22, 0xFF, 0x22]) }
    }
}

extension String {
    /// Two lower-case hex digits.
    fileprivate init(format2 value: UInt32) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(value >> 4)], digits[Int(value & 0xF)]])
    }
}

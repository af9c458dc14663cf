// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "chatkit-fcgi",
    products: [
        .executable(name: "chatkit-fcgi", targets: ["chatkit-fcgi"]),
        .executable(name: "mock-model", targets: ["mock-model"]),
        .executable(name: "bench-client", targets: ["bench-client"]),
        .executable(name: "fuzz", targets: ["fuzz"]),
    ],
    targets: [
        .systemLibrary(name: "CFastCGI", pkgConfig: "fcgi", providers: [.apt(["libfcgi-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CPostgres", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        // epoll and eventfd from the C library: the event loop that drives every model transfer
        // (and the mock model's pacer, and the benchmark's client).
        .systemLibrary(name: "CLinux"),
        .target(name: "ChatKitFCGI", dependencies: ["CFastCGI", "CCurl", "CSQLite", "CCrypto", "CPostgres", "CLinux"]),
        .executableTarget(name: "chatkit-fcgi", dependencies: ["ChatKitFCGI"]),
        // The bundled offline model: deterministic, OpenAI's streaming format, for the dev run and tests.
        .executableTarget(name: "mock-model", dependencies: ["ChatKitFCGI", "CLinux"]),
        // The benchmark's load generator (Tests/Benchmarks/bench.py): light on the shared cores.
        .executableTarget(name: "bench-client", dependencies: ["ChatKitFCGI", "CLinux"]),
        // The parsers' fuzz targets (Tests/fuzz); built normally, it replays inputs through them.
        .executableTarget(name: "fuzz", dependencies: ["ChatKitFCGI"]),
        .testTarget(
            name: "ChatKitFCGITests",
            dependencies: ["ChatKitFCGI"],
            exclude: ["Fixtures"]
        ),
    ]
)

// swift-tools-version:5.9
// Swift binding of libzeph_llm.  Build the library first (cargo build
// --release at the top of the checkout); this package links to it there.
import Foundation
import PackageDescription

let root = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let libDir = root.appendingPathComponent("target/release").path

let package = Package(
    name: "ZephLLM",
    products: [.library(name: "ZephLLM", targets: ["ZephLLM"])],
    targets: [
        .systemLibrary(name: "CZephLLM", path: "Sources/CZephLLM"),
        .target(
            name: "ZephLLM",
            dependencies: ["CZephLLM"],
            linkerSettings: [.unsafeFlags(["-L\(libDir)", "-Xlinker", "-rpath", "-Xlinker", libDir])]
        ),
        .testTarget(name: "ZephLLMTests", dependencies: ["ZephLLM"]),
    ]
)

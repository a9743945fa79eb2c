// example: zeph_llm from C++17 through the header-only RAII wrapper
// include/zeph_llm.hpp (engine and strings freed by destructors, failures
// thrown as zeph::Error with the status and the message).
//
//   example_cpp <model.gguf>
#include <cstdio>
#include <iostream>

#include "zeph_llm.hpp"

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " <model.gguf>\n";
        return 2;
    }
    try {
        zeph::Engine engine(argv[1]);

        zeph::Usage usage;
        std::string text = engine.complete("The capital of France is",
                                           zeph::GenerateOptions().greedy().max_tokens(8), &usage);
        std::cout << "The capital of France is" << text << "\n(" << usage.completion_tokens
                  << " tokens in " << usage.generation_ms << " ms)\n";
        if (text.rfind(" Paris", 0) != 0) {
            std::cerr << "unexpected answer\n";
            return 1;
        }

        std::cout << "\nstreamed: ";
        zeph::Stream stream = engine.stream("Once upon a time", zeph::GenerateOptions().max_tokens(24).seed(7));
        while (auto piece = stream.next()) std::cout << *piece << std::flush;
        std::cout << "\n";
    } catch (const zeph::Error &e) {
        std::cerr << e.what() << "\n";
        return 1;
    }

    // Errors carry the status and the library's message.
    try {
        zeph::Engine missing("/nonexistent/model.gguf");
        return 1;
    } catch (const zeph::Error &e) {
        std::cout << "\nas expected: " << e.what() << "\n";
        return e.status() == ZEPH_STATUS_IO ? 0 : 1;
    }
}

// Replays fuzz inputs through LLVMFuzzerTestOneInput without libFuzzer, so
// any compiler builds the target: each argument is a file or a directory of
// files. With --variants=N each input also runs N more times with other
// 8-octet headers (session flags, bindings, sink replies, seed), so a plain
// build covers more than the seeds. A violated invariant aborts; otherwise
// prints how many runs there were.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  std::vector<std::filesystem::path> files;
  int variants = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--variants=", 0) == 0) {
      variants = std::stoi(a.substr(11));
      continue;
    }
    const std::filesystem::path arg(a);
    if (std::filesystem::is_directory(arg)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(arg);
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...  (no inputs found)\n",
                 argv[0]);
    return 2;
  }
  size_t runs = 0;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", f.c_str());
      return 2;
    }
    std::string bytes((std::istreambuf_iterator<char>(in)),
                      std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()),
                           bytes.size());
    ++runs;
    if (bytes.size() < 8) continue;
    uint64_t state = 0;
    for (int v = 0; v < variants; ++v) {
      // splitmix64: the same variants on every run.
      uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      z ^= z >> 31;
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(z >> (8 * i));
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()),
                             bytes.size());
      ++runs;
    }
  }
  std::printf("%zu inputs, %zu runs\n", files.size(), runs);
  return 0;
}

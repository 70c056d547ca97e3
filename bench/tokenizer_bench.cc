// mor_bench_tokenizer: encoding speed (MB/s) of the C++ tokenizer
// (model/tokenizer.h) on one text, single-threaded.
//
// The text file holds documents separated by the byte 0x1E. Two measurements,
// each `--iters` timed passes after one untimed warm-up pass (which also fills
// the word cache; the cold first pass is reported separately):
//   * docs:  Encode(document, add_special_tokens=false) for each document in turn;
//   * whole: Encode of all documents concatenated, in one call.
// MB/s = text bytes (10^6) / seconds of the fastest pass, by wall clock and by
// the encoding thread's CPU time (robust to other load on a shared machine).
//
// Without --tokenizer the binary hands over to tools/bench/bench_tokenizer.py,
// which trains the tokenizers, writes ~1 MB of text and compares this binary
// with HF `tokenizers` on it in the same run; that is `./mor bench tokenizer`.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"
#include "model/tokenizer.h"

ABSL_FLAG(std::string, tokenizer, "",
          "tokenizer.json. Without it the binary runs tools/bench/bench_tokenizer.py (the "
          "C++ vs HF comparison) with the other arguments.");
ABSL_FLAG(std::string, text, "", "UTF-8 text file; documents separated by the byte 0x1E");
ABSL_FLAG(int32_t, iters, 5, "timed passes per measurement (the fastest is reported)");
ABSL_FLAG(std::string, ids_out, "",
          "if set, write the ids of the docs pass (int32 little endian, documents in order)");
ABSL_FLAG(bool, json, false, "print one JSON object instead of text");

namespace mor {
namespace {

using bench::ProcessCpuSeconds;
using bench::SecondsSince;

// Wall-clock and CPU time of this thread (the CPU time is what the encoding
// cost, whatever else runs on the machine).
struct Clock {
  std::chrono::steady_clock::time_point wall = std::chrono::steady_clock::now();
  double cpu = ThreadCpuSeconds();

  static double ThreadCpuSeconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  double WallSeconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
  }
  double CpuSeconds() const { return ThreadCpuSeconds() - cpu; }
};

struct Result {
  double cold_wall = 0, cold_cpu = 0, best_wall = 1e300, best_cpu = 1e300;
  size_t tokens = 0;
};

// Runs `pass` once cold, once to warm up, then `iters` times (best of each clock).
template <typename Pass>
Result Measure(int iters, Pass pass) {
  Result r;
  Clock cold;
  r.tokens = pass();
  r.cold_wall = cold.WallSeconds();
  r.cold_cpu = cold.CpuSeconds();
  pass();
  for (int i = 0; i < iters; ++i) {
    Clock c;
    pass();
    r.best_wall = std::min(r.best_wall, c.WallSeconds());
    r.best_cpu = std::min(r.best_cpu, c.CpuSeconds());
  }
  return r;
}

int Run() {
  const std::string path = absl::GetFlag(FLAGS_text);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "mor_bench_tokenizer: cannot read --text '%s'\n", path.c_str());
    return 1;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string raw = buffer.str();
  std::vector<std::string_view> docs;
  std::string whole;
  for (size_t begin = 0; begin <= raw.size();) {
    size_t end = raw.find('\x1e', begin);
    if (end == std::string::npos) end = raw.size();
    if (end > begin) docs.emplace_back(raw.data() + begin, end - begin);
    whole.append(raw, begin, end - begin);
    begin = end + 1;
  }
  const Clock load_clock;
  auto tok = Tokenizer::FromFile(absl::GetFlag(FLAGS_tokenizer));
  if (!tok.ok()) {
    std::fprintf(stderr, "mor_bench_tokenizer: %s\n", tok.status().ToString().c_str());
    return 1;
  }
  const double load_s = load_clock.WallSeconds();
  const Tokenizer& t = **tok;
  std::vector<int32_t> ids;
  const int iters = std::max(1, absl::GetFlag(FLAGS_iters));
  const Result doc_result = Measure(iters, [&] {
    ids.clear();
    for (std::string_view d : docs) t.EncodeTo(d, false, &ids);
    return ids.size();
  });
  if (!absl::GetFlag(FLAGS_ids_out).empty()) {
    std::ofstream out(absl::GetFlag(FLAGS_ids_out), std::ios::binary);
    out.write(reinterpret_cast<const char*>(ids.data()),
              static_cast<std::streamsize>(ids.size() * sizeof(int32_t)));
  }
  // A fresh tokenizer so that the whole-text pass starts with a cold cache too.
  auto tok2 = Tokenizer::FromFile(absl::GetFlag(FLAGS_tokenizer));
  if (!tok2.ok()) return 1;
  const Result whole_result = Measure(iters, [&] {
    ids.clear();
    (*tok2)->EncodeTo(whole, false, &ids);
    return ids.size();
  });
  const double mb = static_cast<double>(whole.size()) / 1e6;
  auto print = [&](const char* name, const Result& r) {
    if (absl::GetFlag(FLAGS_json)) {
      std::printf(
          "\"%s_tokens\": %zu, \"%s_cold_mb_s\": %.3f, \"%s_mb_s\": %.3f, "
          "\"%s_cold_cpu_mb_s\": %.3f, \"%s_cpu_mb_s\": %.3f",
          name, r.tokens, name, mb / r.cold_wall, name, mb / r.best_wall, name, mb / r.cold_cpu,
          name, mb / r.best_cpu);
    } else {
      std::printf(
          "%-5s: %zu tokens; wall: cold %.2f MB/s, warm %.2f MB/s; thread CPU: cold %.2f MB/s, "
          "warm %.2f MB/s (best of %d)\n",
          name, r.tokens, mb / r.cold_wall, mb / r.best_wall, mb / r.cold_cpu, mb / r.best_cpu,
          iters);
    }
  };
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"bytes\": %zu, \"docs\": %zu, \"load_s\": %.4f, ", whole.size(), docs.size(),
                load_s);
    print("docs", doc_result);
    std::printf(", ");
    print("whole", whole_result);
    std::printf("}\n");
  } else {
    std::printf("text: %zu bytes in %zu documents; tokenizer loaded in %.3f s\n", whole.size(),
                docs.size(), load_s);
    print("docs", doc_result);
    print("whole", whole_result);
  }
  return 0;
}

}  // namespace
}  // namespace mor

int main(int argc, char** argv) {
  if (!mor::bench::HasFlag(argc, argv, "tokenizer"))
    mor::bench::ExecOrchestrator(argc, argv, "bench_tokenizer.py", "mor_bench_tokenizer");
  absl::SetProgramUsageMessage(
      "Encoding MB/s of the C++ tokenizer, single-threaded.\n"
      "  mor_bench_tokenizer --tokenizer tokenizer.json --text corpus.txt [--json]\n"
      "Without --tokenizer: runs tools/bench/bench_tokenizer.py (C++ vs HF tokenizers).");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "mor_bench_tokenizer: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  return mor::Run();
}

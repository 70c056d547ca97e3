// Helpers shared by the benchmark binaries (bench/*_bench.cc).
#ifndef MOR_BENCH_BENCH_UTIL_H_
#define MOR_BENCH_BENCH_UTIL_H_

#include <chrono>

#include "absl/strings/string_view.h"

namespace mor::bench {

double SecondsSince(std::chrono::steady_clock::time_point start);

// User + system CPU seconds of the whole process (all threads): with the wall
// time it shows whether a run got the cores it asked for.
double ProcessCpuSeconds();

// Whether the command line sets flag `name` (--name, --name=..., -name).
bool HasFlag(int argc, char** argv, absl::string_view name);

// Replaces this process with `python tools/bench/<script> --build-dir <build>
// <args...>`: a benchmark binary run without its model hands over to the
// orchestrator that runs every configuration (MOR_SOURCE_DIR locates it).
[[noreturn]] void ExecOrchestrator(int argc, char** argv, const char* script, const char* binary);

}  // namespace mor::bench

#endif  // MOR_BENCH_BENCH_UTIL_H_

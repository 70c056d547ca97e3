#include "bench/bench_util.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace mor::bench {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

bool HasFlag(int argc, char** argv, absl::string_view name) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--") break;
    if (absl::ConsumePrefix(&a, "--") || absl::ConsumePrefix(&a, "-")) {
      if (a == name ||
          (absl::StartsWith(a, name) && a.size() > name.size() && a[name.size()] == '=')) {
        return true;
      }
    }
  }
  return false;
}

void ExecOrchestrator(int argc, char** argv, const char* script, const char* binary) {
  const char* env_src = std::getenv("MOR_SOURCE_DIR");
  const std::filesystem::path src = env_src != nullptr ? env_src : MOR_SOURCE_DIR;
  const std::filesystem::path script_path = src / "tools" / "bench" / script;
  std::filesystem::path python = src / ".venv" / "bin" / "python";
  std::error_code ec;
  if (!std::filesystem::exists(python, ec)) python = "python3";
  std::filesystem::path build_dir;  // the binary lives in <build>/bench/
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) build_dir = self.parent_path().parent_path();
  std::vector<std::string> args = {python.string(), script_path.string()};
  if (!build_dir.empty()) {
    args.push_back("--build-dir");
    args.push_back(build_dir.string());
  }
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  std::fflush(stdout);
  execvp(cargs[0], cargs.data());
  std::fprintf(stderr, "%s: cannot run %s %s: %s\n", binary, args[0].c_str(), args[1].c_str(),
               std::strerror(errno));
  std::exit(1);
}

}  // namespace mor::bench

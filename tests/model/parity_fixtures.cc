#include "tests/model/parity_fixtures.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace mor::testing {
namespace {

std::string ParityDir() {
  if (const char* dir = std::getenv("MOR_PARITY_DIR")) return dir;
  if (const char* build = std::getenv("MOR_BUILD_DIR")) return absl::StrCat(build, "/parity");
  return "parity";
}

template <typename T>
std::vector<T> ReadAll(const SafetensorsFile& file, const std::string& name) {
  absl::StatusOr<TensorView> view = file.Get(name);
  if (!view.ok()) return {};
  std::vector<T> out(view->nbytes / sizeof(T));
  std::memcpy(out.data(), view->data, view->nbytes);
  return out;
}

std::string Str(const nlohmann::json& entry, const char* key, const char* fallback) {
  auto it = entry.find(key);
  return it != entry.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace

absl::StatusOr<std::vector<ParityCase>> LoadParityManifest() {
  const std::string dir = ParityDir();
  std::ifstream in(dir + "/manifest.json");
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        dir, "/manifest.json not found: run tools/reference/make_parity_fixtures.py --out ", dir));
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json manifest = nlohmann::json::parse(text.str(), nullptr, false);
  if (manifest.is_discarded() || !manifest.contains("cases")) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/manifest.json is malformed"));
  }
  std::vector<ParityCase> cases;
  for (const auto& entry : manifest["cases"]) {
    ParityCase c;
    c.name = Str(entry, "name", "");
    c.model_dir = absl::StrCat(dir, "/", Str(entry, "model_dir", ""));
    c.expected_path = absl::StrCat(dir, "/", Str(entry, "expected", ""));
    c.num_recursions = entry.value("Nr", 1);
    c.sharing = Str(entry, "sharing", "none");
    c.router_type = Str(entry, "router_type", "");
    c.kv_mode = Str(entry, "kv_mode", "");
    c.policies = entry.value("policies", std::vector<std::string>{});
    c.num_sequences = entry.value("num_sequences", 0);
    c.has_hf_logits = entry.value("has_hf_logits", false);
    cases.push_back(std::move(c));
  }
  return cases;
}

absl::StatusOr<ParityExpectations> ParityExpectations::Open(const ParityCase& c) {
  MOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(c.expected_path));
  ParityExpectations out;
  out.file_ = std::move(file);
  return out;
}

std::vector<int32_t> ParityExpectations::Tokens(int seq) const {
  return ReadAll<int32_t>(*file_, absl::StrCat("tokens.", seq));
}
std::vector<float> ParityExpectations::Logits(const std::string& policy, int seq) const {
  return ReadAll<float>(*file_, absl::StrCat("logits.", policy, ".", seq));
}
std::vector<int32_t> ParityExpectations::Depths(const std::string& policy, int seq) const {
  return ReadAll<int32_t>(*file_, absl::StrCat("depths.", policy, ".", seq));
}
std::vector<float> ParityExpectations::Scores(const std::string& policy, int seq) const {
  return ReadAll<float>(*file_, absl::StrCat("scores.", policy, ".", seq));
}

std::vector<float> ParityExpectations::Bf16Error(const std::string& policy, int seq) const {
  return ReadAll<float>(*file_, absl::StrCat("bf16_error.", policy, ".", seq));
}

std::vector<int32_t> ParityExpectations::Greedy(const std::string& policy, int seq) const {
  return ReadAll<int32_t>(*file_, absl::StrCat("greedy.", policy, ".", seq));
}

}  // namespace mor::testing

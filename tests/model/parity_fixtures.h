// Loads the reference-model parity fixtures written by
// tools/reference/make_parity_fixtures.py (see that script for the layout).
#ifndef MOR_TESTS_MODEL_PARITY_FIXTURES_H_
#define MOR_TESTS_MODEL_PARITY_FIXTURES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/safetensors_file.h"

namespace mor::testing {

struct ParityCase {
  std::string name;
  std::string model_dir;      // absolute
  std::string expected_path;  // absolute
  int num_recursions = 1;
  std::string sharing;
  std::string router_type;
  std::string kv_mode;
  std::vector<std::string> policies;  // "adaptive", "fixed1", ...
  int num_sequences = 0;
  bool has_hf_logits = false;
};

// Reads <dir>/manifest.json. The directory is $MOR_PARITY_DIR, else
// $MOR_BUILD_DIR/parity.
absl::StatusOr<std::vector<ParityCase>> LoadParityManifest();

// Expected outputs of one case.
class ParityExpectations {
 public:
  static absl::StatusOr<ParityExpectations> Open(const ParityCase& c);

  std::vector<int32_t> Tokens(int seq) const;
  // [n, vocab] row-major.
  std::vector<float> Logits(const std::string& policy, int seq) const;
  std::vector<int32_t> Depths(const std::string& policy, int seq) const;
  std::vector<float> Scores(const std::string& policy, int seq) const;  // [n, Nr]
  // [max, mean] |logits error| of the reference itself in bf16 (fixed
  // policies).
  std::vector<float> Bf16Error(const std::string& policy, int seq) const;
  // The reference's greedy continuation (empty where none was written).
  std::vector<int32_t> Greedy(const std::string& policy, int seq) const;

 private:
  std::shared_ptr<SafetensorsFile> file_;
};

}  // namespace mor::testing

#endif  // MOR_TESTS_MODEL_PARITY_FIXTURES_H_

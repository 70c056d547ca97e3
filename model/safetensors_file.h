// Read-only access to safetensors checkpoints (single file or shards with an
// index json). Torch-free: tensors are exposed as typed byte views into mmapped
// files. Every malformed input yields an absl::Status naming the file and tensor.
#ifndef MOR_MODEL_SAFETENSORS_FILE_H_
#define MOR_MODEL_SAFETENSORS_FILE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mor {

enum class TensorDType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

std::string_view TensorDTypeName(TensorDType d);  // "F32", "BF16", ...
size_t TensorDTypeSize(TensorDType d);

// A tensor inside a mapped file. `data` stays valid while the owning
// SafetensorsFile (or SafetensorsCheckpoint) lives.
struct TensorView {
  std::string name;
  TensorDType dtype = TensorDType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it (for error messages)

  int64_t numel() const;
};

// One .safetensors file, memory-mapped.
class SafetensorsFile {
 public:
  // Validates the header: 8-byte length within the file, JSON object, known
  // dtypes, non-negative shapes, data_offsets in bounds, nbytes equal to
  // numel * dtype size, no overlaps. Errors name the path and the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool Contains(std::string_view name) const;
  absl::StatusOr<TensorView> Get(std::string_view name) const;  // NotFound names file + tensor
  std::vector<std::string> Names() const;                       // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or the shards listed in
// model.safetensors.index.json ({"weight_map": {tensor: shard}}); any other
// single *.safetensors file is accepted when exactly one exists.
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> OpenDirectory(
      const std::string& dir);

  bool Contains(std::string_view name) const;
  absl::StatusOr<TensorView> Get(std::string_view name) const;
  std::vector<std::string> Names() const;  // sorted, over all shards
  const std::string& directory() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*, std::less<>> owner_;
};

// Writes a safetensors file (used by tests and tools). Tensors are written in
// the order given; `data` sizes must match shape x dtype.
struct TensorToWrite {
  std::string name;
  TensorDType dtype;
  std::vector<int64_t> shape;
  std::string data;  // raw little-endian bytes
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace mor

#endif  // MOR_MODEL_SAFETENSORS_FILE_H_

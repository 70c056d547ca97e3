// Safetensors reading (mmap) and writing. Format: 8-byte little-endian header
// length N, N bytes of JSON header, then the data area; data_offsets are relative
// to the start of the data area.
#include "model/safetensors_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace mor {
namespace {

using json = nlohmann::json;

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Same limit as the reference implementation.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr std::pair<TensorDType, std::string_view> kDTypeNames[] = {
    {TensorDType::kF32, "F32"},   {TensorDType::kF16, "F16"}, {TensorDType::kBF16, "BF16"},
    {TensorDType::kF64, "F64"},   {TensorDType::kI64, "I64"}, {TensorDType::kI32, "I32"},
    {TensorDType::kI16, "I16"},   {TensorDType::kI8, "I8"},   {TensorDType::kU8, "U8"},
    {TensorDType::kBool, "BOOL"},
};

std::optional<TensorDType> DTypeFromName(std::string_view name) {
  for (const auto& [d, n] : kDTypeNames) {
    if (n == name) return d;
  }
  return std::nullopt;
}

absl::Status ErrnoStatus(int err, std::string_view message) {
  std::string msg = absl::StrCat(AV(message), ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// numel of `shape` times `elem`, or nullopt on overflow / negative dims.
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, uint64_t elem) {
  uint64_t total = elem;
  for (int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return std::nullopt;
  }
  return total;
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> NonNegativeInt(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace

std::string_view TensorDTypeName(TensorDType d) {
  for (const auto& [v, n] : kDTypeNames) {
    if (v == d) return n;
  }
  return "UNKNOWN";
}

size_t TensorDTypeSize(TensorDType d) {
  switch (d) {
    case TensorDType::kF64:
    case TensorDType::kI64:
      return 8;
    case TensorDType::kF32:
    case TensorDType::kI32:
      return 4;
    case TensorDType::kF16:
    case TensorDType::kBF16:
    case TensorDType::kI16:
      return 2;
    case TensorDType::kI8:
    case TensorDType::kU8:
    case TensorDType::kBool:
      return 1;
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

// ----------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto invalid = [&path](std::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", AV(problem)));
  };
  auto invalid_tensor = [&path](const std::string& name, std::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", AV(problem)));
  };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid("not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return invalid(
        absl::StrCat("file is ", file_size, " bytes, too short for the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_err = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) return ErrnoStatus(mmap_err, absl::StrCat(path, ": mmap failed"));

  // From here on the destructor unmaps on every error path.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;
  const uint8_t* base = static_cast<const uint8_t*>(mapping);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > kMaxHeaderBytes) {
    return invalid(absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                kMaxHeaderBytes, " bytes"));
  }
  if (header_len > file_size - 8) {
    return invalid(absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                file_size, " bytes)"));
  }
  const uint8_t* data_start = base + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  try {
    const char* header_begin = reinterpret_cast<const char*>(base + 8);
    json header = json::parse(header_begin, header_begin + header_len, nullptr, false);
    if (header.is_discarded()) return invalid("header is not valid JSON");
    if (!header.is_object()) return invalid("header is not a JSON object");

    struct Range {
      uint64_t begin, end;
      const std::string* name;
    };
    std::vector<Range> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& entry = it.value();
      if (name == "__metadata__") {
        if (!entry.is_object()) return invalid("'__metadata__' must be an object of strings");
        for (auto m = entry.begin(); m != entry.end(); ++m) {
          if (!m.value().is_string()) {
            return invalid(
                absl::StrCat("'__metadata__' value for '", m.key(), "' is not a string"));
          }
          file->metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!entry.is_object()) return invalid_tensor(name, "entry is not a JSON object");

      auto dtype_it = entry.find("dtype");
      if (dtype_it == entry.end() || !dtype_it->is_string()) {
        return invalid_tensor(name, "missing or non-string 'dtype'");
      }
      const std::string dtype_name = dtype_it->get<std::string>();
      std::optional<TensorDType> dtype = DTypeFromName(dtype_name);
      if (!dtype.has_value()) {
        return invalid_tensor(name, absl::StrCat("unknown dtype \"", dtype_name, "\""));
      }

      auto shape_it = entry.find("shape");
      if (shape_it == entry.end() || !shape_it->is_array()) {
        return invalid_tensor(name, "'shape' must be a list of non-negative integers");
      }
      std::vector<int64_t> shape;
      for (const json& dim : *shape_it) {
        std::optional<uint64_t> d = NonNegativeInt(dim);
        if (!d.has_value() || *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return invalid_tensor(name, absl::StrCat("'shape' must be a list of non-negative "
                                                   "integers, got ",
                                                   shape_it->dump()));
        }
        shape.push_back(static_cast<int64_t>(*d));
      }

      auto offsets_it = entry.find("data_offsets");
      std::optional<uint64_t> begin, end;
      if (offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2) {
        begin = NonNegativeInt((*offsets_it)[0]);
        end = NonNegativeInt((*offsets_it)[1]);
      }
      if (!begin.has_value() || !end.has_value()) {
        return invalid_tensor(name, "'data_offsets' must be [begin, end] (non-negative integers)");
      }
      if (*begin > *end || *end > data_size) {
        return invalid_tensor(
            name, absl::StrCat("data_offsets [", *begin, ", ", *end,
                               "] out of bounds (need begin <= end <= data size ", data_size, ")"));
      }
      const uint64_t nbytes = *end - *begin;
      std::optional<uint64_t> expected = ByteSize(shape, TensorDTypeSize(*dtype));
      if (!expected.has_value() || *expected != nbytes) {
        return invalid_tensor(
            name, absl::StrCat("data_offsets span ", nbytes, " bytes but shape ", shape_it->dump(),
                               " x ", AV(dtype_name), " needs ",
                               expected.has_value() ? absl::StrCat(*expected) : "too many"));
      }

      TensorView view;
      view.name = name;
      view.dtype = *dtype;
      view.shape = std::move(shape);
      view.data = data_start + *begin;
      view.nbytes = static_cast<size_t>(nbytes);
      view.file = path;
      auto [pos, inserted] = file->tensors_.emplace(name, std::move(view));
      if (nbytes > 0) ranges.push_back({*begin, *end, &pos->first});
    }

    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[i - 1].end) {
        return invalid_tensor(*ranges[i].name,
                              absl::StrCat("data [", ranges[i].begin, ", ", ranges[i].end,
                                           ") overlaps tensor '", *ranges[i - 1].name, "' [",
                                           ranges[i - 1].begin, ", ", ranges[i - 1].end, ")"));
      }
    }
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("malformed header: ", e.what()));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

bool SafetensorsFile::Contains(std::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

absl::StatusOr<TensorView> SafetensorsFile::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": tensor '", AV(name), "' not found"));
  }
  return it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

// ----------------------------------------------------------------------------
// SafetensorsCheckpoint

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::OpenDirectory(
    const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat(dir, ": cannot access checkpoint directory"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  }
  auto ckpt = std::unique_ptr<SafetensorsCheckpoint>(new SafetensorsCheckpoint());
  ckpt->dir_ = dir;

  const std::string index_path = JoinPath(dir, "model.safetensors.index.json");
  if (FileExists(index_path)) {
    auto invalid = [&index_path](std::string_view problem) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", AV(problem)));
    };
    std::ifstream in(index_path, std::ios::binary);
    if (!in) return ErrnoStatus(errno, absl::StrCat(index_path, ": cannot open"));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::UnavailableError(absl::StrCat(index_path, ": read failed"));

    // (tensor, shard) pairs, validated before any shard is opened.
    std::vector<std::pair<std::string, std::string>> entries;
    try {
      json index = json::parse(text, nullptr, false);
      if (index.is_discarded()) return invalid("invalid JSON");
      if (!index.is_object()) return invalid("top level is not a JSON object");
      auto wm = index.find("weight_map");
      if (wm == index.end() || !wm->is_object()) {
        return invalid("'weight_map' missing or not an object");
      }
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string() || it.value().get<std::string>().empty()) {
          return invalid(absl::StrCat("tensor '", it.key(), "': shard is not a file name"));
        }
        entries.emplace_back(it.key(), it.value().get<std::string>());
      }
    } catch (const std::exception& e) {
      return invalid(absl::StrCat("malformed index: ", e.what()));
    }
    if (entries.empty()) return invalid("'weight_map' is empty");

    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [tensor, shard] : entries) {
      auto it = shards.find(shard);
      if (it == shards.end()) {
        const std::string shard_path = JoinPath(dir, shard);
        auto opened = SafetensorsFile::Open(shard_path);
        if (!opened.ok()) {
          return absl::Status(
              opened.status().code(),
              absl::StrCat(index_path, ": shard '", shard, "': ", opened.status().message()));
        }
        ckpt->files_.push_back(std::move(opened).value());
        it = shards.emplace(shard, ckpt->files_.back().get()).first;
      }
      if (!it->second->Contains(tensor)) {
        return invalid(absl::StrCat("tensor '", tensor, "' is listed in shard '", shard,
                                    "' but that shard does not contain it"));
      }
      ckpt->owner_.emplace(tensor, it->second);
    }
    return ckpt;
  }

  std::string single_path = JoinPath(dir, "model.safetensors");
  if (!FileExists(single_path)) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat(dir, ": cannot list directory"));
    std::vector<std::string> found;
    while (const dirent* ent = ::readdir(d)) {
      std::string_view name = ent->d_name;
      constexpr std::string_view kExt = ".safetensors";
      if (name.size() > kExt.size() && name.substr(name.size() - kExt.size()) == kExt) {
        found.emplace_back(name);
      }
    }
    ::closedir(d);
    if (found.empty()) {
      return absl::NotFoundError(
          absl::StrCat(dir,
                       ": no model.safetensors.index.json, model.safetensors or "
                       "*.safetensors file"));
    }
    if (found.size() > 1) {
      std::sort(found.begin(), found.end());
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": ", found.size(), " *.safetensors files (", found[0], ", ", found[1],
                       ", ...) but no model.safetensors.index.json"));
    }
    single_path = JoinPath(dir, found[0]);
  }
  MOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
  for (const std::string& name : file->Names()) ckpt->owner_.emplace(name, file.get());
  ckpt->files_.push_back(std::move(file));
  return ckpt;
}

bool SafetensorsCheckpoint::Contains(std::string_view name) const {
  return owner_.find(name) != owner_.end();
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(std::string_view name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": tensor '", AV(name), "' not found"));
  }
  return it->second->Get(name);
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(owner_.size());
  for (const auto& [name, file] : owner_) names.push_back(name);
  return names;
}

// ----------------------------------------------------------------------------
// Writing

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::string header_text;
  try {
    // ordered_json keeps __metadata__ first and the tensors in the order given.
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) meta[k] = v;
      header["__metadata__"] = std::move(meta);
    }
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const TensorToWrite& t : tensors) {
      auto bad = [&](std::string_view problem) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", t.name, "': ", AV(problem)));
      };
      if (t.name.empty() || t.name == "__metadata__") return bad("invalid tensor name");
      if (!seen.insert(t.name).second) return bad("duplicate tensor name");
      if (TensorDTypeSize(t.dtype) == 0) return bad("invalid dtype");
      std::optional<uint64_t> expected = ByteSize(t.shape, TensorDTypeSize(t.dtype));
      if (!expected.has_value()) return bad("shape has a negative or oversized dimension");
      if (*expected != t.data.size()) {
        return bad(
            absl::StrCat("data is ", t.data.size(), " bytes, shape x dtype needs ", *expected));
      }
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = std::string(TensorDTypeName(t.dtype));
      entry["shape"] = t.shape;
      entry["data_offsets"] = {offset, offset + t.data.size()};
      header[t.name] = std::move(entry);
      offset += t.data.size();
    }
    header_text = header.dump();
  } catch (const std::exception& e) {
    // dump() throws on invalid UTF-8 in names or metadata.
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot encode header: ", e.what()));
  }
  // Pad with spaces so that the data area starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return ErrnoStatus(errno, absl::StrCat(path, ": cannot create"));
  uint64_t n = header_text.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const TensorToWrite& t : tensors) {
    out.write(t.data.data(), static_cast<std::streamsize>(t.data.size()));
  }
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace mor

#include "model/safetensors_file.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A file with the given header text and data area (header length = header size).
std::string RawFile(const std::string& header, const std::string& data = "") {
  return LengthPrefix(header.size()) + header + data;
}

std::string View(const TensorView& v) {
  return std::string(reinterpret_cast<const char*>(v.data), v.nbytes);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            ("safetensors_test_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name())))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` as `name` and expects Open to fail with InvalidArgument whose
  // message names the path and contains every string in `parts`.
  void ExpectCorrupt(const std::string& bytes, const std::vector<std::string>& parts,
                     const std::string& name = "bad.safetensors") {
    const std::string path = Path(name);
    WriteAll(path, bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << "opened a corrupt file";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(std::string(f.status().message()), StartsWith(path + ": "));
    for (const std::string& part : parts) {
      EXPECT_THAT(std::string(f.status().message()), HasSubstr(part));
    }
  }

  std::string dir_;
};

std::vector<TensorToWrite> SampleTensors() {
  return {
      {"w.f32", TensorDType::kF32, {2, 3}, Bytes<float>({1, 2, 3, 4, 5, 6})},
      {"w.f16", TensorDType::kF16, {3}, Bytes<uint16_t>({0x3c00, 0x4000, 0x4200})},
      {"w.bf16", TensorDType::kBF16, {2, 1}, Bytes<uint16_t>({0x3f80, 0x4000})},
      {"w.f64", TensorDType::kF64, {2}, Bytes<double>({1.5, -2.25})},
      {"w.i64", TensorDType::kI64, {1, 2}, Bytes<int64_t>({-1, int64_t{1} << 40})},
      {"w.i32", TensorDType::kI32, {3}, Bytes<int32_t>({7, -8, 9})},
      {"w.i16", TensorDType::kI16, {2}, Bytes<int16_t>({-300, 300})},
      {"w.i8", TensorDType::kI8, {3}, Bytes<int8_t>({-1, 0, 1})},
      {"w.u8", TensorDType::kU8, {5}, Bytes<uint8_t>({0, 1, 2, 254, 255})},
      {"w.bool", TensorDType::kBool, {2}, Bytes<uint8_t>({1, 0})},
      {"scalar", TensorDType::kF32, {}, Bytes<float>({42})},
      {"empty", TensorDType::kF32, {0, 3}, ""},
  };
}

// ---------------------------------------------------------------------------
// DTypes and round trip

TEST(TensorDTypeTest, NamesAndSizes) {
  const std::vector<std::tuple<TensorDType, std::string, size_t>> expected = {
      {TensorDType::kF32, "F32", 4},   {TensorDType::kF16, "F16", 2},
      {TensorDType::kBF16, "BF16", 2}, {TensorDType::kF64, "F64", 8},
      {TensorDType::kI64, "I64", 8},   {TensorDType::kI32, "I32", 4},
      {TensorDType::kI16, "I16", 2},   {TensorDType::kI8, "I8", 1},
      {TensorDType::kU8, "U8", 1},     {TensorDType::kBool, "BOOL", 1},
  };
  for (const auto& [dtype, name, size] : expected) {
    EXPECT_EQ(TensorDTypeName(dtype), name);
    EXPECT_EQ(TensorDTypeSize(dtype), size) << name;
  }
}

TEST(TensorViewTest, Numel) {
  TensorView v;
  EXPECT_EQ(v.numel(), 1);  // scalar
  v.shape = {2, 3, 4};
  EXPECT_EQ(v.numel(), 24);
  v.shape = {5, 0};
  EXPECT_EQ(v.numel(), 0);
}

TEST_F(SafetensorsTest, WriteAndReadAllDtypes) {
  const std::string path = Path("all.safetensors");
  const std::vector<TensorToWrite> tensors = SampleTensors();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "hi"}}).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  std::vector<std::string> names;
  for (const TensorToWrite& t : tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ((*f)->Names(), names);

  for (const TensorToWrite& t : tensors) {
    SCOPED_TRACE(t.name);
    EXPECT_TRUE((*f)->Contains(t.name));
    absl::StatusOr<TensorView> v = (*f)->Get(t.name);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->name, t.name);
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    EXPECT_EQ(v->nbytes, t.data.size());
    EXPECT_EQ(static_cast<size_t>(v->numel()) * TensorDTypeSize(v->dtype), v->nbytes);
    EXPECT_EQ(v->file, path);
    EXPECT_EQ(View(*v), t.data);
  }
  absl::StatusOr<TensorView> f32 = (*f)->Get("w.f32");
  ASSERT_TRUE(f32.ok());
  float values[6];
  std::memcpy(values, f32->data, sizeof(values));
  EXPECT_THAT(values, ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST_F(SafetensorsTest, HeaderIsPaddedWithSpacesToMultipleOfEight) {
  for (int name_len = 1; name_len <= 9; ++name_len) {
    const std::string path = Path("pad" + std::to_string(name_len) + ".safetensors");
    ASSERT_TRUE(
        WriteSafetensors(path, {{std::string(name_len, 'a'), TensorDType::kU8, {3}, "xyz"}}).ok());
    const std::string bytes = ReadAll(path);
    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
    EXPECT_EQ(n % 8, 0u);
    ASSERT_EQ(bytes.size(), 8 + n + 3);
    const std::string header = bytes.substr(8, n);
    EXPECT_EQ(header.front(), '{');
    const size_t close = header.rfind('}');
    EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
    EXPECT_EQ(bytes.substr(8 + n), "xyz");
  }
}

TEST_F(SafetensorsTest, NoMetadataAndNoTensors) {
  const std::string path = Path("empty.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->Names().empty());
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  const std::string path = Path("w.safetensors");
  absl::Status s = WriteSafetensors(path, {{"t", TensorDType::kF32, {2}, "abc"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'t'"));
  s = WriteSafetensors(path,
                       {{"t", TensorDType::kU8, {1}, "a"}, {"t", TensorDType::kU8, {1}, "b"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = WriteSafetensors(path, {{"t", TensorDType::kU8, {-1}, ""}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = WriteSafetensors(path, {{"__metadata__", TensorDType::kU8, {1}, "a"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = WriteSafetensors(Path("no/such/dir/x.safetensors"), {});
  EXPECT_FALSE(s.ok());
}

TEST_F(SafetensorsTest, GetMissingTensorIsNotFoundNamingFileAndTensor) {
  const std::string path = Path("m.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, SampleTensors()).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE((*f)->Contains("nope"));
  absl::StatusOr<TensorView> v = (*f)->Get("nope");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(v.status().message(), path + ": tensor 'nope' not found");
}

TEST_F(SafetensorsTest, OpenMissingFileIsNotFound) {
  const std::string path = Path("absent.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path));
}

TEST_F(SafetensorsTest, AcceptsHandWrittenHeaderWithGapsAndEmptyTensors) {
  // Zero-sized tensors may share offsets; gaps between tensors are tolerated.
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                             R"("e1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("e2":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},)"
                             R"("b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  const std::string path = Path("gaps.safetensors");
  WriteAll(path, RawFile(header, "ABCDEFGH"));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(View(*(*f)->Get("a")), "EF");
  EXPECT_EQ(View(*(*f)->Get("b")), "AB");
  EXPECT_EQ((*f)->Get("e2")->nbytes, 0u);
}

// ---------------------------------------------------------------------------
// Corrupt headers

TEST_F(SafetensorsTest, RejectsTruncatedFile) {
  ExpectCorrupt("", {"too short"});
  ExpectCorrupt(std::string(5, '\0'), {"too short"});
  ExpectCorrupt(std::string(7, 'x'), {"too short"});
}

TEST_F(SafetensorsTest, RejectsHeaderLengthPastEnd) {
  const std::string path = Path("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, SampleTensors()).ok());
  std::string bytes = ReadAll(path);
  std::string patched = LengthPrefix(bytes.size()) + bytes.substr(8);  // N = file size > file - 8
  ExpectCorrupt(patched, {"header length", "past the end"});
  ExpectCorrupt(LengthPrefix(1), {"past the end"});
  // Truncating the file inside the header.
  ExpectCorrupt(bytes.substr(0, 20), {"past the end"});
}

TEST_F(SafetensorsTest, RejectsAbsurdHeaderLength) {
  ExpectCorrupt(LengthPrefix(200'000'000) + "{}", {"exceeds"});
  ExpectCorrupt(LengthPrefix(~uint64_t{0}) + "{}", {"exceeds"});
}

TEST_F(SafetensorsTest, RejectsGarbageJson) {
  ExpectCorrupt(RawFile("{not json"), {"not valid JSON"});
  ExpectCorrupt(RawFile(""), {"not valid JSON"});
  ExpectCorrupt(RawFile("\xff\xfe{}"), {"not valid JSON"});
  ExpectCorrupt(RawFile("[1, 2]"), {"not a JSON object"});
  ExpectCorrupt(RawFile("\"str\""), {"not a JSON object"});
}

TEST_F(SafetensorsTest, RejectsNonObjectEntry) {
  ExpectCorrupt(RawFile(R"({"t": 3})"), {"'t'", "not a JSON object"});
  ExpectCorrupt(RawFile(R"({"t": [1, 2]})"), {"'t'"});
}

TEST_F(SafetensorsTest, RejectsBadDtype) {
  ExpectCorrupt(RawFile(R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "x"),
                {"'t'", "unknown dtype", "Q4"});
  ExpectCorrupt(RawFile(R"({"t":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "x"),
                {"'t'", "dtype"});
  ExpectCorrupt(RawFile(R"({"t":{"shape":[1],"data_offsets":[0,1]}})", "x"), {"'t'", "dtype"});
  ExpectCorrupt(RawFile(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,1]}})", "x"),
                {"'t'", "dtype"});

  // By editing the bytes of a valid file: "F32" -> "X32".
  const std::string path = Path("ok.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", TensorDType::kF32, {1}, Bytes<float>({1})}}).ok());
  std::string bytes = ReadAll(path);
  size_t pos = bytes.find("\"F32\"");
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 1] = 'X';
  ExpectCorrupt(bytes, {"'w'", "X32"});
}

TEST_F(SafetensorsTest, RejectsBadShape) {
  for (const std::string shape : {"[-1]", "[2, -3]", "[1.5]", "[\"2\"]", "2", "null", "{}"}) {
    SCOPED_TRACE(shape);
    ExpectCorrupt(
        RawFile(R"({"t":{"dtype":"U8","shape":)" + shape + R"(,"data_offsets":[0,2]}})", "xx"),
        {"'t'", "shape"});
  }
  ExpectCorrupt(RawFile(R"({"t":{"dtype":"U8","data_offsets":[0,2]}})", "xx"), {"'t'", "shape"});
}

TEST_F(SafetensorsTest, RejectsBadOffsets) {
  auto file = [](const std::string& offsets) {
    return RawFile(R"({"t":{"dtype":"U8","shape":[2],"data_offsets":)" + offsets + "}}", "xxxx");
  };
  for (const std::string offsets : {"[0]", "[0,2,4]", "[-1,1]", "[0.5,2]", "\"0,2\"", "null"}) {
    SCOPED_TRACE(offsets);
    ExpectCorrupt(file(offsets), {"'t'", "data_offsets"});
  }
  ExpectCorrupt(file("[3,1]"), {"'t'", "out of bounds"});  // begin > end
  ExpectCorrupt(file("[3,5]"), {"'t'", "out of bounds"});  // end past the data (4 bytes)
  ExpectCorrupt(file("[10,12]"), {"'t'", "out of bounds"});
  ExpectCorrupt(RawFile(R"({"t":{"dtype":"U8","shape":[2]}})", "xx"), {"'t'", "data_offsets"});

  // By truncating a valid file: the last tensor's data runs past the end.
  const std::string path = Path("ok.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", TensorDType::kF32, {2}, Bytes<float>({1, 2})}}).ok());
  std::string bytes = ReadAll(path);
  ExpectCorrupt(bytes.substr(0, bytes.size() - 1), {"'w'", "out of bounds"});
}

TEST_F(SafetensorsTest, RejectsSizeMismatch) {
  ExpectCorrupt(
      RawFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", std::string(16, 'x')),
      {"'t'", "12 bytes", "16"});
  ExpectCorrupt(RawFile(R"({"t":{"dtype":"BF16","shape":[3],"data_offsets":[0,3]}})", "xxx"),
                {"'t'"});
  // numel x dtype size overflows.
  ExpectCorrupt(
      RawFile(R"({"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
              std::string(8, 'x')),
      {"'t'"});
  // By editing the bytes of a valid file: shape [4] -> [5].
  const std::string path = Path("ok.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", TensorDType::kU8, {4}, "abcd"}}).ok());
  std::string bytes = ReadAll(path);
  size_t pos = bytes.find("[4]");
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 1] = '5';
  ExpectCorrupt(bytes, {"'w'", "needs 5"});
}

TEST_F(SafetensorsTest, RejectsOverlap) {
  ExpectCorrupt(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        std::string(12, 'x')),
                {"overlaps", "'a'", "'b'"});
  // Identical ranges overlap too.
  ExpectCorrupt(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                        "xxxx"),
                {"overlaps"});
  // A range containing another.
  ExpectCorrupt(RawFile(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                        std::string(8, 'x')),
                {"overlaps"});
}

TEST_F(SafetensorsTest, RejectsBadMetadata) {
  ExpectCorrupt(RawFile(R"({"__metadata__":{"format":1}})"), {"__metadata__", "format"});
  ExpectCorrupt(RawFile(R"({"__metadata__":["a"]})"), {"__metadata__"});
  ExpectCorrupt(RawFile(R"({"__metadata__":"pt"})"), {"__metadata__"});
}

TEST_F(SafetensorsTest, RejectsDirectory) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(dir_);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(dir_));
}

// ---------------------------------------------------------------------------
// Checkpoint directories

TEST_F(SafetensorsTest, CheckpointSingleModelFile) {
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), SampleTensors()).ok());
  // A stray other file is ignored when model.safetensors exists.
  ASSERT_TRUE(WriteSafetensors(Path("other.safetensors"), {}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->directory(), dir_);
  EXPECT_EQ((*c)->Names().size(), SampleTensors().size());
  EXPECT_TRUE((*c)->Contains("w.i32"));
  absl::StatusOr<TensorView> v = (*c)->Get("w.i32");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(View(*v), Bytes<int32_t>({7, -8, 9}));
  EXPECT_EQ(v->file, Path("model.safetensors"));
}

TEST_F(SafetensorsTest, CheckpointSingleOtherFile) {
  ASSERT_TRUE(
      WriteSafetensors(Path("weights.safetensors"), {{"x", TensorDType::kU8, {1}, "z"}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->Names(), ElementsAre("x"));
}

TEST_F(SafetensorsTest, CheckpointSeveralFilesWithoutIndexIsAnError) {
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), {}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("b.safetensors"), {}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(dir_));
}

TEST_F(SafetensorsTest, CheckpointEmptyOrMissingDirectoryIsNotFound) {
  WriteAll(Path("config.json"), "{}");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(dir_));

  c = SafetensorsCheckpoint::OpenDirectory(Path("nope"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, CheckpointCorruptSingleFileNamesIt) {
  WriteAll(Path("model.safetensors"), RawFile("{oops"));
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(Path("model.safetensors")));
}

class ShardedCheckpointTest : public SafetensorsTest {
 protected:
  void WriteShards() {
    ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"),
                                 {{"a", TensorDType::kF32, {2}, Bytes<float>({1, 2})},
                                  {"b", TensorDType::kI8, {1}, Bytes<int8_t>({-5})}})
                    .ok());
    ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                                 {{"c", TensorDType::kBF16, {1}, Bytes<uint16_t>({0x3f80})},
                                  {"unlisted", TensorDType::kU8, {1}, "u"}})
                    .ok());
  }
  void WriteIndex(const std::string& weight_map) {
    WriteAll(Path("model.safetensors.index.json"),
             R"({"metadata":{"total_size":11},"weight_map":)" + weight_map + "}");
  }
  static constexpr char kGoodMap[] =
      R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
      R"("c":"model-00002-of-00002.safetensors"})";

  absl::Status OpenError() {
    absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
        SafetensorsCheckpoint::OpenDirectory(dir_);
    EXPECT_FALSE(c.ok());
    return c.ok() ? absl::OkStatus() : c.status();
  }
};

TEST_F(ShardedCheckpointTest, ReadsShardsThroughIndex) {
  WriteShards();
  WriteIndex(kGoodMap);
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->Names(), ElementsAre("a", "b", "c"));
  EXPECT_TRUE((*c)->Contains("c"));
  EXPECT_FALSE((*c)->Contains("unlisted"));  // only the index's tensors are served
  absl::StatusOr<TensorView> a = (*c)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(View(*a), Bytes<float>({1, 2}));
  EXPECT_EQ(a->file, Path("model-00001-of-00002.safetensors"));
  absl::StatusOr<TensorView> cv = (*c)->Get("c");
  ASSERT_TRUE(cv.ok());
  EXPECT_EQ(cv->dtype, TensorDType::kBF16);
  EXPECT_EQ(View(*cv), Bytes<uint16_t>({0x3f80}));
  EXPECT_EQ(cv->file, Path("model-00002-of-00002.safetensors"));

  absl::StatusOr<TensorView> missing = (*c)->Get("zzz");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), dir_ + ": tensor 'zzz' not found");
}

TEST_F(ShardedCheckpointTest, IndexTakesPrecedenceOverModelFile) {
  WriteShards();
  WriteIndex(kGoodMap);
  ASSERT_TRUE(
      WriteSafetensors(Path("model.safetensors"), {{"x", TensorDType::kU8, {1}, "x"}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::OpenDirectory(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->Names(), ElementsAre("a", "b", "c"));
}

TEST_F(ShardedCheckpointTest, MissingShardNamesIndexAndShard) {
  WriteShards();
  WriteIndex(R"({"a":"model-00001-of-00002.safetensors","d":"model-00003.safetensors"})");
  absl::Status s = OpenError();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(Path("model.safetensors.index.json")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("model-00003.safetensors"));
}

TEST_F(ShardedCheckpointTest, TensorMissingFromShardNamesIndexShardAndTensor) {
  WriteShards();
  WriteIndex(R"({"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"})");
  absl::Status s = OpenError();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(Path("model.safetensors.index.json")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'c'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("model-00001-of-00002.safetensors"));
}

TEST_F(ShardedCheckpointTest, CorruptShardNamesIndexShardAndTensor) {
  WriteShards();
  WriteAll(Path("model-00002-of-00002.safetensors"),
           RawFile(R"({"c":{"dtype":"BF16","shape":[3],"data_offsets":[0,2]}})", "xx"));
  WriteIndex(kGoodMap);
  absl::Status s = OpenError();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(Path("model.safetensors.index.json")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'c'"));
}

TEST_F(ShardedCheckpointTest, MalformedIndex) {
  WriteShards();
  const std::string index = Path("model.safetensors.index.json");
  for (const std::string text :
       {"{not json", "[1]", R"({"metadata":{}})", R"({"weight_map":[]})",
        R"({"weight_map":{"a":3}})", R"({"weight_map":{"a":""}})", R"({"weight_map":{}})"}) {
    SCOPED_TRACE(text);
    WriteAll(index, text);
    absl::Status s = OpenError();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), StartsWith(index + ": "));
  }
}

}  // namespace
}  // namespace mor

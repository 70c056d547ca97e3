// Unit tests of the byte-level BPE tokenizer (model/tokenizer.h), its
// pre-tokenizer regex translation, the UTF-8 repair and the streaming
// detokenizer. Tokenizers are built here from small JSON documents; exact
// parity with HF `tokenizers` is tokenizer_parity_test's job.
#include "model/tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/incremental_detokenizer.h"
#include "model/pre_tokenizer.h"
#include "model/utf8.h"
#include "nlohmann/json.hpp"

namespace mor {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr std::string_view kFffd = "\xEF\xBF\xBD";

// GPT-2's byte -> character map, written independently of the library.
std::string ByteChar(int b) {
  int n = 0;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
    const int cp = printable ? x : 256 + n++;
    if (x != b) continue;
    std::string out;
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return out;
  }
  return "";
}

std::string Level(std::string_view raw) {
  std::string out;
  for (const char c : raw) out += ByteChar(static_cast<unsigned char>(c));
  return out;
}

// Byte tokens are ids 0..255 (id = byte value); merges build "hello", " world"
// (ids 256..264); then the added tokens. As in HF, an added token that is not
// in the vocab is numbered from the vocab size on, whatever its "id" says.
constexpr int32_t kEot = 265, kBos = 266;
json TinyTokenizerJson() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},          {"he", "ll"}, {"hell", "o"},        {Level(" "), "w"},
      {"o", "r"}, {Level(" w"), "or"}, {"l", "d"},   {Level(" wor"), "ld"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back({a, b});
  }
  auto added = [](int id, const char* content, bool special) {
    return json{{"id", id},          {"content", content}, {"single_word", false},
                {"lstrip", false},   {"rstrip", false},    {"normalized", !special},
                {"special", special}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens", {added(kEot, "<|endoftext|>", true), added(kBos, "<|bos|>", true)}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<|bos|>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {kBos}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
}

std::unique_ptr<Tokenizer> Load(const json& j) {
  auto t = Tokenizer::FromJson(j.dump(), "tiny.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(t).value() : nullptr;
}

absl::Status LoadStatus(const json& j) {
  return Tokenizer::FromJson(j.dump(), "bad.json").status();
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const utf8::Sequence seq = utf8::Decode(s, i);
    if (!seq.valid) return false;
    i += seq.length;
  }
  return true;
}

std::vector<int32_t> ByteIds(std::string_view raw) {  // byte tokens have id = byte
  std::vector<int32_t> ids;
  for (const char c : raw) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

TEST(TokenizerTest, EncodesWithMergesAndTemplate) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  const int32_t hello = *t->TokenToId("hello"), world = *t->TokenToId(Level(" world"));
  EXPECT_THAT(t->Encode("hello world", false), ElementsAre(hello, world));
  EXPECT_THAT(t->Encode("hello world", true), ElementsAre(kBos, hello, world));
  EXPECT_THAT(t->Encode("", true), ElementsAre(kBos));
  EXPECT_TRUE(t->Encode("", false).empty());
  EXPECT_EQ(t->bos_token_id(), kBos);
  EXPECT_EQ(t->eos_token_id(), kEot);  // <|endoftext|> by name
  EXPECT_EQ(t->vocab_size(), 256 + 9 + 2);
  EXPECT_EQ(t->IdToToken(hello), "hello");
  EXPECT_EQ(t->IdToToken(99999), std::nullopt);
}

TEST(TokenizerTest, SpecialTokensInTextAreRecognisedAndSkippable) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  const int32_t hello = *t->TokenToId("hello");
  const std::vector<int32_t> ids = t->Encode("hello<|endoftext|>hello", false);
  EXPECT_THAT(ids, ElementsAre(hello, kEot, hello));
  EXPECT_EQ(t->Decode(ids, false), "hello<|endoftext|>hello");
  EXPECT_EQ(t->Decode(ids, true), "hellohello");
  EXPECT_TRUE(t->IsSpecialToken(kEot));
  EXPECT_FALSE(t->IsSpecialToken(hello));
  EXPECT_THAT(t->special_token_ids(), ElementsAre(kEot, kBos));
  // A near miss is ordinary text.
  EXPECT_EQ(t->Decode(t->Encode("<|endoftext|", false), false), "<|endoftext|");
}

TEST(TokenizerTest, DecodeDropsUnknownIdsAndRepairsUtf8LikeHf) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Decode({-1, 'a', 123456, 'b'}, false), "ab");
  // Rust String::from_utf8_lossy: one U+FFFD per maximal invalid subpart; a
  // truncated sequence at the end is one subpart.
  const std::string f(kFffd);
  EXPECT_EQ(t->Decode(ByteIds("\xE2\x82\xAC"), false), "\xE2\x82\xAC");
  EXPECT_EQ(t->Decode(ByteIds("\xE2\x82"), false), f);
  EXPECT_EQ(t->Decode(ByteIds("\xE2\x82"
                              "A"),
                      false),
            f + "A");
  EXPECT_EQ(t->Decode(ByteIds("\xC0\xAF"), false), f + f);
  EXPECT_EQ(t->Decode(ByteIds("\xED\xA0\x80"), false), f + f + f);          // surrogate
  EXPECT_EQ(t->Decode(ByteIds("\xF4\x90\x80\x80"), false), f + f + f + f);  // > U+10FFFF
  EXPECT_EQ(t->Decode(ByteIds("\xF0\x9F\x98"), false), f);
  EXPECT_EQ(t->Decode(ByteIds("a\xFF"
                              "b\x80\x80"),
                      false),
            "a" + f + "b" + f + f);
}

TEST(TokenizerTest, InvalidUtf8InputRoundTripsThroughLossyDecode) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  const std::string raw = "ok \xFF\xFE then \xE2\x82 end";
  EXPECT_EQ(t->Decode(t->Encode(raw, false), false), utf8::Lossy(raw));
}

TEST(TokenizerTest, LongWordsUseTheFullMergeLoop) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  std::string text;
  for (int i = 0; i < 5000; ++i) text += "hello";
  const std::vector<int32_t> ids = t->Encode(text, false);
  EXPECT_EQ(ids.size(), 5000u);
  EXPECT_EQ(t->Decode(ids, false), text);
}

TEST(TokenizerTest, ConcurrentEncodesAgree) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "hello world w" + std::to_string(i) + " ";
  const std::vector<int32_t> serial = t->Encode(text, false);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&] { r = t->Encode(text, false); });
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, serial);
}

TEST(TokenizerTest, MalformedFilesAreInvalidArgumentNamingTheSource) {
  auto not_json = Tokenizer::FromJson("{ not json", "broken/tokenizer.json");
  EXPECT_EQ(not_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_json.status().message()), HasSubstr("broken/tokenizer.json"));

  EXPECT_EQ(LoadStatus(json::array()).code(), absl::StatusCode::kInvalidArgument);
  json j = TinyTokenizerJson();
  j.erase("model");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);

  j = TinyTokenizerJson();
  j["model"]["merges"].push_back({"h", "nonexistent"});
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not in the vocab"));

  j = TinyTokenizerJson();
  j["model"]["merges"].push_back("a b c");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);

  j = TinyTokenizerJson();
  j["model"]["vocab"]["x"] = "seven";
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);

  j = TinyTokenizerJson();
  j["model"]["vocab"] = json::array();
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);

  j = TinyTokenizerJson();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<|missing|>";
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);

  j = TinyTokenizerJson();
  j["model"]["unk_token"] = "<unk>";  // not in the vocab
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTest, UnsupportedModelsAreUnimplemented) {
  auto expect_unimplemented = [](const json& j, const std::string& mention) {
    const absl::Status s = LoadStatus(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(mention));
    EXPECT_THAT(std::string(s.message()), HasSubstr("bad.json"));
  };
  json j = TinyTokenizerJson();
  j["model"]["type"] = "WordPiece";
  expect_unimplemented(j, "WordPiece");
  j = TinyTokenizerJson();
  j["normalizer"] = {{"type", "NFC"}};
  expect_unimplemented(j, "NFC");
  j = TinyTokenizerJson();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_unimplemented(j, "Metaspace");
  j = TinyTokenizerJson();
  j["pre_tokenizer"] = nullptr;
  expect_unimplemented(j, "pre_tokenizer");
  j = TinyTokenizerJson();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_unimplemented(j, "WordPiece");
  j = TinyTokenizerJson();
  j["model"]["byte_fallback"] = true;
  expect_unimplemented(j, "byte_fallback");
  j = TinyTokenizerJson();
  j["model"]["dropout"] = 0.1;
  expect_unimplemented(j, "dropout");
  j = TinyTokenizerJson();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  expect_unimplemented(j, "RobertaProcessing");
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  auto split = [](const std::string& regex, bool invert) {
    return json{{"type", "Split"},
                {"pattern", {{"Regex", regex}}},
                {"behavior", "Isolated"},
                {"invert", invert}};
  };
  j = TinyTokenizerJson();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {split("a(?=b)", false), byte_level}}};
  expect_unimplemented(j, "lookaround");
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {split("(a)\\1", false), byte_level}}};
  expect_unimplemented(j, "backreference");
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split("a", true), byte_level}}};
  expect_unimplemented(j, "invert");
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {byte_level, split("a", false)}}};
  expect_unimplemented(j, "last");
}

TEST(TokenizerTest, FromFileReportsMissingFilesAndReadsTokenizerConfig) {
  auto missing = Tokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("/nonexistent/dir/tokenizer.json"));

  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("mor_tokenizer_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  json j = TinyTokenizerJson();
  j["post_processor"] = nullptr;
  std::ofstream(dir / "tokenizer.json") << j.dump();
  std::ofstream(dir / "tokenizer_config.json")
      << json{{"bos_token", {{"content", "<|endoftext|>"}}}, {"eos_token", "<|bos|>"}}.dump();
  auto t = Tokenizer::FromFile((dir / "tokenizer.json").string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->bos_token_id(), kEot);
  EXPECT_EQ((*t)->eos_token_id(), kBos);
  EXPECT_EQ((*t)->Encode("hello", true), (*t)->Encode("hello", false));  // no template
  std::filesystem::remove_all(dir);
}

TEST(PreTokenizerTest, TranslatesOnigurumaClassesAndLookahead) {
  bool lookahead = false;
  auto p = TranslateOnigPattern(R"((?i:'s|'t)|\p{L}+|\s+(?!\S)|\s+)", &lookahead);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(lookahead);
  EXPECT_EQ(*p, R"((?:'[sS]|'[tT])|\p{L}+|[\t-\r\x{85}\p{Z}]+)");
  p = TranslateOnigPattern(R"([^\s\p{L}]\d)", &lookahead);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(lookahead);
  EXPECT_EQ(*p, R"([^\t-\r\x{85}\p{Z}\p{L}]\p{Nd})");
  EXPECT_EQ(TranslateOnigPattern(R"(a(?!b))", &lookahead).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(TranslateOnigPattern(R"((?i:[a-z]))", &lookahead).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(TranslateOnigPattern(R"(^\s+)", &lookahead).status().code(),
            absl::StatusCode::kUnimplemented);
  p = TranslateOnigPattern(R"([^$]\$)", &lookahead);  // in a class or escaped: literal
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, R"([^$]\$)");
}

std::vector<std::string> Ranges(const OnigRegex& re, std::string_view text) {
  std::vector<std::string> out;
  re.ForEachRange(text, [&](size_t b, size_t e, bool) { out.emplace_back(text.substr(b, e - b)); });
  return out;
}

TEST(PreTokenizerTest, WhitespaceRunsKeepTheirLastSpaceForTheNextWord) {
  auto re = OnigRegex::Create(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  ASSERT_TRUE(re.ok()) << re.status();
  EXPECT_THAT(Ranges(**re, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Ranges(**re, "a \n b"), ElementsAre("a", " \n", " b"));
  EXPECT_THAT(Ranges(**re, "a\n\nb"), ElementsAre("a", "\n", "\n", "b"));
  EXPECT_THAT(Ranges(**re, "end   "), ElementsAre("end", "   "));
  EXPECT_THAT(Ranges(**re,
                     "a\xC2\xA0\xC2\xA0"
                     "b"),
              ElementsAre("a", "\xC2\xA0", "\xC2\xA0", "b"));
  // Llama 3: an earlier alternative (\s*[\r\n]+) keeps the whole run.
  auto llama = OnigRegex::Create(
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_THAT(Ranges(**llama, "a \n\n  b"), ElementsAre("a", " \n\n", " ", " b"));
  EXPECT_THAT(Ranges(**llama, "I'M 12345"), ElementsAre("I", "'M", " ", "123", "45"));
}

TEST(Utf8Test, StablePrefixHoldsBackOnlyTruncatedCharacters) {
  EXPECT_EQ(utf8::StablePrefixLength("abc"), 3u);
  EXPECT_EQ(utf8::StablePrefixLength("ab\xE2\x82"), 2u);
  EXPECT_EQ(utf8::StablePrefixLength("ab\xE2\x82\xAC"), 5u);
  EXPECT_EQ(utf8::StablePrefixLength("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(utf8::StablePrefixLength("a\xE2\x28"), 3u);  // invalid: decided now
  EXPECT_EQ(utf8::StablePrefixLength("a\x80"), 2u);
  EXPECT_EQ(utf8::StablePrefixLength("\xE2\xE2\x82"), 1u);
}

TEST(IncrementalDetokenizerTest, HoldsBackSplitCharacters) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  IncrementalDetokenizer detok(t.get(), false);
  const std::vector<int32_t> smile = ByteIds("\xF0\x9F\x98\x80");
  EXPECT_EQ(detok.Push(smile[0]), "");
  EXPECT_EQ(detok.Push(smile[1]), "");
  EXPECT_EQ(detok.Push(smile[2]), "");
  EXPECT_EQ(detok.pending_bytes(), 3u);
  EXPECT_EQ(detok.Push(smile[3]), "\xF0\x9F\x98\x80");
  EXPECT_EQ(detok.Push(0xE2), "");
  EXPECT_EQ(detok.Push('A'), std::string(kFffd) + "A");  // decided as soon as it is invalid
  EXPECT_EQ(detok.Push(0xE2), "");
  EXPECT_EQ(detok.Flush(), kFffd);  // truncated at the end, as Decode does
  EXPECT_EQ(detok.pending_bytes(), 0u);
}

// Random id streams pushed in random chunks: the deltas concatenate to
// Decode(all ids), each is valid UTF-8 (so none ends inside a character), and
// at most a truncated character (3 bytes) is ever held back.
TEST(IncrementalDetokenizerTest, RandomStreamsMatchDecode) {
  auto t = Load(TinyTokenizerJson());
  ASSERT_NE(t, nullptr);
  std::mt19937 rng(42);
  // Bias toward multi-byte lead and continuation bytes so characters split often.
  std::vector<int32_t> pool;
  for (int b = 0; b < 256; ++b) pool.push_back(b);
  for (int b = 0x80; b < 0x100; ++b) pool.insert(pool.end(), 3, b);
  for (const char* s : {"\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xC3\xA9"}) {
    for (const int32_t id : ByteIds(s)) pool.insert(pool.end(), 20, id);
  }
  pool.insert(pool.end(), 20, kEot);  // special
  pool.push_back(-5);                 // unknown
  pool.push_back(*t->TokenToId("hello"));
  for (int trial = 0; trial < 2000; ++trial) {
    const bool skip = trial % 2 == 1;
    std::vector<int32_t> ids(std::uniform_int_distribution<int>(0, 40)(rng));
    for (int32_t& id : ids)
      id = pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng)];
    IncrementalDetokenizer detok(t.get(), skip);
    std::string streamed;
    for (size_t i = 0; i < ids.size();) {
      const size_t n = std::min(ids.size() - i, std::uniform_int_distribution<size_t>(1, 3)(rng));
      const std::string delta = detok.Push(absl::MakeConstSpan(ids.data() + i, n));
      ASSERT_TRUE(IsValidUtf8(delta)) << "trial " << trial;
      ASSERT_LE(detok.pending_bytes(), 3u);
      streamed += delta;
      i += n;
    }
    const std::string rest = detok.Flush();
    ASSERT_TRUE(IsValidUtf8(rest));
    streamed += rest;
    ASSERT_EQ(streamed, t->Decode(ids, skip)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace mor

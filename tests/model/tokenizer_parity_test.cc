// Parity of the C++ tokenizer with HF `tokenizers`: exact ids and exact decoded
// strings on the fixtures of tools/reference/make_tokenizer_fixtures.py (one
// trained tokenizer per style: gpt2, llama3, smollm, options, splits; and the
// embedded default model's tokenizer, models/default, on the parity corpus plus
// every document of its KJV training and validation corpus). The fixtures
// directory is $MOR_TOKENIZER_FIXTURES, else $MOR_BUILD_DIR/tokenizer_parity
// (written by the CTest fixtures `tokenizer_fixtures` and
// `tokenizer_default_model_fixtures`).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/incremental_detokenizer.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace mor {
namespace {

using json = nlohmann::json;

std::string FixtureDir() {
  if (const char* dir = std::getenv("MOR_TOKENIZER_FIXTURES")) return dir;
  if (const char* build = std::getenv("MOR_BUILD_DIR")) {
    return std::string(build) + "/tokenizer_parity";
  }
  return "tokenizer_parity";
}

// Printable form of a test string for failure messages.
std::string Escaped(const std::string& s) {
  std::string out = json(s).dump();
  return out.size() > 200 ? out.substr(0, 200) + "..." : out;
}

// The fields a corpus entry of the fixtures may leave out (see
// make_tokenizer_fixtures.py): ids_special defaults to ids, decoded to text and
// decoded_skip to decoded.
const json& ExpectedIdsSpecial(const json& c) {
  return c.contains("ids_special") ? c["ids_special"] : c["ids"];
}
std::string ExpectedDecoded(const json& c) {
  return (c.contains("decoded") ? c["decoded"] : c["text"]).get<std::string>();
}
std::string ExpectedDecodedSkip(const json& c) {
  return c.contains("decoded_skip") ? c["decoded_skip"].get<std::string>() : ExpectedDecoded(c);
}

// Equal id streams, or the first difference with a few ids around it (corpus
// documents have ~1000 ids; printing them whole would bury the difference).
::testing::AssertionResult IdsEqual(const std::vector<int32_t>& actual,
                                    const std::vector<int32_t>& expected) {
  if (actual == expected) return ::testing::AssertionSuccess();
  const size_t n = std::min(actual.size(), expected.size());
  size_t i = 0;
  while (i < n && actual[i] == expected[i]) ++i;
  auto window = [i](const std::vector<int32_t>& ids) {
    std::ostringstream out;
    const size_t from = i < 4 ? 0 : i - 4;
    out << "[" << from << "..]";
    for (size_t k = from; k < std::min(ids.size(), i + 6); ++k) out << " " << ids[k];
    return out.str();
  };
  return ::testing::AssertionFailure()
         << "ids differ at index " << i << " (sizes " << actual.size() << " vs " << expected.size()
         << "): C++ " << window(actual) << ", HF " << window(expected);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

class TokenizerParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = FixtureDir() + "/" + GetParam();
    std::ifstream in(dir + "/expected.json");
    ASSERT_TRUE(in) << "no fixtures in " << dir
                    << "; run tools/reference/make_tokenizer_fixtures.py --out " << FixtureDir()
                    << " (ctest runs it as the tokenizer_fixtures test)";
    expected_ = json::parse(in);
    auto tok = Tokenizer::FromFile(dir + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(tok).value();
  }

  static std::vector<int32_t> Ids(const json& j) { return j.get<std::vector<int32_t>>(); }

  json expected_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(TokenizerParityTest, VocabAndSpecialTokens) {
  EXPECT_EQ(tokenizer_->vocab_size(), expected_["vocab_size"].get<int64_t>());
  const json& tokens = expected_["id_to_token"];
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::optional<std::string> token = tokenizer_->IdToToken(static_cast<int32_t>(id));
    if (tokens[id].is_null()) {
      EXPECT_FALSE(token.has_value()) << "id " << id;
      continue;
    }
    ASSERT_TRUE(token.has_value()) << "id " << id;
    EXPECT_EQ(*token, tokens[id].get<std::string>()) << "id " << id;
    EXPECT_EQ(tokenizer_->TokenToId(*token), static_cast<int32_t>(id)) << *token;
  }
  auto optional_id = [](const json& j) -> std::optional<int32_t> {
    return j.is_null() ? std::nullopt : std::optional<int32_t>(j.get<int32_t>());
  };
  EXPECT_EQ(tokenizer_->bos_token_id(), optional_id(expected_["bos"]));
  EXPECT_EQ(tokenizer_->eos_token_id(), optional_id(expected_["eos"]));
}

TEST_P(TokenizerParityTest, EncodeMatchesHf) {
  int mismatches = 0;
  for (const json& c : expected_["encode"]) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> ids = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    const std::vector<int32_t> with_special = tokenizer_->Encode(text, /*add_special_tokens=*/true);
    const std::vector<int32_t> expected = Ids(c["ids"]);
    const std::vector<int32_t> expected_special = Ids(ExpectedIdsSpecial(c));
    if (ids != expected || with_special != expected_special) ++mismatches;
    EXPECT_TRUE(IdsEqual(ids, expected)) << "text " << Escaped(text);
    EXPECT_TRUE(IdsEqual(with_special, expected_special))
        << "add_special_tokens, text " << Escaped(text);
  }
  EXPECT_EQ(mismatches, 0) << "of " << expected_["encode"].size() << " texts";
}

TEST_P(TokenizerParityTest, EncodeIsStableWithWarmCache) {
  // A second pass hits the word cache for every word.
  for (int pass = 0; pass < 2; ++pass) {
    for (const json& c : expected_["encode"]) {
      ASSERT_TRUE(IdsEqual(tokenizer_->Encode(c["text"].get<std::string>(), false), Ids(c["ids"])))
          << "pass " << pass << " text " << Escaped(c["text"].get<std::string>());
    }
  }
}

TEST_P(TokenizerParityTest, DecodeMatchesHf) {
  for (const json& c : expected_["encode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    // EXPECT_TRUE: a failure prints the text once, not whole corpus documents.
    EXPECT_TRUE(tokenizer_->Decode(ids, false) == ExpectedDecoded(c))
        << "text " << Escaped(c["text"].get<std::string>());
    EXPECT_TRUE(tokenizer_->Decode(ids, true) == ExpectedDecodedSkip(c))
        << "text " << Escaped(c["text"].get<std::string>());
  }
  for (const json& c : expected_["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids, false), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tokenizer_->Decode(ids, true), c["text_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(TokenizerParityTest, StreamingMatchesHfDecode) {
  for (const json& c : expected_["encode"]) {  // one id at a time, as a server streams
    for (const bool skip : {false, true}) {
      IncrementalDetokenizer detok(tokenizer_.get(), skip);
      std::string streamed;
      for (const int32_t id : Ids(c["ids"])) streamed += detok.Push(id);
      streamed += detok.Flush();
      EXPECT_TRUE(streamed == (skip ? ExpectedDecodedSkip(c) : ExpectedDecoded(c)))
          << "skip " << skip << " text " << Escaped(c["text"].get<std::string>());
    }
  }
  for (const json& c : expected_["decode"]) {
    for (const bool skip : {false, true}) {
      IncrementalDetokenizer detok(tokenizer_.get(), skip);
      std::string streamed;
      for (const int32_t id : Ids(c["ids"])) streamed += detok.Push(id);
      streamed += detok.Flush();
      EXPECT_EQ(streamed, c[skip ? "text_skip" : "text"].get<std::string>()) << c["ids"].dump();
    }
  }
}

std::string StyleName(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

INSTANTIATE_TEST_SUITE_P(Styles, TokenizerParityTest,
                         ::testing::Values("gpt2", "llama3", "smollm", "options", "splits"),
                         StyleName);
// Its own prefix: CTest runs these after `tokenizer_default_model_fixtures`
// (which needs the Debian mirror for the KJV corpus), the others do not wait for it.
INSTANTIATE_TEST_SUITE_P(DefaultModel, TokenizerParityTest, ::testing::Values("default_model"),
                         StyleName);

// The default model fixture covers the whole KJV corpus: every file listed in
// its corpora is, byte for byte, its documents joined by blank lines, matches
// the corpus.json next to it, and has a range of encode entries of its own.
TEST(DefaultModelTokenizerCorpus, FixtureCoversTheWholeKjvCorpus) {
  const std::string dir = FixtureDir() + "/default_model";
  std::ifstream in(dir + "/expected.json");
  ASSERT_TRUE(in) << "no fixtures in " << dir << " (ctest writes them in the "
                  << "tokenizer_default_model_fixtures test)";
  const json expected = json::parse(in);
  ASSERT_TRUE(expected.contains("corpora"));
  const json& encode = expected["encode"];
  std::vector<std::string> names;
  int64_t documents = 0;
  for (const json& corpus : expected["corpora"]) {
    const std::string name = corpus["name"].get<std::string>();
    const std::string path = corpus["path"].get<std::string>();
    names.push_back(name);
    const size_t first = corpus["first"].get<size_t>();
    const size_t count = corpus["count"].get<size_t>();
    ASSERT_LE(first + count, encode.size()) << name;
    EXPECT_EQ(static_cast<int64_t>(count), corpus["documents"].get<int64_t>()) << name;
    std::string joined;
    for (size_t i = first; i < first + count; ++i) {
      if (i > first) joined += "\n\n";
      joined += encode[i]["text"].get<std::string>();
    }
    const std::string file = ReadFile(path);
    EXPECT_EQ(file.size(), corpus["bytes"].get<size_t>()) << path;
    EXPECT_TRUE(joined == file) << name << ": the fixture's documents (" << joined.size()
                                << " bytes) do not join to " << path << " (" << file.size()
                                << " bytes)";
    std::ifstream info_in(path.substr(0, path.find_last_of('/')) + "/corpus.json");
    ASSERT_TRUE(info_in) << "no corpus.json next to " << path;
    const json info = json::parse(info_in)["files"][name.substr(name.find('/') + 1)];
    EXPECT_EQ(info["sha256"], corpus["sha256"]) << name;
    EXPECT_EQ(info["documents"], corpus["documents"]) << name;
    documents += static_cast<int64_t>(count);
  }
  EXPECT_THAT(names, ::testing::ElementsAre("kjv/train.txt", "kjv/val.txt"));
  EXPECT_GT(documents, 1000);  // 1189 KJV chapters
}

}  // namespace
}  // namespace mor

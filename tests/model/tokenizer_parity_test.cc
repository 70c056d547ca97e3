// Parity of the C++ tokenizer with HF `tokenizers`: exact ids and exact decoded
// strings on the fixtures of tools/reference/make_tokenizer_fixtures.py (one
// trained tokenizer per style: gpt2, llama3, smollm, options). The fixtures
// directory is $MOR_TOKENIZER_FIXTURES, else $MOR_BUILD_DIR/tokenizer_parity
// (written by the CTest fixture `tokenizer_fixtures`).
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
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
    if (ids != Ids(c["ids"]) || with_special != Ids(c["ids_special"])) ++mismatches;
    EXPECT_EQ(ids, Ids(c["ids"])) << "text " << Escaped(text);
    EXPECT_EQ(with_special, Ids(c["ids_special"])) << "text " << Escaped(text);
  }
  EXPECT_EQ(mismatches, 0) << "of " << expected_["encode"].size() << " texts";
}

TEST_P(TokenizerParityTest, EncodeIsStableWithWarmCache) {
  // A second pass hits the word cache for every word.
  for (int pass = 0; pass < 2; ++pass) {
    for (const json& c : expected_["encode"]) {
      ASSERT_EQ(tokenizer_->Encode(c["text"].get<std::string>(), false), Ids(c["ids"]))
          << "pass " << pass << " text " << Escaped(c["text"].get<std::string>());
    }
  }
}

TEST_P(TokenizerParityTest, DecodeMatchesHf) {
  for (const json& c : expected_["encode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids, false), c["decoded"].get<std::string>())
        << "text " << Escaped(c["text"].get<std::string>());
    EXPECT_EQ(tokenizer_->Decode(ids, true), c["decoded_skip"].get<std::string>())
        << "text " << Escaped(c["text"].get<std::string>());
  }
  for (const json& c : expected_["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids, false), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tokenizer_->Decode(ids, true), c["text_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(TokenizerParityTest, StreamingMatchesHfDecode) {
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

INSTANTIATE_TEST_SUITE_P(Styles, TokenizerParityTest,
                         ::testing::Values("gpt2", "llama3", "smollm", "options", "splits"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace mor

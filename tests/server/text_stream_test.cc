// Streamed text with stop strings, on a real byte-level BPE tokenizer from the
// tokenizer parity fixtures (tools/reference/make_tokenizer_fixtures.py).
#include "server/text_stream.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "model/utf8.h"

namespace mor {
namespace {

bool IsValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const utf8::Sequence seq = utf8::Decode(s, i);
    if (!seq.valid) return false;
    i += seq.length;
  }
  return true;
}

std::unique_ptr<Tokenizer> LoadTokenizer() {
  const char* build = std::getenv("MOR_BUILD_DIR");
  const std::string path =
      absl::StrCat(build ? build : ".", "/tokenizer_parity/llama3/tokenizer.json");
  auto tokenizer = Tokenizer::FromFile(path);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Streams `ids` one at a time; returns the concatenated text and whether a
// stop string ended it. Every delta must be valid UTF-8.
std::pair<std::string, bool> StreamAll(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                       std::vector<std::string> stops) {
  TextStream stream(&tokenizer, std::move(stops));
  std::string text;
  for (int32_t id : ids) {
    TextStream::Delta delta = stream.Push(absl::MakeConstSpan(&id, 1));
    EXPECT_TRUE(IsValidUtf8(delta.text)) << delta.text;
    text += delta.text;
    if (delta.stopped) return {text, true};
  }
  text += stream.Finish();
  return {text, false};
}

TEST(TextStreamTest, WithoutStopStringsEqualsDecode) {
  auto tokenizer = LoadTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "Hello wörld 🙂 — some text, numbers 12345 and\n  spaces.";
  const std::vector<int32_t> ids = tokenizer->Encode(text, /*add_special_tokens=*/false);
  auto [streamed, stopped] = StreamAll(*tokenizer, ids, {});
  EXPECT_FALSE(stopped);
  EXPECT_EQ(streamed, tokenizer->Decode(ids, /*skip_special_tokens=*/true));
}

TEST(TextStreamTest, StopStringEndsTheStreamAndIsNotReturned) {
  auto tokenizer = LoadTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "The answer is 42. END of story, more text after.";
  const std::vector<int32_t> ids = tokenizer->Encode(text, false);
  auto [streamed, stopped] = StreamAll(*tokenizer, ids, {"END", "never"});
  EXPECT_TRUE(stopped);
  EXPECT_EQ(streamed, "The answer is 42. ");
}

TEST(TextStreamTest, EarliestOfSeveralStopStringsWins) {
  auto tokenizer = LoadTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = tokenizer->Encode("abc xyz stop1 stop2", false);
  auto [streamed, stopped] = StreamAll(*tokenizer, ids, {"stop2", "xyz"});
  EXPECT_TRUE(stopped);
  EXPECT_EQ(streamed, "abc ");
}

TEST(TextStreamTest, HeldBackPrefixIsReleasedWhenItIsNotAStop) {
  auto tokenizer = LoadTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "one EN two ENDLESS";  // "EN" alone is only a prefix
  const std::vector<int32_t> ids = tokenizer->Encode(text, false);
  auto [streamed, stopped] = StreamAll(*tokenizer, ids, {"END."});
  EXPECT_FALSE(stopped);
  EXPECT_EQ(streamed, text);
}

// Random texts and stop strings: the streamed text equals the decoded text cut
// at the first stop string.
TEST(TextStreamTest, RandomStreamsMatchDecodeCutAtTheFirstStop) {
  auto tokenizer = LoadTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<std::string> pieces = {"a", "b", "ab", " ", "é", "🙂", "\n", "xy", "z"};
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    for (int i = 0; i < 30; ++i) text += pieces[rng() % pieces.size()];
    std::vector<std::string> stops;
    for (int s = 0; s < 2; ++s) {
      std::string stop;
      for (int i = 0; i < 1 + static_cast<int>(rng() % 3); ++i)
        stop += pieces[rng() % pieces.size()];
      stops.push_back(stop);
    }
    const std::vector<int32_t> ids = tokenizer->Encode(text, false);
    const std::string decoded = tokenizer->Decode(ids, true);
    size_t cut = std::string::npos;
    for (const std::string& stop : stops) cut = std::min(cut, decoded.find(stop));
    auto [streamed, stopped] = StreamAll(*tokenizer, ids, stops);
    EXPECT_EQ(stopped, cut != std::string::npos) << text;
    EXPECT_EQ(streamed, cut == std::string::npos ? decoded : decoded.substr(0, cut)) << text;
  }
}

}  // namespace
}  // namespace mor

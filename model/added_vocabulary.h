// The added tokens of a tokenizer.json ("added_tokens": special tokens such as
// <|endoftext|> and user-added tokens) and how HF `tokenizers` finds them in
// text before pre-tokenization (AddedVocabulary::extract_and_normalize):
// leftmost-longest matches, first of the tokens with normalized=false on the
// raw text, then of those with normalized=true in the remaining pieces, with
// the single_word / lstrip / rstrip options applied. Immutable; thread-safe.
#ifndef MOR_MODEL_ADDED_VOCABULARY_H_
#define MOR_MODEL_ADDED_VOCABULARY_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace mor {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

class AddedVocabulary {
 public:
  // A piece of the input: an added token (id >= 0) or plain text (id = -1).
  struct Segment {
    size_t begin = 0;
    size_t end = 0;
    int32_t id = -1;
  };

  explicit AddedVocabulary(const std::vector<AddedToken>& tokens);

  bool empty() const { return raw_.empty() && normalized_.empty(); }

  // Replaces *out with the segments of `text`, in order. Plain segments are
  // never empty (token segments may overlap stripped whitespace exactly as HF's
  // do).
  void Split(std::string_view text, std::vector<Segment>* out) const;

 private:
  // Byte trie over token contents.
  class Trie {
   public:
    void Insert(std::string_view key, int32_t token_index);
    bool empty() const { return terminal_.size() <= 1; }
    // Leftmost-longest match starting at or after `from`: sets [*begin, *end)
    // and returns the token index, or -1.
    int32_t FindFrom(std::string_view text, size_t from, size_t* begin, size_t* end) const;

   private:
    std::vector<int32_t> terminal_ = {-1};          // per node: token index or -1
    absl::flat_hash_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> node
    std::array<bool, 256> first_byte_{};
  };

  // HF find_matches on `sentence` = text[base, base + size); appends segments.
  void FindMatches(std::string_view text, size_t base, size_t size, const Trie& trie,
                   std::vector<Segment>* out) const;

  std::vector<AddedToken> tokens_;
  Trie raw_;         // normalized == false
  Trie normalized_;  // normalized == true (no normalizer: matched on the raw text)
};

}  // namespace mor

#endif  // MOR_MODEL_ADDED_VOCABULARY_H_

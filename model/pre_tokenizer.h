// The pre-tokenizer of a byte-level BPE tokenizer.json (model/tokenizer.h):
// a chain of splitting steps that cuts text into the words BPE sees. HF
// `tokenizers` runs its regexes with Oniguruma; here RE2 does, after the
// pattern is translated (Unicode \s \d \w, ASCII-only (?i:...) groups) and the
// one lookaround these tokenizers use, a trailing `\s+(?!\S)|\s+`, is
// emulated in code. Immutable after Create; Split is thread-safe.
#ifndef MOR_MODEL_PRE_TOKENIZER_H_
#define MOR_MODEL_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}

namespace mor {

// What HF's SplitDelimiterBehavior does with the matches of a split pattern.
enum class SplitBehavior { kIsolated, kRemoved, kContiguous };

// One step of a pre-tokenizer chain, as parsed from tokenizer.json.
struct PreTokenizerStep {
  enum class Kind {
    kSplit,      // {"type": "Split", "pattern": {"Regex" | "String": ...}}
    kDigits,     // {"type": "Digits", "individual_digits": ...}
    kByteLevel,  // {"type": "ByteLevel", "add_prefix_space", "use_regex"}
  };
  Kind kind = Kind::kByteLevel;
  std::string pattern;  // kSplit
  bool pattern_is_regex = true;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool individual_digits = false;  // kDigits
  bool add_prefix_space = false;   // kByteLevel
  bool use_regex = true;           // kByteLevel: split with the GPT-2 regex
};

// A regex compiled for RE2 from an Oniguruma (HF) pattern, with the matches HF
// would find.
class OnigRegex {
 public:
  // Unimplemented for constructs RE2 cannot run (lookarounds other than a
  // trailing `\s+(?!\S)|\s+`, backreferences, atomic groups, ...).
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Create(std::string_view pattern);
  ~OnigRegex();

  // Calls fn(begin, end, is_match) for consecutive ranges covering `text`:
  // the non-overlapping leftmost-first matches and the gaps between them
  // (HF Pattern::find_matches; empty ranges are not reported).
  void ForEachRange(std::string_view text, absl::FunctionRef<void(size_t, size_t, bool)> fn) const;

 private:
  OnigRegex() = default;
  size_t ApplyLookahead(std::string_view text, size_t begin, size_t end) const;

  std::unique_ptr<re2::RE2> re_;
  // With the trailing `\s+(?!\S)|\s+`: the alternatives before it (null when
  // there are none), to tell which branch produced a whitespace match.
  bool whitespace_lookahead_ = false;
  std::unique_ptr<re2::RE2> prefix_re_;
};

// Translates an Oniguruma pattern to RE2 syntax (exposed for tests). Sets
// *whitespace_lookahead when the pattern ended in `|\s+(?!\S)|\s+`, which the
// result then ends in `|\s+` instead.
absl::StatusOr<std::string> TranslateOnigPattern(std::string_view pattern,
                                                 bool* whitespace_lookahead);

class PreTokenizer {
 public:
  // The steps must end with exactly one kByteLevel step.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(
      const std::vector<PreTokenizerStep>& steps);
  ~PreTokenizer();

  // Calls fn(word) for each non-empty word of `text`, in order. Words point
  // into `text` or into *scratch (which must outlive the call).
  void Split(std::string_view text, std::string* scratch,
             absl::FunctionRef<void(std::string_view)> fn) const;

 private:
  struct Stage {
    std::unique_ptr<OnigRegex> regex;  // null: the stage does not split
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool add_prefix_space = false;
  };
  PreTokenizer() = default;
  void RunStage(size_t stage, std::string_view piece, std::string* scratch,
                absl::FunctionRef<void(std::string_view)> fn) const;

  std::vector<Stage> stages_;
};

}  // namespace mor

#endif  // MOR_MODEL_PRE_TOKENIZER_H_

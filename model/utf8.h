// UTF-8 helpers shared by the tokenizer (model/tokenizer.h) and the streaming
// detokenizer. Invalid input is handled the way Rust's String::from_utf8_lossy
// (and so HF `tokenizers`) does: every maximal invalid subpart becomes one
// U+FFFD. Thread-safe (pure functions).
#ifndef MOR_MODEL_UTF8_H_
#define MOR_MODEL_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace mor::utf8 {

// The UTF-8 sequence starting at s[i] (i < s.size()).
struct Sequence {
  size_t length = 1;        // bytes consumed: the character, or the invalid subpart
  char32_t code_point = 0;  // valid only when `valid`
  bool valid = false;       // a complete, well-formed character
  bool truncated = false;   // !valid because s ended inside an otherwise valid prefix
};
Sequence Decode(std::string_view s, size_t i);

// Start of the character that ends at s[end - 1] (end > 0); continuation
// bytes are skipped back over, at most 3.
size_t PreviousCharStart(std::string_view s, size_t end);

// Unicode White_Space: what Oniguruma's Unicode \s, Rust's char::is_whitespace
// and the `regex` crate's \s match.
bool IsWhiteSpace(char32_t c);

// Appends `bytes` to `out` as valid UTF-8; each maximal invalid subpart (a
// truncated sequence at the end included) becomes U+FFFD.
void AppendLossy(std::string_view bytes, std::string* out);
std::string Lossy(std::string_view bytes);

// Length of the longest prefix of `bytes` whose AppendLossy output cannot change
// when more bytes are appended: everything except a trailing truncated sequence.
size_t StablePrefixLength(std::string_view bytes);

}  // namespace mor::utf8

#endif  // MOR_MODEL_UTF8_H_

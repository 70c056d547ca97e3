// Streaming detokenization of one request's generated ids: each Push returns
// the text that became final, so a server can send it at once. Concatenating
// every Push result and the final Flush equals Tokenizer::Decode of all ids
// (same skip_special_tokens), and every returned delta is valid UTF-8 that
// never ends inside a character: bytes of a character split across tokens are
// held back until it is complete (or proven invalid, then they become U+FFFD
// exactly where Decode puts it).
//
// Not thread-safe: one instance per request, used by one thread at a time. The
// tokenizer must outlive it. Cost per Push is linear in the new bytes.
#ifndef MOR_MODEL_INCREMENTAL_DETOKENIZER_H_
#define MOR_MODEL_INCREMENTAL_DETOKENIZER_H_

#include <cstdint>
#include <string>

#include "absl/types/span.h"
#include "model/tokenizer.h"

namespace mor {

class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Appends ids; returns the newly final text (possibly empty).
  std::string Push(absl::Span<const int32_t> ids);
  std::string Push(int32_t id) { return Push(absl::MakeConstSpan(&id, 1)); }

  // Returns what is still held back (a truncated character becomes U+FFFD, as
  // in Decode) and resets the pending state. Call once at the end of the stream.
  std::string Flush();

  // Bytes held back (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // raw bytes not yet returned; at most a truncated character
};

}  // namespace mor

#endif  // MOR_MODEL_INCREMENTAL_DETOKENIZER_H_

// Turns one request's generated token ids into streamed text: UTF-8-complete
// deltas (IncrementalDetokenizer) with stop strings applied. Text that could
// be the start of a stop string is held back until it is known not to be one;
// when a stop string appears, the text before it is the last delta and the
// stop string itself is not returned (as vLLM and TGI do).
//
// Not thread-safe: one per request. The tokenizer must outlive it.
#ifndef MOR_SERVER_TEXT_STREAM_H_
#define MOR_SERVER_TEXT_STREAM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "model/incremental_detokenizer.h"
#include "model/tokenizer.h"

namespace mor {

class TextStream {
 public:
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  struct Delta {
    std::string text;      // safe to send now (valid UTF-8)
    bool stopped = false;  // a stop string matched: the stream is over
  };

  // Appends generated ids. After `stopped`, further pushes return nothing.
  Delta Push(absl::Span<const int32_t> ids);
  // The held-back rest at the end of generation (no stop string matched).
  std::string Finish();

  bool stopped() const { return stopped_; }

 private:
  // Emits what can be emitted of text_[emitted_, end).
  Delta Emit();

  IncrementalDetokenizer detokenizer_;
  std::vector<std::string> stop_strings_;
  size_t max_stop_length_ = 0;
  std::string text_;    // everything decoded so far
  size_t emitted_ = 0;  // bytes of text_ already returned
  bool stopped_ = false;
};

}  // namespace mor

#endif  // MOR_SERVER_TEXT_STREAM_H_

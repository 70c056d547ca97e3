#include "server/text_stream.h"

#include <algorithm>
#include <utility>

namespace mor {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : detokenizer_(tokenizer, /*skip_special_tokens=*/true),
      stop_strings_(std::move(stop_strings)) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), std::string()),
                      stop_strings_.end());
  for (const std::string& stop : stop_strings_) {
    max_stop_length_ = std::max(max_stop_length_, stop.size());
  }
}

TextStream::Delta TextStream::Push(absl::Span<const int32_t> ids) {
  if (stopped_) return {};
  text_ += detokenizer_.Push(ids);
  return Emit();
}

TextStream::Delta TextStream::Emit() {
  Delta delta;
  if (stop_strings_.empty()) {
    delta.text = text_.substr(emitted_);
    emitted_ = text_.size();
    return delta;
  }
  // A stop string may straddle what was already emitted only if it began in
  // the held-back part, which is never emitted: search from there.
  const size_t from = emitted_;
  size_t first = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const size_t at = text_.find(stop, from);
    if (at != std::string::npos) first = std::min(first, at);
  }
  if (first != std::string::npos) {
    delta.text = text_.substr(emitted_, first - emitted_);
    emitted_ = first;
    delta.stopped = stopped_ = true;
    return delta;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  const size_t tail_limit = std::min(text_.size() - emitted_, max_stop_length_ - 1);
  for (size_t length = tail_limit; length > 0 && hold == 0; --length) {
    const std::string_view tail(text_.data() + text_.size() - length, length);
    for (const std::string& stop : stop_strings_) {
      if (stop.size() > length && stop.compare(0, length, tail) == 0) {
        hold = length;
        break;
      }
    }
  }
  const size_t end = text_.size() - hold;
  delta.text = text_.substr(emitted_, end - emitted_);
  emitted_ = end;
  return delta;
}

std::string TextStream::Finish() {
  if (stopped_) return {};
  text_ += detokenizer_.Flush();
  std::string rest = text_.substr(emitted_);
  emitted_ = text_.size();
  return rest;
}

}  // namespace mor

#include "model/incremental_detokenizer.h"

#include "model/utf8.h"

namespace mor {

std::string IncrementalDetokenizer::Push(absl::Span<const int32_t> ids) {
  for (const int32_t id : ids) tokenizer_->AppendTokenBytes(id, skip_special_tokens_, &pending_);
  // The lossy UTF-8 repair decides left to right, so the output for the stable
  // prefix is final whatever bytes come next.
  const size_t stable = utf8::StablePrefixLength(pending_);
  std::string delta;
  if (stable == 0) return delta;
  delta.reserve(stable);
  utf8::AppendLossy(std::string_view(pending_).substr(0, stable), &delta);
  pending_.erase(0, stable);
  return delta;
}

std::string IncrementalDetokenizer::Flush() {
  std::string rest = utf8::Lossy(pending_);
  pending_.clear();
  return rest;
}

}  // namespace mor

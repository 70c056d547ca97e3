#include "server/generation_types.h"

namespace mor {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos:
      return "EOS";
    case FinishReason::kStopToken:
      return "STOP_TOKEN";
    case FinishReason::kStopString:
      return "STOP_STRING";
    case FinishReason::kMaxTokens:
      return "MAX_TOKENS";
    case FinishReason::kCancelled:
      return "CANCELLED";
    case FinishReason::kDeadline:
      return "DEADLINE";
  }
  return "UNKNOWN";
}

}  // namespace mor

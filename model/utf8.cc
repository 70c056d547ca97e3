#include "model/utf8.h"

#include <cstdint>

namespace mor::utf8 {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Well-formed UTF-8 (Unicode Table 3-7): the width of a sequence given its lead
// byte, and the allowed range of its second byte (later bytes are 80..BF).
struct Lead {
  uint8_t width;  // 0: not a lead byte
  uint8_t lo, hi;
};

Lead LeadOf(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

Sequence Decode(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  Sequence seq;
  if (b0 < 0x80) {
    seq.code_point = b0;
    seq.valid = true;
    return seq;
  }
  const Lead lead = LeadOf(b0);
  if (lead.width == 0) return seq;  // one invalid byte
  char32_t cp = b0 & (0x7F >> lead.width);
  for (size_t k = 1; k < lead.width; ++k) {
    if (i + k >= s.size()) {
      seq.length = k;
      seq.truncated = true;
      return seq;
    }
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t lo = k == 1 ? lead.lo : 0x80, hi = k == 1 ? lead.hi : 0xBF;
    if (b < lo || b > hi) {
      seq.length = k;  // the lead and the valid continuation bytes so far
      return seq;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  seq.length = lead.width;
  seq.code_point = cp;
  seq.valid = true;
  return seq;
}

size_t PreviousCharStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  for (int k = 0; k < 3 && i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; ++k) --i;
  return i;
}

bool IsWhiteSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

void AppendLossy(std::string_view bytes, std::string* out) {
  size_t i = 0, run = 0;  // [run, i): valid bytes not yet copied
  while (i < bytes.size()) {
    if (static_cast<uint8_t>(bytes[i]) < 0x80) {
      ++i;
      continue;
    }
    const Sequence seq = Decode(bytes, i);
    if (!seq.valid) {
      out->append(bytes.substr(run, i - run));
      out->append(kReplacement);
      run = i + seq.length;
    }
    i += seq.length;
  }
  out->append(bytes.substr(run));
}

std::string Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendLossy(bytes, &out);
  return out;
}

size_t StablePrefixLength(std::string_view bytes) {
  // Only the last (up to 3) bytes can start a truncated sequence.
  const size_t from = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t i = from; i < bytes.size(); ++i) {
    if ((static_cast<uint8_t>(bytes[i]) & 0xC0) == 0x80) continue;  // not a lead byte
    const Sequence seq = Decode(bytes, i);
    if (seq.truncated) return i;
  }
  return bytes.size();
}

}  // namespace mor::utf8

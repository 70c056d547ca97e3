#include "model/added_vocabulary.h"

#include <algorithm>

#include "model/utf8.h"
#include "re2/re2.h"

namespace mor {
namespace {

// The `regex` crate's Unicode \w (HF's single_word check).
bool IsWordChar(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b == '_';
  }
  static const re2::RE2* const kWord =
      new re2::RE2(R"(^[\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])");
  const utf8::Sequence seq = utf8::Decode(s, i);
  return seq.valid && re2::RE2::PartialMatch(re2::StringPiece(s.data() + i, seq.length), *kWord);
}

}  // namespace

void AddedVocabulary::Trie::Insert(std::string_view key, int32_t token_index) {
  if (key.empty()) return;
  first_byte_[static_cast<unsigned char>(key[0])] = true;
  int32_t node = 0;
  for (const char c : key) {
    const uint64_t edge = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(c);
    auto it = edges_.find(edge);
    if (it == edges_.end()) {
      const auto next = static_cast<int32_t>(terminal_.size());
      terminal_.push_back(-1);
      it = edges_.emplace(edge, next).first;
    }
    node = it->second;
  }
  terminal_[node] = token_index;
}

int32_t AddedVocabulary::Trie::FindFrom(std::string_view text, size_t from, size_t* begin,
                                        size_t* end) const {
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) continue;
    int32_t node = 0, best = -1;
    for (size_t j = i; j < text.size(); ++j) {
      const auto it =
          edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[j]));
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node] >= 0) {
        best = terminal_[node];
        *end = j + 1;
      }
    }
    if (best >= 0) {
      *begin = i;
      return best;
    }
  }
  return -1;
}

AddedVocabulary::AddedVocabulary(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    (tokens_[i].normalized ? normalized_ : raw_)
        .Insert(tokens_[i].content, static_cast<int32_t>(i));
  }
}

void AddedVocabulary::FindMatches(std::string_view text, size_t base, size_t size, const Trie& trie,
                                  std::vector<Segment>* out) const {
  const std::string_view sentence = text.substr(base, size);
  size_t start_offset = 0, search = 0, mb = 0, me = 0;
  for (int32_t index; (index = trie.FindFrom(sentence, search, &mb, &me)) >= 0;) {
    search = me;
    const AddedToken& token = tokens_[index];
    size_t start = mb, stop = me;
    if (token.single_word) {
      const bool start_space =
          start == 0 || !IsWordChar(sentence, utf8::PreviousCharStart(sentence, start));
      const bool stop_space = stop == sentence.size() || !IsWordChar(sentence, stop);
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const size_t prev = utf8::PreviousCharStart(sentence, new_start);
        const utf8::Sequence seq = utf8::Decode(sentence, prev);
        if (!seq.valid || !utf8::IsWhiteSpace(seq.code_point)) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < sentence.size()) {
        const utf8::Sequence seq = utf8::Decode(sentence, stop);
        if (!seq.valid || !utf8::IsWhiteSpace(seq.code_point)) break;
        stop += seq.length;
      }
    }
    if (start_offset < start) out->push_back({base + start_offset, base + start, -1});
    out->push_back({base + start, base + stop, token.id});
    start_offset = stop;
  }
  if (start_offset < sentence.size()) out->push_back({base + start_offset, base + size, -1});
}

void AddedVocabulary::Split(std::string_view text, std::vector<Segment>* out) const {
  out->clear();
  if (text.empty()) return;
  if (raw_.empty()) {
    out->push_back({0, text.size(), -1});
  } else {
    FindMatches(text, 0, text.size(), raw_, out);
  }
  if (normalized_.empty()) return;
  std::vector<Segment> first;
  first.swap(*out);
  for (const Segment& seg : first) {
    if (seg.id >= 0) {
      out->push_back(seg);
    } else {
      FindMatches(text, seg.begin, seg.end - seg.begin, normalized_, out);
    }
  }
}

}  // namespace mor

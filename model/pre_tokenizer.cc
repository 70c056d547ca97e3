#include "model/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"
#include "model/utf8.h"
#include "re2/re2.h"

namespace mor {
namespace {

// GPT-2's pre-tokenizer regex, as HF's ByteLevel pre-tokenizer has it.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLookaheadSuffix = R"(\s+(?!\S)|\s+)";

// Oniguruma's Unicode classes (they differ from RE2's ASCII \s \d \w).
constexpr std::string_view kSpaceBody = R"(\t-\r\x{85}\p{Z})";  // = utf8::IsWhiteSpace
constexpr std::string_view kWordBody = R"(\p{L}\p{M}\p{Nd}\p{Pc})";

absl::Status Unsupported(std::string_view pattern, std::string_view what) {
  return absl::UnimplementedError(absl::StrCat("regex '", std::string(pattern), "' uses ",
                                               std::string(what),
                                               ", which the RE2-based tokenizer does not support"));
}

bool IsAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Copies an escape's argument `{...}` (or one character) from p[i]; returns the
// index after it.
size_t CopyBraced(std::string_view p, size_t i, std::string* out) {
  if (i < p.size() && p[i] == '{') {
    const size_t close = p.find('}', i);
    const size_t end = close == std::string_view::npos ? p.size() : close + 1;
    out->append(p.substr(i, end - i));
    return end;
  }
  if (i < p.size()) out->push_back(p[i++]);
  return i;
}

absl::StatusOr<std::string> Translate(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  std::vector<bool> ci_stack = {false};  // case-insensitive state per open group
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    const bool ci = ci_stack.back();
    if (c == '\\') {
      if (i + 1 >= p.size()) return Unsupported(p, "a trailing backslash");
      const char e = p[i + 1];
      i += 2;
      switch (e) {
        case 's':
          absl::StrAppend(&out, in_class ? "" : "[", std::string(kSpaceBody), in_class ? "" : "]");
          break;
        case 'w':
          absl::StrAppend(&out, in_class ? "" : "[", std::string(kWordBody), in_class ? "" : "]");
          break;
        case 'd':
          out.append(R"(\p{Nd})");
          break;
        case 'S':
        case 'W':
        case 'D':
          if (in_class) return Unsupported(p, "a negated class escape inside [...]");
          if (e == 'D') {
            out.append(R"(\P{Nd})");
          } else {
            absl::StrAppend(&out, "[^", std::string(e == 'S' ? kSpaceBody : kWordBody), "]");
          }
          break;
        case 'p':
        case 'P':
        case 'x':
          out.push_back('\\');
          out.push_back(e);
          i = CopyBraced(p, i, &out);
          break;
        case 'b':
        case 'B':
        case 'G':
        case 'K':
        case 'X':
        case 'R':
        case 'h':
        case 'H':
        case 'Z':
        case 'k':
        case 'g':
          return Unsupported(p, absl::StrCat("the escape \\", std::string(1, e)));
        default:
          if (e >= '0' && e <= '9') return Unsupported(p, "a backreference");
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
        const size_t close = p.find(":]", i + 2);
        if (close == std::string_view::npos) return Unsupported(p, "an unterminated [:class:]");
        out.append(p.substr(i, close + 2 - i));
        i = close + 2;
        continue;
      }
      if (c == '[') return Unsupported(p, "a nested character class");
      if (c == ']') in_class = false;
      out.push_back(c);
      ++i;
      continue;
    }
    if (c == '[') {
      if (ci) return Unsupported(p, "a character class inside (?i:...)");
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // literal ']' first
      continue;
    }
    if (c == '(') {
      std::string_view rest = p.substr(i + 1);
      if (rest.starts_with("?i:")) {
        ci_stack.push_back(true);
        out.append("(?:");
        i += 4;
      } else if (rest.starts_with("?:")) {
        ci_stack.push_back(ci);
        out.append("(?:");
        i += 3;
      } else if (rest.starts_with("?<") && rest.size() > 2 && rest[2] != '=' &&
                 rest[2] != '!') {  // named group: (?<name>...)
        const size_t close = p.find('>', i);
        if (close == std::string_view::npos) return Unsupported(p, "an unterminated group name");
        ci_stack.push_back(ci);
        out.append("(?:");
        i = close + 1;
      } else if (rest.starts_with("?")) {
        return Unsupported(p, absl::StrCat("the group '(", std::string(rest.substr(0, 3)),
                                           "' (lookaround, atomic group or inline flags)"));
      } else {
        ci_stack.push_back(ci);
        out.append("(?:");  // captures are not needed
        ++i;
      }
      continue;
    }
    if (c == ')') {
      if (ci_stack.size() == 1) return Unsupported(p, "an unbalanced ')'");
      ci_stack.pop_back();
      out.push_back(c);
      ++i;
      continue;
    }
    if (ci && IsAsciiLetter(c)) {
      // Oniguruma folds ASCII letters only with ASCII letters here ('s does
      // not match 'ſ); RE2's (?i) would use full Unicode case folding.
      const char lower = static_cast<char>(c | 0x20), upper = static_cast<char>(c & ~0x20);
      absl::StrAppend(&out, "[", std::string(1, lower), std::string(1, upper), "]");
      ++i;
      continue;
    }
    if (ci && static_cast<unsigned char>(c) >= 0x80) {
      return Unsupported(p, "a non-ASCII literal inside (?i:...)");
    }
    if ((c == '*' || c == '+' || c == '?' || c == '}') && i + 1 < p.size() && p[i + 1] == '+') {
      return Unsupported(p, "a possessive quantifier");
    }
    if (c == '^' || c == '$') {  // line anchors in Oniguruma, text anchors in RE2
      return Unsupported(p, "the anchor ^ or $");
    }
    out.push_back(c);
    ++i;
  }
  if (in_class) return Unsupported(p, "an unterminated character class");
  if (ci_stack.size() != 1) return Unsupported(p, "an unbalanced '('");
  return out;
}

absl::StatusOr<std::unique_ptr<re2::RE2>> Compile(std::string_view original,
                                                  const std::string& translated) {
  re2::RE2::Options options;
  options.set_encoding(re2::RE2::Options::EncodingUTF8);
  options.set_log_errors(false);
  options.set_max_mem(64 << 20);  // room for the DFA of large Unicode classes
  auto re = std::make_unique<re2::RE2>(translated, options);
  if (!re->ok()) {
    return absl::UnimplementedError(absl::StrCat("regex '", std::string(original),
                                                 "' does not compile with RE2 (as '", translated,
                                                 "'): ", re->error()));
  }
  return re;
}

}  // namespace

absl::StatusOr<std::string> TranslateOnigPattern(std::string_view pattern,
                                                 bool* whitespace_lookahead) {
  *whitespace_lookahead = false;
  if (pattern == kLookaheadSuffix) {
    *whitespace_lookahead = true;
    return absl::StrCat("[", std::string(kSpaceBody), "]+");
  }
  if (pattern.ends_with(absl::StrCat("|", std::string(kLookaheadSuffix)))) {
    *whitespace_lookahead = true;
    MOR_ASSIGN_OR_RETURN(std::string prefix, Translate(pattern.substr(
                                                 0, pattern.size() - kLookaheadSuffix.size() - 1)));
    return absl::StrCat(prefix, "|[", std::string(kSpaceBody), "]+");
  }
  return Translate(pattern);
}

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Create(std::string_view pattern) {
  std::unique_ptr<OnigRegex> regex(new OnigRegex());
  MOR_ASSIGN_OR_RETURN(std::string translated,
                       TranslateOnigPattern(pattern, &regex->whitespace_lookahead_));
  MOR_ASSIGN_OR_RETURN(regex->re_, Compile(pattern, translated));
  if (regex->whitespace_lookahead_ && pattern != kLookaheadSuffix) {
    bool unused;
    MOR_ASSIGN_OR_RETURN(
        std::string prefix,
        TranslateOnigPattern(pattern.substr(0, pattern.size() - kLookaheadSuffix.size() - 1),
                             &unused));
    MOR_ASSIGN_OR_RETURN(regex->prefix_re_, Compile(pattern, prefix));
  }
  return regex;
}

OnigRegex::~OnigRegex() = default;

// `\s+(?!\S)` (tried before `\s+`) ends a whitespace run of two or more
// characters one character early when a non-space follows, leaving that
// character to start the next match (so " word" keeps its space).
size_t OnigRegex::ApplyLookahead(std::string_view text, size_t begin, size_t end) const {
  if (end >= text.size() || end - begin < 2) return end;
  const utf8::Sequence next = utf8::Decode(text, end);
  if (next.valid && utf8::IsWhiteSpace(next.code_point)) return end;
  size_t last = begin;
  for (size_t i = begin; i < end;) {
    const utf8::Sequence s = utf8::Decode(text, i);
    if (!s.valid || !utf8::IsWhiteSpace(s.code_point)) return end;
    last = i;
    i += s.length;
  }
  if (last == begin) return end;  // one character: the plain \s+ branch
  // An earlier alternative (e.g. Llama 3's \s*[\r\n]+) matched: keep it.
  if (prefix_re_ != nullptr && prefix_re_->Match(re2::StringPiece(text.data(), text.size()), begin,
                                                 text.size(), re2::RE2::ANCHOR_START, nullptr, 0)) {
    return end;
  }
  return last;
}

void OnigRegex::ForEachRange(std::string_view text,
                             absl::FunctionRef<void(size_t, size_t, bool)> fn) const {
  const re2::StringPiece sp(text.data(), text.size());
  const size_t n = text.size();
  size_t prev = 0, pos = 0;
  size_t last_match_end = std::string_view::npos;
  re2::StringPiece m;
  while (pos <= n) {
    // Anchored first: these patterns match at almost every position, and an
    // anchored search needs no reverse pass to find the match start.
    if (!re_->Match(sp, pos, n, re2::RE2::ANCHOR_START, &m, 1) &&
        !re_->Match(sp, pos, n, re2::RE2::UNANCHORED, &m, 1)) {
      break;
    }
    const size_t begin = static_cast<size_t>(m.data() - text.data());
    size_t end = begin + m.size();
    if (end == begin && begin == last_match_end) {  // Oniguruma's find_iter skips it
      if (begin >= n) break;
      pos = begin + utf8::Decode(text, begin).length;
      continue;
    }
    if (whitespace_lookahead_) end = ApplyLookahead(text, begin, end);
    if (begin > prev) fn(prev, begin, false);
    fn(begin, end, true);
    prev = end;
    last_match_end = end;
    pos = end;
  }
  if (prev < n) fn(prev, n, false);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(
    const std::vector<PreTokenizerStep>& steps) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  for (size_t i = 0; i < steps.size(); ++i) {
    const PreTokenizerStep& step = steps[i];
    Stage stage;
    switch (step.kind) {
      case PreTokenizerStep::Kind::kSplit: {
        const std::string pattern =
            step.pattern_is_regex ? step.pattern : re2::RE2::QuoteMeta(step.pattern);
        MOR_ASSIGN_OR_RETURN(stage.regex, OnigRegex::Create(pattern));
        stage.behavior = step.behavior;
        break;
      }
      case PreTokenizerStep::Kind::kDigits: {
        // Rust's char::is_numeric is \p{N} (up to Unicode version differences).
        MOR_ASSIGN_OR_RETURN(stage.regex,
                             OnigRegex::Create(step.individual_digits ? R"(\p{N})" : R"(\p{N}+)"));
        break;
      }
      case PreTokenizerStep::Kind::kByteLevel: {
        if (i + 1 != steps.size()) {
          return absl::UnimplementedError(
              "the ByteLevel pre-tokenizer must be the last step of the pre-tokenizer Sequence");
        }
        if (step.use_regex) {
          MOR_ASSIGN_OR_RETURN(stage.regex, OnigRegex::Create(kGpt2Pattern));
        }
        stage.add_prefix_space = step.add_prefix_space;
        break;
      }
    }
    pre->stages_.push_back(std::move(stage));
  }
  if (steps.empty() || steps.back().kind != PreTokenizerStep::Kind::kByteLevel) {
    return absl::UnimplementedError("the pre-tokenizer has no ByteLevel step");
  }
  return pre;
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::Split(std::string_view text, std::string* scratch,
                         absl::FunctionRef<void(std::string_view)> fn) const {
  if (!text.empty()) RunStage(0, text, scratch, fn);
}

void PreTokenizer::RunStage(size_t index, std::string_view piece, std::string* scratch,
                            absl::FunctionRef<void(std::string_view)> fn) const {
  if (index == stages_.size()) {
    fn(piece);
    return;
  }
  const Stage& stage = stages_[index];
  if (stage.add_prefix_space && piece.front() != ' ') {
    // Only the last stage (ByteLevel) prepends, so one scratch buffer is enough.
    scratch->assign(1, ' ');
    scratch->append(piece);
    piece = *scratch;
  }
  if (stage.regex == nullptr) {
    RunStage(index + 1, piece, scratch, fn);
    return;
  }
  auto emit = [&](size_t begin, size_t end) {
    if (end > begin) RunStage(index + 1, piece.substr(begin, end - begin), scratch, fn);
  };
  switch (stage.behavior) {
    case SplitBehavior::kIsolated:
      stage.regex->ForEachRange(piece, [&](size_t b, size_t e, bool) { emit(b, e); });
      break;
    case SplitBehavior::kRemoved:
      stage.regex->ForEachRange(piece, [&](size_t b, size_t e, bool is_match) {
        if (!is_match) emit(b, e);
      });
      break;
    case SplitBehavior::kContiguous: {
      // Adjacent ranges of the same kind (match / no match) are merged.
      size_t pb = 0, pe = 0;
      bool pm = false, pending = false;
      stage.regex->ForEachRange(piece, [&](size_t b, size_t e, bool is_match) {
        if (pending && is_match == pm) {
          pe = e;
          return;
        }
        if (pending) emit(pb, pe);
        pb = b;
        pe = e;
        pm = is_match;
        pending = true;
      });
      if (pending) emit(pb, pe);
      break;
    }
  }
}

}  // namespace mor

#include "model/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/added_vocabulary.h"
#include "model/pre_tokenizer.h"
#include "model/status_macros.h"
#include "model/utf8.h"
#include "nlohmann/json.hpp"

namespace mor {
namespace {

using json = nlohmann::json;

constexpr uint8_t kKnown = 1, kSpecial = 2;
constexpr size_t kMaxCachedWordBytes = 256;  // as HF's BPE cache (MAX_LENGTH)
constexpr size_t kMaxCachedWords = 1 << 17;

// GPT-2's reversible byte <-> character map (HF bytes_char).
struct ByteMap {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 512> to_byte{};  // by code point; -1: not a byte character

  ByteMap() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_char[b] = printable ? b : 256 + n++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMap& Bytes() {
  static const ByteMap* const kMap = new ByteMap();
  return *kMap;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {  // the byte map only uses code points below 0x800; kept general
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// The raw bytes a token stands for under the ByteLevel decoder: every
// character mapped back to its byte, or (if any character is not a byte
// character, e.g. the space of an added token "new york") its own UTF-8.
std::string TokenBytes(const std::string& token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const utf8::Sequence seq = utf8::Decode(token, i);
    const int b = seq.valid && seq.code_point < 512 ? Bytes().to_byte[seq.code_point] : -1;
    if (b < 0) return token;
    out.push_back(static_cast<char>(b));
    i += seq.length;
  }
  return out;
}

// Byte-level form of raw bytes ("Ġthe" for " the").
std::string ByteLevelForm(std::string_view raw) {
  std::string out;
  for (const char c : raw) AppendUtf8(Bytes().to_char[static_cast<uint8_t>(c)], &out);
  return out;
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Heap order: the top is the lowest rank, then the leftmost position.
bool HeapLess(uint32_t rank_a, uint32_t pos_a, uint32_t rank_b, uint32_t pos_b) {
  return rank_a != rank_b ? rank_a > rank_b : pos_a > pos_b;
}

std::string TypeOf(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  return j["type"].get<std::string>();
}

}  // namespace

// Parses tokenizer.json into a Tokenizer. Errors are prefixed with the source.
class Tokenizer::Loader {
 public:
  Loader(Tokenizer* t, std::string source) : t_(t), source_(std::move(source)) {}

  absl::Status Load(const json& root) {
    if (!root.is_object()) return Invalid("the top level is not a JSON object");
    if (root.contains("version") && root["version"] != "1.0") {
      return Invalid(absl::StrCat("unknown tokenizer.json version ", root["version"].dump()));
    }
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      const json& n = root["normalizer"];
      if (!(TypeOf(n) == "Sequence" && n.value("normalizers", json::array()).empty())) {
        return Unsupported(absl::StrCat("normalizer '", TypeOf(n), "'"));
      }
    }
    if (!root.contains("model")) return Invalid("no \"model\"");
    MOR_RETURN_IF_ERROR(LoadModel(root["model"]));
    MOR_RETURN_IF_ERROR(LoadPreTokenizer(root.value("pre_tokenizer", json())));
    MOR_RETURN_IF_ERROR(LoadDecoder(root.value("decoder", json())));
    MOR_RETURN_IF_ERROR(LoadAddedTokens(root.value("added_tokens", json::array())));
    MOR_RETURN_IF_ERROR(LoadPostProcessor(root.value("post_processor", json())));
    BuildIdTables();
    if (!t_->prefix_ids_.empty()) t_->bos_id_ = t_->prefix_ids_.front();
    if (!t_->suffix_ids_.empty()) t_->eos_id_ = t_->suffix_ids_.back();
    return absl::OkStatus();
  }

  // bos/eos not given by the template: tokenizer_config.json, then known names.
  void FillBosEos(const json& config) {
    auto from_config = [&](const char* key) -> std::optional<int32_t> {
      if (!config.is_object() || !config.contains(key)) return std::nullopt;
      const json& v = config[key];
      std::string name;
      if (v.is_string()) name = v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string()) {
        name = v["content"].get<std::string>();
      }
      return name.empty() ? std::nullopt : t_->TokenToId(name);
    };
    auto by_name = [&](std::initializer_list<const char*> names) -> std::optional<int32_t> {
      for (const char* name : names) {
        const auto it = t_->added_ids_.find(name);
        if (it != t_->added_ids_.end() && t_->IsSpecialToken(it->second)) return it->second;
      }
      return std::nullopt;
    };
    if (!t_->bos_id_) t_->bos_id_ = from_config("bos_token");
    if (!t_->eos_id_) t_->eos_id_ = from_config("eos_token");
    if (!t_->bos_id_) {
      t_->bos_id_ =
          by_name({"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
    }
    if (!t_->eos_id_) t_->eos_id_ = by_name({"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"});
  }

 private:
  absl::Status Invalid(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": malformed tokenizer.json: ", std::string(what)));
  }
  absl::Status Unsupported(std::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(
        source_, ": unsupported tokenizer: ", std::string(what),
        " (supported: BPE model, ByteLevel pre-tokenizer optionally after Split/Digits steps, "
        "ByteLevel decoder, no normalizer)"));
  }

  absl::Status LoadModel(const json& model) {
    if (!model.is_object()) return Invalid("\"model\" is not an object");
    std::string type = TypeOf(model);
    if (type.empty() && model.contains("merges")) type = "BPE";
    if (type != "BPE") return Unsupported(absl::StrCat("model.type '", type, "' (only BPE)"));
    if (model.contains("dropout") && !model["dropout"].is_null() &&
        model["dropout"].get<double>() != 0.0) {
      return Unsupported("BPE dropout");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        return Unsupported(absl::StrCat("BPE ", key));
      }
    }
    if (model.contains("byte_fallback") && !model["byte_fallback"].is_null() &&
        model["byte_fallback"].get<bool>()) {
      return Unsupported("BPE byte_fallback");
    }
    auto flag = [&](const char* key) {
      return model.contains(key) && !model[key].is_null() && model[key].get<bool>();
    };
    t_->fuse_unk_ = flag("fuse_unk");
    t_->ignore_merges_ = flag("ignore_merges");
    if (!model.contains("vocab") || !model["vocab"].is_object()) {
      return Invalid("model.vocab is missing or not an object");
    }
    for (const auto& [token, id] : model["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() >= std::numeric_limits<int32_t>::max()) {
        return Invalid(absl::StrCat("model.vocab[\"", token, "\"] is not a valid id"));
      }
      t_->vocab_[token] = id.get<int32_t>();
    }
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      const std::string unk = model["unk_token"].get<std::string>();
      const auto it = t_->vocab_.find(unk);
      if (it == t_->vocab_.end())
        return Invalid(absl::StrCat("unk_token '", unk, "' not in vocab"));
      t_->unk_id_ = it->second;
    }
    MOR_RETURN_IF_ERROR(LoadMerges(model.value("merges", json())));
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      AppendUtf8(Bytes().to_char[b], &ch);
      const auto it = t_->vocab_.find(ch);
      t_->byte_ids_[b] = it == t_->vocab_.end() ? -1 : it->second;
    }
    if (t_->ignore_merges_) {
      for (const auto& [token, id] : t_->vocab_) {
        std::string raw = TokenBytes(token);
        if (ByteLevelForm(raw) == token) t_->word_ids_[raw] = id;  // reachable from text
      }
    }
    return absl::OkStatus();
  }

  absl::Status LoadMerges(const json& merges) {
    if (!merges.is_array()) return Invalid("model.merges is missing or not an array");
    t_->merges_.reserve(merges.size());
    uint32_t rank = 0;
    for (const json& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string line = m.get<std::string>();
        if (absl::StartsWith(line, "#version")) continue;
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          return Invalid(absl::StrCat("merge #", rank + 1, " '", line, "' is not 'a b'"));
        }
        a = line.substr(0, space);
        b = line.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        return Invalid(absl::StrCat("merge #", rank + 1, " is neither \"a b\" nor [\"a\", \"b\"]"));
      }
      const auto ia = t_->vocab_.find(a), ib = t_->vocab_.find(b), ic = t_->vocab_.find(a + b);
      if (ia == t_->vocab_.end() || ib == t_->vocab_.end() || ic == t_->vocab_.end()) {
        return Invalid(absl::StrCat("merge #", rank + 1, " '", a, " ", b,
                                    "' uses a token that is not in the vocab"));
      }
      t_->merges_[PairKey(ia->second, ib->second)] = {rank, ic->second};  // the last one wins
      ++rank;
    }
    return absl::OkStatus();
  }

  absl::Status AddStep(const json& j, std::vector<PreTokenizerStep>* steps) {
    const std::string type = TypeOf(j);
    PreTokenizerStep step;
    if (type == "Sequence") {
      for (const json& p : j.value("pretokenizers", json::array())) {
        MOR_RETURN_IF_ERROR(AddStep(p, steps));
      }
      return absl::OkStatus();
    }
    if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::Kind::kByteLevel;
      step.add_prefix_space = j.value("add_prefix_space", true);
      step.use_regex = j.value("use_regex", true);
    } else if (type == "Digits") {
      step.kind = PreTokenizerStep::Kind::kDigits;
      step.individual_digits = j.value("individual_digits", false);
    } else if (type == "Split") {
      step.kind = PreTokenizerStep::Kind::kSplit;
      const json& pattern = j.at("pattern");
      if (pattern.contains("Regex")) {
        step.pattern = pattern["Regex"].get<std::string>();
      } else if (pattern.contains("String")) {
        step.pattern = pattern["String"].get<std::string>();
        step.pattern_is_regex = false;
      } else {
        return Invalid("Split pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
      }
      const std::string behavior = j.at("behavior").get<std::string>();
      if (behavior == "Isolated") {
        step.behavior = SplitBehavior::kIsolated;
      } else if (behavior == "Removed") {
        step.behavior = SplitBehavior::kRemoved;
      } else if (behavior == "Contiguous") {
        step.behavior = SplitBehavior::kContiguous;
      } else {
        return Unsupported(absl::StrCat("Split behavior '", behavior, "'"));
      }
      if (j.value("invert", false)) return Unsupported("Split with invert=true");
    } else {
      return Unsupported(absl::StrCat("pre_tokenizer '", type, "'"));
    }
    steps->push_back(std::move(step));
    return absl::OkStatus();
  }

  absl::Status LoadPreTokenizer(const json& j) {
    if (j.is_null()) return Unsupported("no pre_tokenizer (a ByteLevel one is required)");
    std::vector<PreTokenizerStep> steps;
    MOR_RETURN_IF_ERROR(AddStep(j, &steps));
    auto pre = PreTokenizer::Create(steps);
    if (!pre.ok()) return Unsupported(std::string(pre.status().message()));
    t_->pre_tokenizer_ = std::move(pre).value();
    return absl::OkStatus();
  }

  absl::Status LoadDecoder(const json& j) {
    std::string type = TypeOf(j);
    if (type == "Sequence") {
      const json decoders = j.value("decoders", json::array());
      type = decoders.size() == 1 ? TypeOf(decoders[0]) : "Sequence";
    }
    if (type != "ByteLevel") {
      return Unsupported(absl::StrCat("decoder '", j.is_null() ? "null" : type, "'"));
    }
    return absl::OkStatus();
  }

  // HF AddedVocabulary::add_tokens: an added token keeps the id its content has
  // (added before or in the vocab); new ones are numbered from the vocab size.
  absl::Status LoadAddedTokens(const json& list) {
    if (!list.is_array()) return Invalid("\"added_tokens\" is not an array");
    std::vector<AddedToken> tokens;
    int64_t next_id = static_cast<int64_t>(t_->vocab_.size());
    for (const json& j : list) {
      if (!j.is_object() || !j.contains("content")) return Invalid("an added token has no content");
      AddedToken token;
      token.content = j["content"].get<std::string>();
      token.special = j.value("special", false);
      token.single_word = j.value("single_word", false);
      token.lstrip = j.value("lstrip", false);
      token.rstrip = j.value("rstrip", false);
      token.normalized = j.value("normalized", !token.special);
      if (token.content.empty()) continue;
      if (auto it = t_->added_ids_.find(token.content); it != t_->added_ids_.end()) {
        token.id = it->second;
      } else if (auto vit = t_->vocab_.find(token.content); vit != t_->vocab_.end()) {
        token.id = vit->second;
      } else {
        if (next_id >= std::numeric_limits<int32_t>::max()) return Invalid("too many added tokens");
        token.id = static_cast<int32_t>(next_id++);
      }
      t_->added_ids_[token.content] = token.id;
      auto same = std::find_if(tokens.begin(), tokens.end(),
                               [&](const AddedToken& o) { return o.id == token.id; });
      if (same != tokens.end()) {
        *same = token;  // later properties win, as in HF's id -> token map
      } else {
        tokens.push_back(token);
      }
    }
    for (const AddedToken& token : tokens) {
      if (token.special) t_->special_ids_.push_back(token.id);
    }
    std::sort(t_->special_ids_.begin(), t_->special_ids_.end());
    t_->added_ = std::make_unique<AddedVocabulary>(tokens);
    return absl::OkStatus();
  }

  absl::Status LoadPostProcessor(const json& j) {
    if (j.is_null()) return absl::OkStatus();
    const std::string type = TypeOf(j);
    if (type == "ByteLevel") return absl::OkStatus();
    if (type == "Sequence") {
      for (const json& p : j.value("processors", json::array())) {
        MOR_RETURN_IF_ERROR(LoadPostProcessor(p));
      }
      return absl::OkStatus();
    }
    if (type != "TemplateProcessing") {
      return Unsupported(absl::StrCat("post_processor '", type, "'"));
    }
    std::vector<int32_t> prefix, suffix;
    bool seen_a = false;
    const json specials = j.value("special_tokens", json::object());
    for (const json& piece : j.at("single")) {
      if (piece.contains("Sequence")) {
        if (seen_a || piece["Sequence"].value("id", "") != "A") {
          return Invalid("TemplateProcessing.single must hold sequence A exactly once");
        }
        seen_a = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = piece["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(name)) {
          return Invalid(absl::StrCat("TemplateProcessing special token '", name, "' has no ids"));
        }
        for (const json& id : specials[name].at("ids")) {
          (seen_a ? suffix : prefix).push_back(id.get<int32_t>());
        }
      } else {
        return Invalid("TemplateProcessing piece is neither Sequence nor SpecialToken");
      }
    }
    if (!seen_a) return Invalid("TemplateProcessing.single has no sequence A");
    // A later processor wraps what the earlier ones produced.
    prefix.insert(prefix.end(), t_->prefix_ids_.begin(), t_->prefix_ids_.end());
    t_->prefix_ids_ = std::move(prefix);
    t_->suffix_ids_.insert(t_->suffix_ids_.end(), suffix.begin(), suffix.end());
    return absl::OkStatus();
  }

  void BuildIdTables() {
    int64_t limit = 0;
    for (const auto& [token, id] : t_->vocab_) limit = std::max<int64_t>(limit, id + 1);
    for (const auto& [token, id] : t_->added_ids_) limit = std::max<int64_t>(limit, id + 1);
    t_->id_to_token_.assign(limit, "");
    t_->id_flags_.assign(limit, 0);
    for (const auto& [token, id] : t_->vocab_) {
      t_->id_to_token_[id] = token;
      t_->id_flags_[id] = kKnown;
    }
    int64_t overlapping = 0;
    for (const auto& [token, id] : t_->added_ids_) {
      overlapping += t_->vocab_.contains(token);
      t_->id_to_token_[id] = token;  // added tokens take precedence
      t_->id_flags_[id] = kKnown;
    }
    t_->vocab_size_ = static_cast<int64_t>(t_->vocab_.size() + t_->added_ids_.size()) - overlapping;
    // HF skips by token string: an id is special if its token is a special one.
    absl::flat_hash_map<std::string, bool> special_names;
    for (const int32_t id : t_->special_ids_) special_names[t_->id_to_token_[id]] = true;
    t_->id_to_bytes_.resize(limit);
    for (int64_t id = 0; id < limit; ++id) {
      if (!(t_->id_flags_[id] & kKnown)) continue;
      if (special_names.contains(t_->id_to_token_[id])) t_->id_flags_[id] |= kSpecial;
      t_->id_to_bytes_[id] = TokenBytes(t_->id_to_token_[id]);
    }
  }

  Tokenizer* t_;
  std::string source_;
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(std::string_view text,
                                                           std::string_view source,
                                                           std::string_view config_json) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  Loader loader(t.get(), std::string(source));
  try {
    MOR_RETURN_IF_ERROR(loader.Load(json::parse(text)));
    json config;
    if (!config_json.empty()) {
      config = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
      if (config.is_discarded()) config = json();
    }
    loader.FillBosEos(config);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": malformed tokenizer.json: ", e.what()));
  }
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                               std::string_view source) {
  return Load(json, source, "");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  auto read = [](const std::filesystem::path& p, std::string* out) {
    std::ifstream in(p, std::ios::binary);
    if (!in) return false;
    std::stringstream buffer;
    buffer << in.rdbuf();
    *out = buffer.str();
    return true;
  };
  std::string text, config;
  if (!read(path, &text))
    return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  read(std::filesystem::path(path).parent_path() / "tokenizer_config.json", &config);
  return Load(text, path, config);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeTo(text, add_special_tokens, &ids);
  return ids;
}

void Tokenizer::EncodeTo(std::string_view text, bool add_special_tokens,
                         std::vector<int32_t>* ids) const {
  if (add_special_tokens) ids->insert(ids->end(), prefix_ids_.begin(), prefix_ids_.end());
  Scratch scratch;
  auto encode_plain = [&](std::string_view plain) {
    pre_tokenizer_->Split(plain, &scratch.prefix_space,
                          [&](std::string_view word) { EncodeWord(word, &scratch, ids); });
  };
  if (added_->empty()) {
    encode_plain(text);
  } else {
    std::vector<AddedVocabulary::Segment> segments;
    added_->Split(text, &segments);
    for (const AddedVocabulary::Segment& seg : segments) {
      if (seg.id >= 0) {
        ids->push_back(seg.id);
      } else {
        encode_plain(text.substr(seg.begin, seg.end - seg.begin));
      }
    }
  }
  if (add_special_tokens) ids->insert(ids->end(), suffix_ids_.begin(), suffix_ids_.end());
}

const Tokenizer::MergeRule* Tokenizer::FindMerge(int32_t left, int32_t right) const {
  const auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void Tokenizer::EncodeWord(std::string_view word, Scratch* scratch,
                           std::vector<int32_t>* ids) const {
  if (word.size() == 1 && byte_ids_[static_cast<uint8_t>(word[0])] >= 0) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(word[0])]);
    return;
  }
  const absl::string_view key(word.data(), word.size());
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    const auto it = cache_.index.find(key);
    if (it != cache_.index.end()) {
      const int32_t* begin = cache_.ids.data() + it->second.first;
      ids->insert(ids->end(), begin, begin + it->second.second);
      return;
    }
  }
  scratch->word_ids.clear();
  if (ignore_merges_) {  // a word that is in the vocab is one token, merges or not
    const auto it = word_ids_.find(key);
    if (it != word_ids_.end()) scratch->word_ids.push_back(it->second);
  }
  if (scratch->word_ids.empty()) MergeWord(word, scratch);
  ids->insert(ids->end(), scratch->word_ids.begin(), scratch->word_ids.end());
  if (word.size() >= kMaxCachedWordBytes) return;
  absl::MutexLock lock(&cache_mu_);
  if (cache_.index.size() >= kMaxCachedWords) return;
  const auto [it, inserted] =
      cache_.index.try_emplace(std::string(word), static_cast<uint32_t>(cache_.ids.size()),
                               static_cast<uint32_t>(scratch->word_ids.size()));
  if (inserted) {
    cache_.ids.insert(cache_.ids.end(), scratch->word_ids.begin(), scratch->word_ids.end());
  }
}

// HF BPE merge_word + Word::merge_all: apply the lowest-rank merge (leftmost
// on ties) until none applies, using a heap of candidate pairs that are
// re-validated when popped.
void Tokenizer::MergeWord(std::string_view word, Scratch* scratch) const {
  std::vector<Symbol>& sym = scratch->symbols;
  sym.clear();
  bool unk_pending = false;
  auto add = [&](int32_t id, uint32_t len) {
    const auto n = static_cast<int32_t>(sym.size());
    if (n > 0) sym.back().next = n;
    sym.push_back({id, n - 1, -1, len});
  };
  for (const char c : word) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      unk_pending = false;
      add(id, 1);
    } else if (unk_id_ >= 0) {
      if (unk_pending && fuse_unk_) {
        ++sym.back().len;
      } else {
        add(unk_id_, 1);
        unk_pending = true;
      }
    }  // else: no unk token; HF drops the character
  }
  std::vector<HeapEntry>& heap = scratch->heap;
  heap.clear();
  auto less = [](const HeapEntry& a, const HeapEntry& b) {
    return HeapLess(a.rank, a.pos, b.rank, b.pos);
  };
  auto push = [&](uint32_t pos, const MergeRule* rule) {
    heap.push_back({rule->rank, pos, rule->new_id});
    std::push_heap(heap.begin(), heap.end(), less);
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (const MergeRule* rule = FindMerge(sym[i].id, sym[i + 1].id)) {
      heap.push_back({rule->rank, static_cast<uint32_t>(i), rule->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), less);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), less);
    const HeapEntry top = heap.back();
    heap.pop_back();
    Symbol& cur = sym[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const Symbol right = sym[cur.next];
    const MergeRule* rule = FindMerge(cur.id, right.id);
    if (rule == nullptr || rule->new_id != top.new_id) continue;  // stale entry
    sym[cur.next].len = 0;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next >= 0) sym[right.next].prev = static_cast<int32_t>(top.pos);
    if (cur.prev >= 0) {
      if (const MergeRule* r = FindMerge(sym[cur.prev].id, cur.id)) {
        push(static_cast<uint32_t>(cur.prev), r);
      }
    }
    if (cur.next >= 0) {
      if (const MergeRule* r = FindMerge(cur.id, sym[cur.next].id)) push(top.pos, r);
    }
  }
  scratch->word_ids.clear();
  for (const Symbol& s : sym) {
    if (s.len != 0) scratch->word_ids.push_back(s.id);
  }
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (const int32_t id : ids) AppendTokenBytes(id, skip_special_tokens, &bytes);
  return utf8::Lossy(bytes);
}

void Tokenizer::AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* bytes) const {
  if (id < 0 || id >= id_limit()) return;
  const uint8_t flags = id_flags_[id];
  if (!(flags & kKnown) || (skip_special_tokens && (flags & kSpecial))) return;
  bytes->append(id_to_bytes_[id]);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const absl::string_view key(token.data(), token.size());
  if (const auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (const auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_limit() || !(id_flags_[id] & kKnown)) return std::nullopt;
  return id_to_token_[id];
}

bool Tokenizer::IsSpecialToken(int32_t id) const {
  return id >= 0 && id < id_limit() && (id_flags_[id] & kSpecial);
}

}  // namespace mor

// Byte-level BPE tokenizer loaded from a HF `tokenizer.json` (the family of
// GPT-2, Llama 3 and SmolLM): encodes and decodes exactly like HF `tokenizers`
// (Tokenizer.encode / Tokenizer.decode) for the supported configurations:
//
//   model:          BPE (vocab, merges as "a b" or ["a", "b"], unk_token,
//                   fuse_unk, ignore_merges); no dropout, no subword
//                   prefix/suffix, no byte_fallback
//   normalizer:     none
//   pre_tokenizer:  ByteLevel (with or without the GPT-2 regex), or a Sequence
//                   of Split (regex or string; Isolated, Removed, Contiguous;
//                   not inverted) / Digits steps ending in ByteLevel
//   post_processor: none, ByteLevel, TemplateProcessing (single sequence), or a
//                   Sequence of them
//   decoder:        ByteLevel
//   added_tokens:   special and normal tokens with single_word / lstrip /
//                   rstrip / normalized
//
// Anything else fails to load with Unimplemented. Truncation and padding
// settings are ignored. Split regexes run on RE2 (see model/pre_tokenizer.h).
//
// Immutable after loading except for an internal word cache; every method is
// thread-safe.
#ifndef MOR_MODEL_TOKENIZER_H_
#define MOR_MODEL_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace mor {

class AddedVocabulary;
class PreTokenizer;

class Tokenizer {
 public:
  // Loads `path` (a tokenizer.json). bos/eos come from the post-processor's
  // template, else from a tokenizer_config.json next to it ("bos_token" /
  // "eos_token"), else from well-known special token names. Errors name the
  // file: NotFound, InvalidArgument (malformed), Unimplemented (unsupported).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // The same from the file's contents; `source` names it in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view json, std::string_view source = "tokenizer.json");
  ~Tokenizer();

  // HF encode(text, add_special_tokens).ids. Added tokens in the text (e.g.
  // "<|endoftext|>") are always recognised; add_special_tokens only applies
  // the post-processor template (e.g. a leading <|begin_of_text|>). Bytes that
  // are not valid UTF-8 are encoded byte-wise (HF cannot take such input).
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const;
  // Appends to *ids.
  void EncodeTo(std::string_view text, bool add_special_tokens, std::vector<int32_t>* ids) const;

  // HF decode(ids, skip_special_tokens): unknown ids are dropped; byte
  // sequences that are not valid UTF-8 become U+FFFD (one per maximal invalid
  // subpart).
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;
  // Appends the raw decoded bytes of one id (before the UTF-8 repair; nothing
  // for unknown ids, or for special ones when skip_special_tokens).
  void AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* bytes) const;

  // Added tokens first, then the BPE vocab (byte-level form, e.g. "Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;

  // Distinct tokens, added ones included (HF get_vocab_size(true)).
  int64_t vocab_size() const { return vocab_size_; }
  // One past the largest id (the embedding rows the ids need).
  int64_t id_limit() const { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int32_t> bos_token_id() const { return bos_id_; }
  std::optional<int32_t> eos_token_id() const { return eos_id_; }
  bool IsSpecialToken(int32_t id) const;
  // Ids of the special added tokens, ascending.
  const std::vector<int32_t>& special_token_ids() const { return special_ids_; }

 private:
  struct MergeRule {
    uint32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;  // 0: merged into its left neighbour
  };
  struct HeapEntry {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
  };
  // Per-Encode scratch buffers (reused across the words of one call).
  struct Scratch {
    std::vector<Symbol> symbols;
    std::vector<HeapEntry> heap;
    std::vector<int32_t> word_ids;
    std::string prefix_space;
  };
  struct WordCache {
    absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> index;  // -> [offset, len)
    std::vector<int32_t> ids;
  };
  class Loader;

  Tokenizer();
  // `config_json`: the tokenizer_config.json text, or empty.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(std::string_view json,
                                                         std::string_view source,
                                                         std::string_view config_json);
  void EncodeWord(std::string_view word, Scratch* scratch, std::vector<int32_t>* ids) const;
  void MergeWord(std::string_view word, Scratch* scratch) const;
  const MergeRule* FindMerge(int32_t left, int32_t right) const;

  // BPE model.
  absl::flat_hash_map<std::string, int32_t> vocab_;     // byte-level token -> id
  absl::flat_hash_map<uint64_t, MergeRule> merges_;     // (left << 32 | right)
  std::array<int32_t, 256> byte_ids_{};                 // id of each byte's token, or -1
  absl::flat_hash_map<std::string, int32_t> word_ids_;  // ignore_merges: raw bytes -> id
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;

  // Added tokens, pre-tokenizer, post-processor.
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // template around the sequence

  // Decoding, indexed by id.
  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_to_bytes_;  // what the ByteLevel decoder makes of it
  std::vector<uint8_t> id_flags_;         // kKnown | kSpecial
  std::vector<int32_t> special_ids_;
  int64_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_, eos_id_;

  mutable absl::Mutex cache_mu_;
  mutable WordCache cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace mor

#endif  // MOR_MODEL_TOKENIZER_H_

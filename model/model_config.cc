// ModelConfig parsing, validation and layer plan (docs/model-format.md).
#include "model/model_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/status_macros.h"

namespace mor {
namespace {

using json = nlohmann::json;

// absl::string_view is not std::string_view in this Abseil build.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Largest accepted size-like integer: keeps products of sizes well inside int64.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

// Reads fields of the top-level object; every error names the source and field.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string_view source) : obj_(obj), source_(source) {}

  absl::Status Error(std::string_view field, std::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(source_), ": field '", AV(field), "': ", AV(problem)));
  }

  // The field, or nullptr when absent or null (null means "use the default").
  const json* Find(std::string_view field) const {
    auto it = obj_.find(std::string(field));
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // An integer field. `fallback` (if set) is used when the field is absent.
  absl::StatusOr<int64_t> Int(std::string_view field, std::optional<int64_t> fallback) const {
    const json* v = Find(field);
    if (v == nullptr) {
      if (fallback.has_value()) return *fallback;
      return Error(field, "missing (required)");
    }
    return ToInt(field, *v);
  }

  absl::StatusOr<int64_t> ToInt(std::string_view field, const json& v) const {
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(field, absl::StrCat("integer ", u, " is out of range"));
      }
      return static_cast<int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    return Error(field, absl::StrCat("must be an integer, got ",
                                     v.is_number() ? v.dump() : std::string(v.type_name())));
  }

  // A positive size-like integer in [1, kMaxSize].
  absl::StatusOr<int64_t> PositiveInt(std::string_view field,
                                      std::optional<int64_t> fallback) const {
    MOR_ASSIGN_OR_RETURN(int64_t value, Int(field, fallback));
    if (value <= 0) return Error(field, absl::StrCat("must be positive, got ", value));
    if (value > kMaxSize) {
      return Error(field, absl::StrCat("must be at most ", kMaxSize, ", got ", value));
    }
    return value;
  }

  absl::StatusOr<double> Double(std::string_view field, double fallback) const {
    const json* v = Find(field);
    if (v == nullptr) return fallback;
    if (!v->is_number()) {
      return Error(field, absl::StrCat("must be a number, got ", v->type_name()));
    }
    double d = v->get<double>();
    if (!std::isfinite(d)) return Error(field, "must be finite");
    return d;
  }

  absl::StatusOr<bool> Bool(std::string_view field, bool fallback) const {
    const json* v = Find(field);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      return Error(field, absl::StrCat("must be a boolean, got ", v->type_name()));
    }
    return v->get<bool>();
  }

  absl::StatusOr<std::string> String(std::string_view field, std::string_view fallback) const {
    const json* v = Find(field);
    if (v == nullptr) return std::string(fallback);
    if (!v->is_string()) {
      return Error(field, absl::StrCat("must be a string, got ", v->type_name()));
    }
    return v->get<std::string>();
  }

  bool Has(std::string_view field) const { return Find(field) != nullptr; }

 private:
  const json& obj_;
  std::string_view source_;
};

template <typename E, size_t N>
std::optional<E> EnumFromName(std::string_view name,
                              const std::pair<E, std::string_view> (&table)[N]) {
  for (const auto& [value, n] : table) {
    if (n == name) return value;
  }
  return std::nullopt;
}

template <typename E, size_t N>
std::string_view EnumName(E value, const std::pair<E, std::string_view> (&table)[N]) {
  for (const auto& [v, n] : table) {
    if (v == value) return n;
  }
  return "unknown";
}

template <typename E, size_t N>
std::string EnumChoices(const std::pair<E, std::string_view> (&table)[N]) {
  std::string out;
  for (size_t i = 0; i < N; ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ", ", "\"", AV(table[i].second), "\"");
  }
  return out;
}

constexpr std::pair<SharingStrategy, std::string_view> kSharingNames[] = {
    {SharingStrategy::kCycle, "cycle"},
    {SharingStrategy::kSequence, "sequence"},
    {SharingStrategy::kMiddleCycle, "middle_cycle"},
    {SharingStrategy::kMiddleSequence, "middle_sequence"},
    {SharingStrategy::kNone, "none"},
};
constexpr std::pair<RouterType, std::string_view> kRouterTypeNames[] = {
    {RouterType::kExpertChoice, "expert_choice"},
    {RouterType::kTokenChoice, "token_choice"},
};
constexpr std::pair<RouterArch, std::string_view> kRouterArchNames[] = {
    {RouterArch::kLinear, "linear"},
    {RouterArch::kMlp, "mlp"},
};
constexpr std::pair<RouterActivation, std::string_view> kActivationNames[] = {
    {RouterActivation::kSigmoid, "sigmoid"},
    {RouterActivation::kSoftmax, "softmax"},
};
constexpr std::pair<KvMode, std::string_view> kKvModeNames[] = {
    {KvMode::kRecursionWise, "recursion_wise"},
    {KvMode::kRecursiveSharing, "recursive_sharing"},
};

template <typename E, size_t N>
absl::StatusOr<E> ReadEnum(const FieldReader& reader, std::string_view field, E fallback,
                           const std::pair<E, std::string_view> (&table)[N]) {
  MOR_ASSIGN_OR_RETURN(std::string name, reader.String(field, EnumName(fallback, table)));
  std::optional<E> value = EnumFromName(name, table);
  if (!value.has_value()) {
    return reader.Error(field, absl::StrCat("unknown value \"", name, "\" (expected one of ",
                                            EnumChoices(table), ")"));
  }
  return *value;
}

bool IsMiddle(SharingStrategy s) {
  return s == SharingStrategy::kMiddleCycle || s == SharingStrategy::kMiddleSequence;
}

// Parses a validated-JSON object into a config. Never throws (callers also guard).
absl::StatusOr<ModelConfig> ParseObject(const json& root, std::string_view source) {
  FieldReader r(root, source);
  ModelConfig c;

  // --- Llama fields. ---
  // model_type defaults to "mor" when a sharing strategy is given, else "llama".
  const json* sharing_field = r.Find("sharing_strategy");
  const bool looks_mor = sharing_field != nullptr && !(sharing_field->is_string() &&
                                                       sharing_field->get<std::string>() == "none");
  MOR_ASSIGN_OR_RETURN(c.model_type, r.String("model_type", looks_mor ? "mor" : "llama"));
  if (c.model_type != "llama" && c.model_type != "mor") {
    return r.Error("model_type", absl::StrCat("unsupported value \"", c.model_type,
                                              "\" (expected \"mor\" or \"llama\")"));
  }
  MOR_ASSIGN_OR_RETURN(c.hidden_size, r.PositiveInt("hidden_size", std::nullopt));
  MOR_ASSIGN_OR_RETURN(c.intermediate_size, r.PositiveInt("intermediate_size", std::nullopt));
  MOR_ASSIGN_OR_RETURN(c.num_hidden_layers, r.PositiveInt("num_hidden_layers", std::nullopt));
  MOR_ASSIGN_OR_RETURN(c.num_attention_heads, r.PositiveInt("num_attention_heads", std::nullopt));
  MOR_ASSIGN_OR_RETURN(c.num_key_value_heads,
                       r.PositiveInt("num_key_value_heads", c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads (",
                                c.num_attention_heads, ")"));
  }
  if (r.Has("head_dim")) {
    MOR_ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim", std::nullopt));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return r.Error("hidden_size",
                     absl::StrCat(c.hidden_size, " is not divisible by num_attention_heads (",
                                  c.num_attention_heads, ") and head_dim is not given"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat("must be even for RoPE, got ", c.head_dim,
                                            r.Has("head_dim") ? "" : " (hidden_size / heads)"));
  }
  MOR_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Double("rms_norm_eps", 1e-5));
  if (c.rms_norm_eps <= 0) {
    return r.Error("rms_norm_eps", absl::StrCat("must be positive, got ", c.rms_norm_eps));
  }
  MOR_ASSIGN_OR_RETURN(c.rope_theta, r.Double("rope_theta", 10000.0));
  if (c.rope_theta <= 0) {
    return r.Error("rope_theta", absl::StrCat("must be positive, got ", c.rope_theta));
  }
  MOR_ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size", std::nullopt));
  MOR_ASSIGN_OR_RETURN(c.max_position_embeddings,
                       r.PositiveInt("max_position_embeddings", int64_t{2048}));
  MOR_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", true));
  MOR_ASSIGN_OR_RETURN(c.hidden_act, r.String("hidden_act", "silu"));
  if (c.hidden_act != "silu") {
    return r.Error("hidden_act",
                   absl::StrCat("unsupported activation \"", c.hidden_act, "\" (only \"silu\")"));
  }
  // Llama options the engine does not implement: refuse rather than compute wrongly.
  for (std::string_view bias_field : {"attention_bias", "mlp_bias"}) {
    MOR_ASSIGN_OR_RETURN(bool bias, r.Bool(bias_field, false));
    if (bias) return r.Error(bias_field, "biases are not supported");
  }
  if (r.Has("rope_scaling")) return r.Error("rope_scaling", "RoPE scaling is not supported");

  MOR_ASSIGN_OR_RETURN(c.bos_token_id, r.Int("bos_token_id", int64_t{-1}));
  if (c.bos_token_id < -1) {
    return r.Error("bos_token_id", absl::StrCat("must be non-negative, got ", c.bos_token_id));
  }
  if (const json* eos = r.Find("eos_token_id"); eos != nullptr) {
    if (eos->is_array()) {
      for (const json& item : *eos) {
        MOR_ASSIGN_OR_RETURN(int64_t id, r.ToInt("eos_token_id", item));
        c.eos_token_ids.push_back(id);
      }
    } else {
      MOR_ASSIGN_OR_RETURN(int64_t id, r.ToInt("eos_token_id", *eos));
      c.eos_token_ids.push_back(id);
    }
    for (int64_t id : c.eos_token_ids) {
      if (id < 0) return r.Error("eos_token_id", absl::StrCat("must be non-negative, got ", id));
    }
  }

  // --- MoR fields. ---
  MOR_ASSIGN_OR_RETURN(int64_t nr, r.Int("num_recursions", int64_t{1}));
  if (nr < 1) return r.Error("num_recursions", absl::StrCat("must be >= 1, got ", nr));
  if (nr > c.num_hidden_layers) {
    return r.Error("num_recursions",
                   absl::StrCat(nr, " exceeds num_hidden_layers (", c.num_hidden_layers, ")"));
  }
  c.num_recursions = static_cast<int>(nr);
  MOR_ASSIGN_OR_RETURN(c.sharing,
                       ReadEnum(r, "sharing_strategy", SharingStrategy::kNone, kSharingNames));
  MOR_ASSIGN_OR_RETURN(c.router_type,
                       ReadEnum(r, "router_type", RouterType::kExpertChoice, kRouterTypeNames));
  MOR_ASSIGN_OR_RETURN(c.router_arch,
                       ReadEnum(r, "router_arch", RouterArch::kLinear, kRouterArchNames));
  const RouterActivation default_activation = c.router_type == RouterType::kTokenChoice
                                                  ? RouterActivation::kSoftmax
                                                  : RouterActivation::kSigmoid;
  MOR_ASSIGN_OR_RETURN(c.router_activation,
                       ReadEnum(r, "router_activation", default_activation, kActivationNames));
  if (c.router_type == RouterType::kExpertChoice &&
      c.router_activation != RouterActivation::kSigmoid) {
    return r.Error("router_activation", "expert_choice routers require \"sigmoid\"");
  }
  const double default_alpha =
      c.router_type == RouterType::kTokenChoice && c.router_activation == RouterActivation::kSoftmax
          ? 1.0
          : 0.1;
  MOR_ASSIGN_OR_RETURN(c.router_alpha, r.Double("router_alpha", default_alpha));
  if (c.router_alpha <= 0) {
    return r.Error("router_alpha", absl::StrCat("must be positive, got ", c.router_alpha));
  }
  MOR_ASSIGN_OR_RETURN(c.router_threshold, r.Double("router_threshold", 0.5));
  if (!(c.router_threshold > 0.0 && c.router_threshold < 1.0)) {
    return r.Error("router_threshold",
                   absl::StrCat("must be in the open interval (0, 1), got ", c.router_threshold));
  }
  MOR_ASSIGN_OR_RETURN(c.kv_mode, ReadEnum(r, "kv_mode", KvMode::kRecursionWise, kKvModeNames));

  // --- Cross-field consistency. ---
  const int64_t L = c.num_hidden_layers;
  if (c.sharing == SharingStrategy::kNone) {
    if (c.num_recursions != 1) {
      return r.Error("num_recursions",
                     absl::StrCat("must be 1 for a vanilla model (sharing_strategy \"none\"), got ",
                                  c.num_recursions));
    }
  } else if (IsMiddle(c.sharing)) {
    if (L < 2 + nr || (L - 2) % nr != 0) {
      return r.Error("num_hidden_layers",
                     absl::StrCat(L, " does not equal 2 + B x Nr (B >= 1) for ",
                                  AV(SharingStrategyName(c.sharing)), " with num_recursions=", nr));
    }
  } else if (L % nr != 0) {
    return r.Error("num_hidden_layers",
                   absl::StrCat(L, " does not equal B x Nr (B >= 1) for ",
                                AV(SharingStrategyName(c.sharing)), " with num_recursions=", nr));
  }
  return c;
}

}  // namespace

std::string_view SharingStrategyName(SharingStrategy s) { return EnumName(s, kSharingNames); }
std::string_view RouterTypeName(RouterType t) { return EnumName(t, kRouterTypeNames); }
std::string_view RouterArchName(RouterArch a) { return EnumName(a, kRouterArchNames); }
std::string_view RouterActivationName(RouterActivation a) { return EnumName(a, kActivationNames); }
std::string_view KvModeName(KvMode m) { return EnumName(m, kKvModeNames); }

absl::StatusOr<ModelConfig> ModelConfig::FromJson(std::string_view json_text,
                                                  std::string_view source) {
  try {
    json root = json::parse(json_text.begin(), json_text.end(), nullptr, false);
    if (root.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(AV(source), ": invalid JSON"));
    }
    if (!root.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(AV(source), ": top level must be a JSON object, got ", root.type_name()));
    }
    return ParseObject(root, source);
  } catch (const std::exception& e) {
    // Defensive: the accessors above are guarded, but never let one escape.
    return absl::InvalidArgumentError(absl::StrCat(AV(source), ": ", e.what()));
  }
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(msg);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::string text;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return absl::UnavailableError(absl::StrCat(path, ": read failed: ", std::strerror(err)));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return FromJson(text, path);
}

LayerPlan ModelConfig::MakeLayerPlan() const {
  LayerPlan plan;
  const int L = static_cast<int>(num_hidden_layers);
  if (is_vanilla()) {
    std::vector<int> all(L);
    for (int i = 0; i < L; ++i) all[i] = i;
    plan.recursion_layers.push_back(std::move(all));
    plan.num_shared_layers = L;
    plan.block_layers = L;
    plan.recursions_share_weights = true;
    return plan;
  }
  const int nr = num_recursions;
  const bool middle = IsMiddle(sharing);
  const int shared_unrolled = middle ? L - 2 : L;  // unrolled layers inside the recursions
  const int B = shared_unrolled / nr;
  const bool cycle = sharing == SharingStrategy::kCycle || sharing == SharingStrategy::kMiddleCycle;
  if (middle) {
    plan.prefix_unique_layers = {0};
    plan.suffix_unique_layers = {1};
    plan.num_unique_layers = 2;
  }
  plan.block_layers = B;
  plan.recursion_layers.resize(nr);
  for (int r = 0; r < nr; ++r) {
    plan.recursion_layers[r].resize(B);
    for (int j = 0; j < B; ++j) {
      const int u = r * B + j;  // unrolled index within the recursive section
      plan.recursion_layers[r][j] = cycle ? u % B : u / nr;
    }
  }
  // Both strategies use B distinct shared layers (sequence: L' / Nr = B).
  plan.num_shared_layers = B;
  plan.recursions_share_weights = true;
  for (int r = 1; r < nr; ++r) {
    if (plan.recursion_layers[r] != plan.recursion_layers[0]) {
      plan.recursions_share_weights = false;
    }
  }
  return plan;
}

std::string ModelConfig::ToJson() const {
  // ordered_json keeps the fields in a readable, stable order.
  nlohmann::ordered_json j;
  j["model_type"] = model_type;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = hidden_act;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  j["num_recursions"] = num_recursions;
  j["sharing_strategy"] = std::string(SharingStrategyName(sharing));
  j["router_type"] = std::string(RouterTypeName(router_type));
  j["router_arch"] = std::string(RouterArchName(router_arch));
  j["router_activation"] = std::string(RouterActivationName(router_activation));
  j["router_alpha"] = router_alpha;
  j["router_threshold"] = router_threshold;
  j["kv_mode"] = std::string(KvModeName(kv_mode));
  return j.dump(2) + "\n";
}

}  // namespace mor

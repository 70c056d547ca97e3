// mor_bench_model: decode and prefill throughput of one model through the
// engine API (CreateTorchModelRunner + ModelRunner::Step), as the scheduler
// drives it: paged recursion-wise KV, one Step per batched decode step.
//
// Protocol (the same as tools/reference/eager_decode.py):
//   * prefill-N: one sequence of N random tokens in one Step (logits of the
//     last token); after `--warmup` > 0 one untimed run, `--prefill_repeats`
//     timed runs.
//   * decode at batch B: max(B) sequences of `--prompt_len` random tokens are
//     prefilled once (untimed). For each B the first B sequences are rewound to
//     the end of their prompt (their tables' entry counts restored; the prompt
//     K/V are never overwritten), then `--warmup` untimed and `--decode_steps`
//     timed greedy steps of the whole batch (one token per sequence per Step,
//     argmax on the host included).
// tokens/s = timed tokens / total time; tok/s(med) = tokens of one step /
// median step time (robust to short interference from other processes; the
// number tools/bench/bench_model.py reports by default). cpu% = process CPU
// time / wall time (200% = both threads of --threads 2 busy).
//
// Without --model_dir the binary hands over to tools/bench/bench_model.py,
// which builds the models and compares this engine with eager PyTorch; that
// is what `./mor bench model` runs.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "model/simple_block_allocator.h"

ABSL_FLAG(std::string, model_dir, "",
          "model directory (config.json + safetensors). Without it the binary runs "
          "tools/bench/bench_model.py (the full comparison) with the other arguments.");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(std::string, dtype, "float32", "float32 | bfloat16 | float16 (cuda only)");
ABSL_FLAG(std::string, batch_sizes, "1,8,32,64", "decode batch sizes, comma separated");
ABSL_FLAG(int32_t, prompt_len, 64, "random prompt tokens per sequence before decoding");
ABSL_FLAG(int32_t, decode_steps, 32, "timed decode steps per batch size");
ABSL_FLAG(std::string, decode_steps_by_batch, "",
          "per-batch overrides of --decode_steps, e.g. '64:16,32:24'");
ABSL_FLAG(int32_t, prefill_len, 512, "prompt length of the prefill measurement (0: skip)");
ABSL_FLAG(int32_t, prefill_repeats, 3, "timed prefill runs");
ABSL_FLAG(std::string, policy, "adaptive", "depth policy: adaptive | fixedN (N in 1..Nr)");
ABSL_FLAG(int32_t, warmup, 2,
          "untimed decode steps before each timed batch (and, if > 0, one untimed prefill run)");
ABSL_FLAG(int32_t, threads, 2, "intra-op CPU threads (0: all cores)");
ABSL_FLAG(int32_t, block_size, 16, "KV block size in tokens");
ABSL_FLAG(std::string, attention, "auto",
          "attention kernel (ModelRunnerOptions::attention): auto | sdpa");
ABSL_FLAG(int32_t, prompt_step_tokens, 1024,
          "max tokens per Step while prefilling the decode prompts (untimed)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the random prompts");
ABSL_FLAG(bool, json, false, "also print one JSON object per measurement (lines starting '{')");
ABSL_FLAG(std::string, label, "", "name of this run in the output");

namespace mor {
namespace {

using bench::ProcessCpuSeconds;
using bench::SecondsSince;

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Hand-over to the orchestrator when no --model_dir is given.

// ---------------------------------------------------------------------------
// Flag parsing helpers.

absl::StatusOr<std::vector<int>> ParseIntList(const std::string& text, const char* what) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": '", std::string(part), "' is not a positive integer"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  return out;
}

absl::StatusOr<DepthPolicy> ParsePolicy(const std::string& text, int nr) {
  if (text == "adaptive") return DepthPolicy::Adaptive();
  absl::string_view rest = text;
  int depth = 0;
  if (absl::ConsumePrefix(&rest, "fixed") && absl::SimpleAtoi(rest, &depth) && depth >= 1 &&
      depth <= nr) {
    return DepthPolicy::Fixed(depth);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--policy '", text, "': expected adaptive or fixed1..fixed", nr));
}

// Steps for batch `b`: --decode_steps unless --decode_steps_by_batch names it.
absl::StatusOr<int> StepsFor(int b) {
  int steps = absl::GetFlag(FLAGS_decode_steps);
  const std::string overrides = absl::GetFlag(FLAGS_decode_steps_by_batch);
  for (absl::string_view item : absl::StrSplit(overrides, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, ':');
    int batch = 0, s = 0;
    if (!absl::SimpleAtoi(kv.first, &batch) || !absl::SimpleAtoi(kv.second, &s) || s <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--decode_steps_by_batch: bad item '", std::string(item), "' (want B:S)"));
    }
    if (batch == b) steps = s;
  }
  return steps;
}

// ---------------------------------------------------------------------------
// Measurement bookkeeping.

// Sums of StepStats over the timed steps of one measurement.
struct StatsSum {
  int64_t steps = 0;
  std::vector<int64_t> token_steps;  // per depth
  double embed = 0, unique = 0, lm_head = 0, total = 0;
  std::vector<double> recursion;

  void Add(const StepStats& s) {
    ++steps;
    if (token_steps.size() < s.token_steps_per_depth.size()) {
      token_steps.resize(s.token_steps_per_depth.size(), 0);
    }
    if (recursion.size() < s.recursion_seconds.size()) recursion.resize(s.recursion_seconds.size());
    for (size_t i = 0; i < s.token_steps_per_depth.size(); ++i) {
      token_steps[i] += s.token_steps_per_depth[i];
    }
    for (size_t i = 0; i < s.recursion_seconds.size(); ++i) recursion[i] += s.recursion_seconds[i];
    embed += s.embed_seconds;
    unique += s.unique_layers_seconds;
    lm_head += s.lm_head_seconds;
    total += s.total_seconds;
  }
};

struct Measurement {
  std::string phase;  // "prefill" | "decode"
  int batch = 0;
  int steps = 0;           // timed Steps
  int64_t tokens = 0;      // timed tokens
  int context = 0;         // prefill: prompt length; decode: context at the first timed step
  double seconds = 0;      // wall time of the timed loop (host work included)
  double cpu_seconds = 0;  // process CPU time of the timed loop
  StatsSum stats;

  std::vector<double> step_seconds;  // wall time of each timed Step (+ host argmax)

  double tok_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0; }
  // Robust to short interference from other processes: tokens of one step
  // over the median step time.
  double median_step_seconds() const {
    if (step_seconds.empty()) return 0;
    std::vector<double> v = step_seconds;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  double tok_s_median() const {
    const double med = median_step_seconds();
    return med > 0 && steps > 0 ? static_cast<double>(tokens) / steps / med : 0;
  }
  double mean_depth() const {
    int64_t sum = 0;
    for (int64_t v : stats.token_steps) sum += v;
    return tokens > 0 ? static_cast<double>(sum) / static_cast<double>(tokens) : 0;
  }
};

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

struct RunInfo {
  std::string label, model_dir, model_kind, device, dtype, policy, attention;
  int threads = 0;
  double load_seconds = 0;
};

std::string ToJson(const RunInfo& info, const Measurement& m) {
  const double n = std::max<int64_t>(1, m.stats.steps);
  std::vector<std::string> rec_ms;
  for (double s : m.stats.recursion) rec_ms.push_back(absl::StrFormat("%.4f", 1e3 * s / n));
  return absl::StrCat(
      "{\"engine\":\"cpp\",\"label\":\"", JsonEscape(info.label), "\",\"model_dir\":\"",
      JsonEscape(info.model_dir), "\",\"model\":\"", JsonEscape(info.model_kind),
      "\",\"device\":\"", info.device, "\",\"dtype\":\"", info.dtype, "\",\"policy\":\"",
      info.policy, "\",\"attention\":\"", JsonEscape(info.attention),
      "\",\"threads\":", info.threads, ",\"phase\":\"", m.phase, "\",\"batch\":", m.batch,
      ",\"steps\":", m.steps, ",\"tokens\":", m.tokens, ",\"context\":", m.context,
      ",\"seconds\":", absl::StrFormat("%.6f", m.seconds),
      ",\"cpu_seconds\":", absl::StrFormat("%.6f", m.cpu_seconds),
      ",\"tok_s\":", absl::StrFormat("%.3f", m.tok_s()),
      ",\"tok_s_median\":", absl::StrFormat("%.3f", m.tok_s_median()), ",\"step_seconds\":[",
      absl::StrJoin(
          m.step_seconds, ",",
          [](std::string* out, double v) { absl::StrAppend(out, absl::StrFormat("%.6f", v)); }),
      "]", ",\"mean_depth\":", absl::StrFormat("%.4f", m.mean_depth()),
      ",\"ms_per_step\":{\"embed\":", absl::StrFormat("%.4f", 1e3 * m.stats.embed / n),
      ",\"unique_layers\":", absl::StrFormat("%.4f", 1e3 * m.stats.unique / n), ",\"recursions\":[",
      absl::StrJoin(rec_ms, ","), "]",
      ",\"lm_head\":", absl::StrFormat("%.4f", 1e3 * m.stats.lm_head / n),
      ",\"step_total\":", absl::StrFormat("%.4f", 1e3 * m.stats.total / n),
      ",\"wall\":", absl::StrFormat("%.4f", 1e3 * m.seconds / n), "}",
      ",\"load_seconds\":", absl::StrFormat("%.3f", info.load_seconds), "}");
}

// ---------------------------------------------------------------------------
// The benchmark.

class Bench {
 public:
  Bench(std::unique_ptr<ModelRunner> runner, DepthPolicy policy, uint64_t seed)
      : runner_(std::move(runner)),
        allocator_(runner_->kv_geometry()),
        policy_(policy),
        rng_(seed) {}

  std::vector<int32_t> RandomTokens(int n) {
    std::uniform_int_distribution<int32_t> dist(
        0, static_cast<int32_t>(runner_->config().vocab_size - 1));
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = dist(rng_);
    return out;
  }

  SequenceKv NewKv() const {
    SequenceKv kv;
    kv.depths.resize(runner_->kv_geometry().num_depth_levels);
    return kv;
  }

  absl::StatusOr<Measurement> Prefill(int len, int warmup_runs, int repeats) {
    const std::vector<int32_t> tokens = RandomTokens(len);
    Measurement m;
    m.phase = "prefill";
    m.batch = 1;
    m.context = len;
    for (int run = 0; run < warmup_runs + repeats; ++run) {
      SequenceKv kv = NewKv();
      SequenceChunk chunk;
      chunk.tokens = tokens;
      chunk.start_position = 0;
      chunk.policy = policy_;
      chunk.kv = &kv;
      chunk.logits = LogitsRequest::kLast;
      const auto start = Clock::now();
      const double cpu_start = ProcessCpuSeconds();
      absl::StatusOr<StepResult> result = runner_->Step({&chunk, 1}, allocator_);
      const double seconds = SecondsSince(start);
      const double cpu_seconds = ProcessCpuSeconds() - cpu_start;
      allocator_.Release(kv);
      if (!result.ok()) return result.status();
      if (run >= warmup_runs) {
        m.seconds += seconds;
        m.step_seconds.push_back(seconds);
        m.cpu_seconds += cpu_seconds;
        m.tokens += len;
        ++m.steps;
        m.stats.Add(result->stats);
      }
    }
    return m;
  }

  // Prefills `num_seqs` prompts (untimed) and remembers where they end.
  absl::Status PreparePrompts(int num_seqs, int prompt_len, int max_step_tokens) {
    prompts_.clear();
    kvs_.assign(num_seqs, NewKv());
    first_token_.assign(num_seqs, 0);
    for (int s = 0; s < num_seqs; ++s) prompts_.push_back(RandomTokens(prompt_len));
    const int per_step = std::max(1, max_step_tokens / prompt_len);
    const auto start = Clock::now();
    for (int s0 = 0; s0 < num_seqs; s0 += per_step) {
      const int s1 = std::min(num_seqs, s0 + per_step);
      std::vector<SequenceChunk> chunks;
      for (int s = s0; s < s1; ++s) {
        SequenceChunk c;
        c.tokens = prompts_[s];
        c.start_position = 0;
        c.policy = policy_;
        c.kv = &kvs_[s];
        c.logits = LogitsRequest::kLast;
        chunks.push_back(c);
      }
      absl::StatusOr<StepResult> result = runner_->Step(chunks, allocator_);
      if (!result.ok()) return result.status();
      for (int s = s0; s < s1; ++s) first_token_[s] = ArgMax(*result, s - s0);
    }
    prompt_prefill_seconds_ = SecondsSince(start);
    prompt_len_ = prompt_len;
    snapshot_ = kvs_;  // entry counts at the end of the prompts
    return absl::OkStatus();
  }

  double prompt_prefill_seconds() const { return prompt_prefill_seconds_; }

  absl::StatusOr<Measurement> Decode(int batch, int warmup_steps, int steps) {
    if (batch > static_cast<int>(kvs_.size())) {
      return absl::InternalError("batch larger than the prepared prompts");
    }
    // Rewind the first `batch` sequences to the end of their prompts.
    std::vector<int32_t> next(batch);
    for (int s = 0; s < batch; ++s) {
      kvs_[s].unique.num_tokens = snapshot_[s].unique.num_tokens;
      for (size_t d = 0; d < kvs_[s].depths.size(); ++d) {
        kvs_[s].depths[d].num_tokens = snapshot_[s].depths[d].num_tokens;
      }
      next[s] = first_token_[s];
    }
    Measurement m;
    m.phase = "decode";
    m.batch = batch;
    m.context = prompt_len_ + warmup_steps;
    std::vector<SequenceChunk> chunks(batch);
    Clock::time_point start;
    double cpu_start = 0;
    for (int step = 0; step < warmup_steps + steps; ++step) {
      if (step == warmup_steps) {
        start = Clock::now();
        cpu_start = ProcessCpuSeconds();
      }
      const int32_t position = prompt_len_ + step;
      for (int s = 0; s < batch; ++s) {
        chunks[s].tokens = std::span<const int32_t>(&next[s], 1);
        chunks[s].start_position = position;
        chunks[s].policy = policy_;
        chunks[s].kv = &kvs_[s];
        chunks[s].logits = LogitsRequest::kLast;
      }
      const auto step_start = Clock::now();
      absl::StatusOr<StepResult> result = runner_->Step(chunks, allocator_);
      if (!result.ok()) return result.status();
      for (int s = 0; s < batch; ++s) next[s] = ArgMax(*result, s);
      if (step >= warmup_steps) {
        m.step_seconds.push_back(SecondsSince(step_start));
        m.stats.Add(result->stats);
      }
    }
    m.seconds = SecondsSince(start);
    m.cpu_seconds = ProcessCpuSeconds() - cpu_start;
    m.steps = steps;
    m.tokens = static_cast<int64_t>(batch) * steps;
    return m;
  }

 private:
  static int32_t ArgMax(const StepResult& result, int chunk) {
    const float* row = result.logits.data() + result.logits_row[chunk] * result.vocab_size;
    return static_cast<int32_t>(std::max_element(row, row + result.vocab_size) - row);
  }

  std::unique_ptr<ModelRunner> runner_;
  SimpleBlockAllocator allocator_;
  DepthPolicy policy_;
  std::mt19937_64 rng_;
  std::vector<std::vector<int32_t>> prompts_;
  std::vector<SequenceKv> kvs_;
  std::vector<SequenceKv> snapshot_;
  std::vector<int32_t> first_token_;
  int prompt_len_ = 0;
  double prompt_prefill_seconds_ = 0;
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

absl::Status Run() {
  RunInfo info;
  info.model_dir = absl::GetFlag(FLAGS_model_dir);
  info.label = absl::GetFlag(FLAGS_label);
  const int prompt_len = absl::GetFlag(FLAGS_prompt_len);
  const int prefill_len = absl::GetFlag(FLAGS_prefill_len);
  const int warmup = std::max(0, absl::GetFlag(FLAGS_warmup));
  const int block_size = absl::GetFlag(FLAGS_block_size);
  if (prompt_len <= 0) return absl::InvalidArgumentError("--prompt_len must be positive");
  if (block_size <= 0) return absl::InvalidArgumentError("--block_size must be positive");
  std::vector<int> batches;
  {
    absl::StatusOr<std::vector<int>> parsed =
        ParseIntList(absl::GetFlag(FLAGS_batch_sizes), "--batch_sizes");
    if (!parsed.ok()) return parsed.status();
    batches = *parsed;
  }
  std::vector<int> steps_of(batches.size());
  int max_steps = 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    absl::StatusOr<int> s = StepsFor(batches[i]);
    if (!s.ok()) return s.status();
    steps_of[i] = *s;
    max_steps = std::max(max_steps, *s);
  }
  const int max_batch = *std::max_element(batches.begin(), batches.end());

  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile((std::filesystem::path(info.model_dir) / "config.json").string());
  if (!config.ok()) return config.status();
  absl::StatusOr<DepthPolicy> policy =
      ParsePolicy(absl::GetFlag(FLAGS_policy), config->num_recursions);
  if (!policy.ok()) return policy.status();
  info.policy = absl::GetFlag(FLAGS_policy);
  if (prompt_len + warmup + max_steps > config->max_position_embeddings ||
      prefill_len > config->max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt_len + warmup + decode_steps and prefill_len must fit max_position_embeddings ",
        config->max_position_embeddings));
  }

  // Pools sized for the decode sequences (every depth may be reached) and,
  // separately, the prefill sequence (released before the decode runs).
  const int64_t levels = config->kv_mode == KvMode::kRecursiveSharing || config->is_vanilla()
                             ? 1
                             : config->num_recursions;
  const int64_t per_table = CeilDiv(prompt_len + warmup + max_steps, block_size);
  const int64_t prefill_table = CeilDiv(std::max(prefill_len, 1), block_size);
  ModelRunnerOptions options;
  options.model_dir = info.model_dir;
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.block_size = block_size;
  options.num_depth_blocks = std::max(max_batch * levels * per_table, levels * prefill_table) + 2;
  options.num_unique_blocks = std::max<int64_t>(max_batch * per_table, prefill_table) + 2;
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.attention = absl::GetFlag(FLAGS_attention);

  const auto load_start = Clock::now();
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = CreateTorchModelRunner(options);
  if (!runner.ok()) return runner.status();
  info.load_seconds = SecondsSince(load_start);
  info.device = (*runner)->device();
  info.dtype = (*runner)->dtype();
  info.threads = options.num_threads;
  info.attention = options.attention;
  const ModelConfig& cfg = (*runner)->config();
  info.model_kind = cfg.is_vanilla()
                        ? absl::StrCat("vanilla L=", cfg.num_hidden_layers)
                        : absl::StrCat(std::string(SharingStrategyName(cfg.sharing)),
                                       " Nr=", cfg.num_recursions, " L=", cfg.num_hidden_layers,
                                       " ", std::string(RouterTypeName(cfg.router_type)), " ",
                                       std::string(KvModeName(cfg.kv_mode)));
  if (info.label.empty()) info.label = std::filesystem::path(info.model_dir).filename().string();

  const bool json = absl::GetFlag(FLAGS_json);
  std::printf(
      "mor_bench_model %s: %s (d %lld, vocab %lld) device %s dtype %s policy %s "
      "attention %s threads %d, loaded in %.2f s\n",
      info.label.c_str(), info.model_kind.c_str(), static_cast<long long>(cfg.hidden_size),
      static_cast<long long>(cfg.vocab_size), info.device.c_str(), info.dtype.c_str(),
      info.policy.c_str(), info.attention.c_str(), info.threads, info.load_seconds);
  std::printf("%-12s %5s %5s %7s %9s %10s %10s %5s %6s | ms/step: %7s %7s %7s %s %7s %7s\n",
              "phase", "batch", "steps", "context", "seconds", "tok/s", "tok/s(med)", "cpu%",
              "depth", "wall", "embed", "unique", "recursions", "lm_head", "other");
  std::fflush(stdout);
  auto print = [&](const Measurement& m) {
    const double n = std::max<int64_t>(1, m.stats.steps);
    std::vector<std::string> rec;
    double rec_sum = 0;
    for (double s : m.stats.recursion) {
      rec.push_back(absl::StrFormat("%7.2f", 1e3 * s / n));
      rec_sum += s;
    }
    const double other = m.seconds - (m.stats.embed + m.stats.unique + rec_sum + m.stats.lm_head);
    const std::string name = m.phase == "prefill" ? absl::StrCat("prefill-", m.context) : "decode";
    std::printf(
        "%-12s %5d %5d %7d %9.3f %10.1f %10.1f %5.0f %6.2f | ms/step: %7.2f %7.2f %7.2f %s %7.2f "
        "%7.2f\n",
        name.c_str(), m.batch, m.steps, m.context, m.seconds, m.tok_s(), m.tok_s_median(),
        m.seconds > 0 ? 100.0 * m.cpu_seconds / m.seconds : 0.0, m.mean_depth(),
        1e3 * m.seconds / n, 1e3 * m.stats.embed / n, 1e3 * m.stats.unique / n,
        absl::StrJoin(rec, " ").c_str(), 1e3 * m.stats.lm_head / n, 1e3 * other / n);
    if (json) std::printf("%s\n", ToJson(info, m).c_str());
    std::fflush(stdout);
  };

  Bench bench(std::move(*runner), *policy, absl::GetFlag(FLAGS_seed));
  if (prefill_len > 0) {
    absl::StatusOr<Measurement> m = bench.Prefill(
        prefill_len, warmup > 0 ? 1 : 0, std::max(1, absl::GetFlag(FLAGS_prefill_repeats)));
    if (!m.ok()) return m.status();
    print(*m);
  }
  if (absl::Status s =
          bench.PreparePrompts(max_batch, prompt_len, absl::GetFlag(FLAGS_prompt_step_tokens));
      !s.ok()) {
    return s;
  }
  std::printf("(prompts: %d x %d tokens prefilled in %.2f s, untimed)\n", max_batch, prompt_len,
              bench.prompt_prefill_seconds());
  for (size_t i = 0; i < batches.size(); ++i) {
    absl::StatusOr<Measurement> m = bench.Decode(batches[i], warmup, steps_of[i]);
    if (!m.ok()) return m.status();
    print(*m);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mor

int main(int argc, char** argv) {
  if (!mor::bench::HasFlag(argc, argv, "model_dir"))
    mor::bench::ExecOrchestrator(argc, argv, "bench_model.py", "mor_bench_model");
  absl::SetProgramUsageMessage(
      "Decode/prefill tokens/s of one model through the MoR engine.\n"
      "  mor_bench_model --model_dir DIR [--dtype bfloat16] [--policy fixed3] [--json]\n"
      "Without --model_dir: runs tools/bench/bench_model.py (C++ vs eager PyTorch table).");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "mor_bench_model: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  absl::Status status = mor::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "mor_bench_model: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

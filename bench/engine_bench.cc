// mor_bench_engine: the serving engine (EngineCore = Scheduler + ModelRunner +
// sampler) driven in-process with N concurrent requests, for every batching
// mode of a MoR model and for a vanilla model of the same layer dimensions
// with as many layers as MoR's effective depth (L = 2 + B x Nr).
//
// Protocol, per (concurrency N, mode), interleaved N-major so that a change in
// machine load hits every mode alike:
//   * a fresh EngineCore (fresh KV pools, fresh scheduler) on a runner that is
//     loaded once per process and shared by the configurations;
//   * warm-up (untimed): N requests of --warmup_prompt_len random tokens and
//     --warmup_tokens output tokens, run to completion on the same core;
//   * timed: N requests of --prompt_len random tokens (the same prompts for
//     every mode: fixed seeds), greedy, ignore_eos, max_tokens = output_len,
//     all submitted at t = 0; Step until every request finished. Output
//     tokens/s = N x output_len / wall time (vLLM's "output token throughput"
//     with request rate inf, prefill included). Decode tokens/s counts only the
//     steps after every request got its first token. --rounds R > 1 keeps N
//     in flight out of a pool of R x N requests (vLLM's --max-concurrency N);
//   * --repeats K: K timed runs per configuration, each on a fresh core,
//     interleaved with the other configurations of the same N; the fastest
//     is reported (the others' wall times are in the JSON).
//
// Depth policies: adaptive (the routers decide), mix (request k runs at fixed
// depth 1 + k mod Nr: equal shares of requests at depths 1..Nr) or fixedD.
// Vanilla runs once per N whatever the policies.
//
// Occupancy ("rows per shared-block call", decode-phase steps only):
//   * continuous depth-wise: rows of a shared-block call, mixed depths, =
//     sum(token_steps_per_depth) / sum(block_calls); per depth r,
//     token_steps_per_depth[r] / block_calls (rows at depth r in a call);
//   * depth-grouped / no depth awareness: recursion r of a step is one call
//     of the shared block on the rows at depth r, so rows per call = token
//     steps / calls, calls = depths with rows; per depth r, the rows of the
//     recursion-r call. No depth awareness counts the useful rows (the call
//     also computes the masked ones: every scheduled token);
//   * vanilla: one call of its whole body per step, rows = tokens.
//
// KV bytes per cached token: at the end of every step, bytes held by the KV
// pools (KvUsage::used_bytes_per_depth summed over the unique tables and every
// depth; block-granular, i.e. what memory really holds) and the tokens whose
// K/V are cached (per live request, the entries of its depth-1 table, which
// every token writes: prompt + generated tokens so far); summed over the
// steps of the timed run, bytes / tokens. "exact" counts table entries
// instead of blocks (no rounding to block_size), and "depth" restricts the
// bytes to the recursion (depth-pool) tables, the paper's cost model.
//
// Without --model_dir the binary hands over to tools/bench/bench_engine.py,
// which builds the models and runs every configuration: `./mor bench engine`.
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
#include <map>
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
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "scheduler/engine_core.h"
#include "scheduler/generation_sink.h"
#include "scheduler/kv_cache_manager.h"
#include "scheduler/scheduler.h"

ABSL_FLAG(std::string, model_dir, "",
          "MoR model directory. Without it the binary runs tools/bench/bench_engine.py "
          "(every configuration) with the other arguments.");
ABSL_FLAG(std::string, vanilla_model_dir, "",
          "vanilla model of the same dims with L = 2 + B x Nr layers (needed by mode vanilla)");
ABSL_FLAG(std::string, modes, "continuous_depthwise,depth_grouped,no_depth_awareness,vanilla",
          "comma list of continuous_depthwise | depth_grouped | no_depth_awareness | vanilla");
ABSL_FLAG(std::string, concurrency, "1,8,32,128", "concurrent requests N, comma separated");
ABSL_FLAG(int32_t, prompt_len, 32, "random prompt tokens per request");
ABSL_FLAG(int32_t, output_len, 32, "generated tokens per request (max_tokens, ignore_eos)");
ABSL_FLAG(std::string, output_len_by_concurrency, "",
          "per-N overrides of --output_len, e.g. '1:16'");
ABSL_FLAG(int32_t, rounds, 1,
          "requests = rounds x N: N submitted at once, then the next one whenever one finishes "
          "(N stay in flight until the pool runs dry); 1: N requests, run to completion");
ABSL_FLAG(int32_t, repeats, 1,
          "timed runs per configuration (fresh engine each, interleaved with the other "
          "configurations of the same N); the fastest is reported");
ABSL_FLAG(std::string, policy, "adaptive",
          "comma list of depth policies: adaptive | mix (request i: depth 1 + i mod Nr) | fixedD; "
          "mode vanilla ignores it and runs once per N");
ABSL_FLAG(std::string, dtype, "bfloat16", "float32 | bfloat16 | float16 (cuda only)");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(int32_t, threads, 2, "intra-op CPU threads (0: all cores)");
ABSL_FLAG(std::string, attention, "auto", "attention kernel: auto | sdpa (ModelRunnerOptions)");
ABSL_FLAG(int32_t, block_size, 16, "KV block size in tokens");
ABSL_FLAG(int32_t, max_num_batched_tokens, 2048, "scheduler step budget (tokens / block rows)");
ABSL_FLAG(int32_t, warmup_prompt_len, 8, "prompt tokens of the untimed warm-up requests");
ABSL_FLAG(int32_t, warmup_tokens, 4, "output tokens of the untimed warm-up requests (0: none)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the random prompts");
ABSL_FLAG(bool, json, false, "also print one JSON object per configuration (lines starting '{')");
ABSL_FLAG(std::string, label, "", "name of this run in the output");

namespace mor {
namespace {

using bench::ProcessCpuSeconds;
using bench::SecondsSince;

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Hand-over to the orchestrator when no --model_dir is given.

// ---------------------------------------------------------------------------
// Flags.

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

absl::StatusOr<int> OutputLenFor(int n) {
  int len = absl::GetFlag(FLAGS_output_len);
  for (absl::string_view item : absl::StrSplit(absl::GetFlag(FLAGS_output_len_by_concurrency), ',',
                                               absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, ':');
    int c = 0, l = 0;
    if (!absl::SimpleAtoi(kv.first, &c) || !absl::SimpleAtoi(kv.second, &l) || l <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--output_len_by_concurrency: bad item '",
                                                     std::string(item), "' (want N:LEN)"));
    }
    if (c == n) len = l;
  }
  return len;
}

// Depth policy of request i: adaptive, fixed D, or the mix 1 + i mod Nr.
struct PolicySpec {
  std::string name;
  int fixed = 0;  // > 0: fixed depth
  bool mix = false;
  DepthPolicy For(int i, int nr) const {
    if (mix) return DepthPolicy::Fixed(1 + i % nr);
    return fixed > 0 ? DepthPolicy::Fixed(fixed) : DepthPolicy::Adaptive();
  }
};

absl::StatusOr<PolicySpec> ParsePolicy(const std::string& text, int nr) {
  PolicySpec spec;
  spec.name = text;
  if (text == "adaptive") return spec;
  if (text == "mix") {
    spec.mix = true;
    return spec;
  }
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "fixed") && absl::SimpleAtoi(rest, &spec.fixed) &&
      spec.fixed >= 1 && spec.fixed <= nr) {
    return spec;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--policy '", text, "': expected adaptive, mix or fixed1..fixed", nr));
}

// ---------------------------------------------------------------------------
// Runners: loaded once, shared by the configurations' EngineCores.

// A ModelRunner that forwards to one it does not own (EngineCore owns its
// runner; the bench keeps one loaded model for many fresh cores).
class BorrowedRunner final : public ModelRunner {
 public:
  explicit BorrowedRunner(ModelRunner* runner) : runner_(runner) {}
  const ModelConfig& config() const override { return runner_->config(); }
  const KvCacheGeometry& kv_geometry() const override { return runner_->kv_geometry(); }
  std::string device() const override { return runner_->device(); }
  std::string dtype() const override { return runner_->dtype(); }
  absl::StatusOr<StepResult> Step(std::span<const SequenceChunk> chunks,
                                  KvBlockAllocator& allocator) override {
    return runner_->Step(chunks, allocator);
  }
  int32_t num_state_slots() const override { return runner_->num_state_slots(); }
  absl::StatusOr<DepthwiseStepResult> StepDepthwise(std::span<const DepthwiseGroup> groups,
                                                    KvBlockAllocator& allocator) override {
    return runner_->StepDepthwise(groups, allocator);
  }

 private:
  ModelRunner* runner_;
};

struct ModeSpec {
  std::string name;  // as in --modes
  BatchingMode mode = BatchingMode::kContinuousDepthwise;
  bool vanilla = false;
  bool depth_aware = true;
};

absl::StatusOr<ModeSpec> ParseMode(const std::string& name) {
  ModeSpec spec;
  spec.name = name;
  if (name == "vanilla") {
    spec.vanilla = true;
    spec.mode = BatchingMode::kDepthGrouped;  // plain continuous batching
    return spec;
  }
  absl::StatusOr<BatchingMode> mode = ParseBatchingMode(name);
  if (!mode.ok()) return mode.status();
  spec.mode = *mode;
  spec.depth_aware = *mode != BatchingMode::kNoDepthAwareness;
  return spec;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct LoadedRunner {
  std::unique_ptr<ModelRunner> runner;
  double load_seconds = 0;
};

absl::StatusOr<LoadedRunner> LoadRunner(const std::string& dir, bool depth_aware, int max_n,
                                        int max_tokens_per_seq) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile((std::filesystem::path(dir) / "config.json").string());
  if (!config.ok()) return config.status();
  const int block_size = absl::GetFlag(FLAGS_block_size);
  const int64_t levels = config->kv_mode == KvMode::kRecursiveSharing || config->is_vanilla()
                             ? 1
                             : config->num_recursions;
  // Every request at its worst case (every token at every depth), with room
  // for one partly filled block per table: no preemption in any mode.
  const int64_t per_table = CeilDiv(max_tokens_per_seq, block_size) + 1;
  ModelRunnerOptions options;
  options.model_dir = dir;
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.block_size = block_size;
  options.num_depth_blocks = max_n * levels * per_table + 16;
  options.num_unique_blocks = max_n * per_table + 16;
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.attention = absl::GetFlag(FLAGS_attention);
  options.num_state_slots =
      std::max<int32_t>(4096, absl::GetFlag(FLAGS_max_num_batched_tokens) + max_n);
  options.depth_aware = depth_aware;
  const auto start = Clock::now();
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = CreateTorchModelRunner(options);
  if (!runner.ok()) return runner.status();
  LoadedRunner out;
  out.runner = std::move(*runner);
  out.load_seconds = SecondsSince(start);
  return out;
}

// ---------------------------------------------------------------------------
// One configuration.

class CountingSink : public GenerationSink {
 public:
  void OnTokens(absl::Span<const GeneratedToken> tokens) override {
    for (const GeneratedToken& t : tokens) {
      ++num_tokens;
      depth_sum += t.depth;
    }
  }
  void OnFinished(const GenerationResult& r) override {
    finished = true;
    status = r.status;
  }
  int64_t num_tokens = 0;
  int64_t depth_sum = 0;
  bool finished = false;
  absl::Status status;
};

// Sums of per-step statistics over a set of steps.
struct StepSums {
  int64_t steps = 0;
  std::vector<int64_t> token_steps;     // per depth
  int64_t calls = 0;                    // shared-block calls (see the file comment)
  std::vector<int64_t> calls_at_depth;  // calls carrying rows at depth r
  int64_t scheduled_tokens = 0;
  double schedule = 0, model = 0, sample = 0, total = 0;
  double stage[3] = {0, 0, 0};
  // KV (per step, at its end): bytes held, and tokens cached.
  double kv_bytes = 0, kv_depth_bytes = 0, kv_exact_bytes = 0, kv_exact_depth_bytes = 0;
  double kv_tokens = 0;
  int64_t kv_peak_bytes = 0;
  int64_t preemptions = 0;

  void Add(const EngineStepStats& s, const Scheduler& scheduler, const KvCacheGeometry& geo,
           int nr) {
    ++steps;
    if (token_steps.size() < static_cast<size_t>(nr)) {
      token_steps.resize(nr, 0);
      calls_at_depth.resize(nr, 0);
    }
    const bool depthwise = s.mode == BatchingMode::kContinuousDepthwise;
    int64_t depths_with_rows = 0;
    for (size_t r = 0; r < s.token_steps_per_depth.size() && r < token_steps.size(); ++r) {
      token_steps[r] += s.token_steps_per_depth[r];
      depths_with_rows += s.token_steps_per_depth[r] > 0;
      // Depth-wise: one call carries every depth (block_calls is 1 when any
      // token recursed); depth-grouped: one call per depth with rows.
      if (s.token_steps_per_depth[r] > 0) calls_at_depth[r] += depthwise ? s.block_calls : 1;
    }
    calls += depthwise ? s.block_calls : depths_with_rows;
    scheduled_tokens += s.scheduled_tokens;
    schedule += s.schedule_seconds;
    model += s.model_seconds;
    sample += s.sample_seconds;
    total += s.total_seconds;
    for (int i = 0; i < 3; ++i) stage[i] += s.stage_seconds[i];
    preemptions += s.preemptions;
    int64_t bytes = 0, depth_bytes = 0;
    for (size_t r = 0; r < s.kv.used_bytes_per_depth.size(); ++r) {
      bytes += s.kv.used_bytes_per_depth[r];
      if (r > 0) depth_bytes += s.kv.used_bytes_per_depth[r];
    }
    kv_bytes += static_cast<double>(bytes);
    kv_depth_bytes += static_cast<double>(depth_bytes);
    kv_peak_bytes = std::max(kv_peak_bytes, bytes);
    const double unique_entry =
        geo.num_unique_layers > 0
            ? static_cast<double>(geo.bytes_per_unique_block()) / geo.block_size
            : 0.0;
    const double depth_entry = static_cast<double>(geo.bytes_per_depth_block()) / geo.block_size;
    for (const SequenceState* seq : scheduler.sequences()) {
      if (seq->kv.depths.empty()) continue;
      kv_tokens += seq->kv.depths[0].num_tokens;
      double d = 0;
      for (const KvTable& t : seq->kv.depths) d += t.num_tokens * depth_entry;
      kv_exact_depth_bytes += d;
      kv_exact_bytes += d + seq->kv.unique.num_tokens * unique_entry;
    }
  }
};

struct ConfigResult {
  ModeSpec mode;
  std::string policy;  // "-" for vanilla
  int n = 0;
  int output_len = 0;
  int64_t output_tokens = 0;
  double seconds = 0;  // timed run, submit to last finish
  double cpu_seconds = 0;
  double first_token_seconds = 0;  // until every request had its first token
  int64_t decode_tokens = 0;       // tokens sampled after that point
  double decode_seconds = 0;
  double warmup_seconds = 0;
  int64_t depth_sum = 0;  // sum of GeneratedToken::depth
  StepSums all, decode;
  bool ok = true;
  std::string error;

  double tok_s() const { return seconds > 0 ? output_tokens / seconds : 0; }
  double decode_tok_s() const { return decode_seconds > 0 ? decode_tokens / decode_seconds : 0; }
};

std::vector<int32_t> RandomPrompt(std::mt19937_64& rng, int len, int64_t vocab) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> out(len);
  for (int32_t& t : out) t = dist(rng);
  return out;
}

GenerationRequest MakeRequest(std::vector<int32_t> prompt, DepthPolicy policy, int max_tokens,
                              int i) {
  GenerationRequest request;
  request.request_id = absl::StrCat("bench-", i);
  request.prompt = std::move(prompt);
  request.policy = policy;
  request.max_tokens = max_tokens;
  request.ignore_eos = true;  // greedy: SamplingParams defaults
  return request;
}

absl::Status RunToCompletion(EngineCore& core) {
  for (int64_t guard = 0; core.has_work(); ++guard) {
    if (guard > 10000000) return absl::InternalError("engine did not finish");
    absl::StatusOr<bool> stepped = core.Step(absl::Now());
    if (!stepped.ok()) return stepped.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<ConfigResult> RunConfig(ModelRunner* runner, const ModeSpec& mode, int n,
                                       const PolicySpec& policy, int nr_of_policy) {
  ConfigResult res;
  res.mode = mode;
  res.policy = mode.vanilla ? "-" : policy.name;
  res.n = n;
  absl::StatusOr<int> output_len = OutputLenFor(n);
  if (!output_len.ok()) return output_len.status();
  res.output_len = *output_len;
  const int prompt_len = absl::GetFlag(FLAGS_prompt_len);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const int64_t vocab = runner->config().vocab_size;
  // A vanilla model has one "recursion"; it ignores depth policies.
  const int nr = runner->config().num_recursions;

  absl::StatusOr<std::unique_ptr<KvCacheManager>> kv =
      KvCacheManager::Create(runner->kv_geometry());
  if (!kv.ok()) return kv.status();
  SchedulerConfig config;
  config.mode = mode.mode;
  config.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  config.max_num_seqs = std::max(256, n);
  config.max_queued_requests = std::max(1024, 2 * n);
  EngineCore core(std::make_unique<BorrowedRunner>(runner), std::move(*kv), config, seed);
  const KvCacheGeometry geometry = runner->kv_geometry();
  auto policy_of = [&](int i) {
    return mode.vanilla ? DepthPolicy::Adaptive() : policy.For(i, nr_of_policy);
  };

  // Warm-up on the same core.
  const int warmup_tokens = absl::GetFlag(FLAGS_warmup_tokens);
  if (warmup_tokens > 0) {
    const auto start = Clock::now();
    std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
    std::vector<std::unique_ptr<CountingSink>> sinks;
    for (int i = 0; i < n; ++i) {
      sinks.push_back(std::make_unique<CountingSink>());
      absl::Status s = core.Submit(
          1000000 + i,
          MakeRequest(RandomPrompt(rng, std::max(1, absl::GetFlag(FLAGS_warmup_prompt_len)), vocab),
                      policy_of(i), warmup_tokens, i),
          sinks.back().get(), absl::Now());
      if (!s.ok()) return s;
    }
    if (absl::Status s = RunToCompletion(core); !s.ok()) return s;
    res.warmup_seconds = SecondsSince(start);
  }

  // Timed run: the same prompts for every mode and model. A pool of
  // rounds x N requests (request k: policy of index k); N are submitted at
  // once and, with --rounds > 1, the next one of the pool as soon as one
  // finishes, so that N stay in flight until the pool runs dry.
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const int total = n * rounds;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  for (int k = 0; k < total; ++k) prompts.push_back(RandomPrompt(rng, prompt_len, vocab));
  std::vector<std::unique_ptr<CountingSink>> sinks;
  for (int k = 0; k < total; ++k) sinks.push_back(std::make_unique<CountingSink>());
  int next = 0;           // next request of the pool
  int64_t collected = 0;  // finished requests already replaced
  auto submit_next = [&] {
    const int k = next++;
    return core.Submit(k + 1, MakeRequest(prompts[k], policy_of(k), res.output_len, k),
                       sinks[k].get(), absl::Now());
  };
  const double cpu_start = ProcessCpuSeconds();
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    if (absl::Status s = submit_next(); !s.ok()) return s;
  }
  bool decoding = false;
  int64_t tokens_at_decode_start = 0;
  Clock::time_point decode_start;
  auto tokens_so_far = [&] {
    int64_t t = 0;
    for (const auto& sink : sinks) t += sink->num_tokens;
    return t;
  };
  for (int64_t guard = 0; core.has_work(); ++guard) {
    if (guard > 10000000) return absl::InternalError("engine did not finish");
    absl::StatusOr<bool> stepped = core.Step(absl::Now());
    if (!stepped.ok()) return stepped.status();
    if (!*stepped) continue;
    const EngineStepStats& s = core.last_step();
    res.all.Add(s, core.scheduler(), geometry, nr);
    if (decoding) res.decode.Add(s, core.scheduler(), geometry, nr);
    if (!decoding) {
      bool all_started = true;
      for (int i = 0; i < n; ++i) all_started &= sinks[i]->num_tokens > 0;
      if (all_started) {
        decoding = true;
        decode_start = Clock::now();
        res.first_token_seconds = std::chrono::duration<double>(decode_start - start).count();
        tokens_at_decode_start = tokens_so_far();
      }
    }
    if (next < total) {
      int64_t finished = 0;
      for (int k = 0; k < next; ++k) finished += sinks[k]->finished;
      for (; collected < finished && next < total; ++collected) {
        if (absl::Status st = submit_next(); !st.ok()) return st;
      }
    }
  }
  const auto end = Clock::now();
  res.seconds = std::chrono::duration<double>(end - start).count();
  res.cpu_seconds = ProcessCpuSeconds() - cpu_start;
  if (decoding) res.decode_seconds = std::chrono::duration<double>(end - decode_start).count();
  for (const auto& sink : sinks) {
    if (!sink->finished || !sink->status.ok()) {
      return absl::InternalError(
          absl::StrCat("a request did not finish cleanly: ", sink->status.ToString()));
    }
    res.output_tokens += sink->num_tokens;
    res.depth_sum += sink->depth_sum;
  }
  res.decode_tokens = res.output_tokens - tokens_at_decode_start;
  return res;
}

// ---------------------------------------------------------------------------
// Output.

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

std::string F(double v, int digits = 4) { return absl::StrFormat("%.*f", digits, v); }

std::string IntList(const std::vector<int64_t>& v) { return absl::StrJoin(v, ","); }

// Rows at depth r per shared-block call (see the file comment): depth-wise,
// token steps at r / all block calls (the depth-r part of a mixed call; the
// parts sum to the rows per call); depth-grouped, token steps at r / steps
// (the rows of the recursion-r call, 0 in steps where it did not run).
std::vector<double> RowsPerCallAtDepth(const StepSums& s, bool depthwise) {
  std::vector<double> out;
  const int64_t denom = depthwise ? s.calls : s.steps;
  for (size_t r = 0; r < s.token_steps.size(); ++r) {
    out.push_back(denom > 0 ? static_cast<double>(s.token_steps[r]) / denom : 0);
  }
  return out;
}

double RowsPerCall(const StepSums& s) {
  int64_t rows = 0;
  for (int64_t v : s.token_steps) rows += v;
  return s.calls > 0 ? static_cast<double>(rows) / s.calls : 0;
}

std::string StepSumsJson(const StepSums& s, bool depthwise) {
  std::vector<std::string> per_depth;
  for (double v : RowsPerCallAtDepth(s, depthwise)) per_depth.push_back(F(v, 3));
  const double tokens = std::max(1.0, s.kv_tokens);
  return absl::StrCat(
      "{\"steps\":", s.steps, ",\"token_steps\":[", IntList(s.token_steps), "],\"calls\":", s.calls,
      ",\"calls_at_depth\":[", IntList(s.calls_at_depth), "]",
      ",\"scheduled_tokens\":", s.scheduled_tokens, ",\"rows_per_call\":", F(RowsPerCall(s), 3),
      ",\"rows_per_call_at_depth\":[", absl::StrJoin(per_depth, ","),
      "],\"seconds\":{\"schedule\":", F(s.schedule, 6), ",\"model\":", F(s.model, 6),
      ",\"sample\":", F(s.sample, 6), ",\"stage\":[", F(s.stage[0], 6), ",", F(s.stage[1], 6), ",",
      F(s.stage[2], 6), "],\"total\":", F(s.total, 6),
      "},\"kv\":{\"bytes_per_token\":", F(s.kv_bytes / tokens, 1),
      ",\"depth_bytes_per_token\":", F(s.kv_depth_bytes / tokens, 1),
      ",\"exact_bytes_per_token\":", F(s.kv_exact_bytes / tokens, 1),
      ",\"exact_depth_bytes_per_token\":", F(s.kv_exact_depth_bytes / tokens, 1),
      ",\"mean_tokens\":", F(s.kv_tokens / std::max<int64_t>(1, s.steps), 1),
      ",\"mean_bytes\":", F(s.kv_bytes / std::max<int64_t>(1, s.steps), 0),
      ",\"peak_bytes\":", s.kv_peak_bytes, "},\"preemptions\":", s.preemptions, "}");
}

struct RunInfo {
  std::string label, model_dir, vanilla_dir, model_kind, vanilla_kind, device, dtype, policies;
  int nr = 0, block_layers = 0, num_layers = 0, vanilla_layers = 0, threads = 0;
  int prompt_len = 0;
};

std::string ToJson(const RunInfo& info, const ConfigResult& r, double load_seconds) {
  return absl::StrCat(
      "{\"bench\":\"engine\",\"label\":\"", JsonEscape(info.label), "\",\"model_dir\":\"",
      JsonEscape(r.mode.vanilla ? info.vanilla_dir : info.model_dir), "\",\"model\":\"",
      JsonEscape(r.mode.vanilla ? info.vanilla_kind : info.model_kind), "\",\"nr\":", info.nr,
      ",\"block_layers\":", info.block_layers,
      ",\"num_layers\":", r.mode.vanilla ? info.vanilla_layers : info.num_layers, ",\"mode\":\"",
      r.mode.name, "\",\"policy\":\"", r.policy, "\",\"device\":\"", info.device, "\",\"dtype\":\"",
      info.dtype, "\",\"threads\":", info.threads, ",\"n\":", r.n,
      ",\"prompt_len\":", info.prompt_len, ",\"output_len\":", r.output_len,
      ",\"rounds\":", std::max(1, absl::GetFlag(FLAGS_rounds)),
      ",\"output_tokens\":", r.output_tokens, ",\"seconds\":", F(r.seconds, 6),
      ",\"cpu_seconds\":", F(r.cpu_seconds, 6), ",\"tok_s\":", F(r.tok_s(), 3),
      ",\"first_token_seconds\":", F(r.first_token_seconds, 6),
      ",\"decode_tokens\":", r.decode_tokens, ",\"decode_seconds\":", F(r.decode_seconds, 6),
      ",\"decode_tok_s\":", F(r.decode_tok_s(), 3), ",\"mean_output_depth\":",
      F(r.output_tokens > 0 ? static_cast<double>(r.depth_sum) / r.output_tokens : 0, 4),
      ",\"warmup_seconds\":", F(r.warmup_seconds, 3), ",\"load_seconds\":", F(load_seconds, 3),
      ",\"all\":", StepSumsJson(r.all, r.mode.mode == BatchingMode::kContinuousDepthwise),
      ",\"decode\":", StepSumsJson(r.decode, r.mode.mode == BatchingMode::kContinuousDepthwise),
      "}");
}

std::string KindOf(const ModelConfig& cfg) {
  if (cfg.is_vanilla()) return absl::StrCat("vanilla L=", cfg.num_hidden_layers);
  return absl::StrCat(std::string(SharingStrategyName(cfg.sharing)), " Nr=", cfg.num_recursions,
                      " L=", cfg.num_hidden_layers, " ",
                      std::string(RouterTypeName(cfg.router_type)), " ",
                      std::string(KvModeName(cfg.kv_mode)));
}

absl::Status Run() {
  RunInfo info;
  info.model_dir = absl::GetFlag(FLAGS_model_dir);
  info.vanilla_dir = absl::GetFlag(FLAGS_vanilla_model_dir);
  info.label = absl::GetFlag(FLAGS_label);
  info.prompt_len = absl::GetFlag(FLAGS_prompt_len);
  info.threads = absl::GetFlag(FLAGS_threads);
  if (info.prompt_len <= 0) return absl::InvalidArgumentError("--prompt_len must be positive");
  if (absl::GetFlag(FLAGS_block_size) <= 0) {
    return absl::InvalidArgumentError("--block_size must be positive");
  }
  absl::StatusOr<std::vector<int>> ns =
      ParseIntList(absl::GetFlag(FLAGS_concurrency), "--concurrency");
  if (!ns.ok()) return ns.status();
  std::vector<ModeSpec> modes;
  for (absl::string_view m :
       absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipWhitespace())) {
    absl::StatusOr<ModeSpec> spec = ParseMode(std::string(m));
    if (!spec.ok()) return spec.status();
    modes.push_back(*spec);
  }
  if (modes.empty()) return absl::InvalidArgumentError("--modes is empty");

  absl::StatusOr<ModelConfig> cfg =
      ModelConfig::FromFile((std::filesystem::path(info.model_dir) / "config.json").string());
  if (!cfg.ok()) return cfg.status();
  info.nr = cfg->num_recursions;
  info.num_layers = static_cast<int>(cfg->num_hidden_layers);
  info.model_kind = KindOf(*cfg);
  info.block_layers = cfg->MakeLayerPlan().block_layers;
  std::vector<PolicySpec> policies;
  for (absl::string_view p :
       absl::StrSplit(absl::GetFlag(FLAGS_policy), ',', absl::SkipWhitespace())) {
    absl::StatusOr<PolicySpec> policy = ParsePolicy(std::string(p), info.nr);
    if (!policy.ok()) return policy.status();
    policies.push_back(*policy);
  }
  if (policies.empty()) return absl::InvalidArgumentError("--policy is empty");
  info.policies = absl::GetFlag(FLAGS_policy);
  if (info.label.empty()) info.label = std::filesystem::path(info.model_dir).filename().string();

  int max_n = *std::max_element(ns->begin(), ns->end());
  int max_len = info.prompt_len + absl::GetFlag(FLAGS_output_len);
  for (int n : *ns) {
    absl::StatusOr<int> len = OutputLenFor(n);
    if (!len.ok()) return len.status();
    max_len = std::max(max_len, info.prompt_len + *len);
  }
  max_len = std::max(max_len,
                     absl::GetFlag(FLAGS_warmup_prompt_len) + absl::GetFlag(FLAGS_warmup_tokens));

  // Runners: MoR depth-aware (depth-wise, depth-grouped), MoR masked (no
  // depth awareness), vanilla.
  std::map<std::string, LoadedRunner> runners;
  for (const ModeSpec& m : modes) {
    const std::string key = m.vanilla ? "vanilla" : m.depth_aware ? "mor" : "mor_masked";
    if (runners.count(key)) continue;
    if (m.vanilla && info.vanilla_dir.empty()) {
      return absl::InvalidArgumentError("mode vanilla needs --vanilla_model_dir");
    }
    absl::StatusOr<LoadedRunner> loaded =
        LoadRunner(m.vanilla ? info.vanilla_dir : info.model_dir, m.depth_aware, max_n, max_len);
    if (!loaded.ok()) return loaded.status();
    if (m.vanilla) {
      const ModelConfig& vc = loaded->runner->config();
      if (!vc.is_vanilla()) {
        return absl::InvalidArgumentError(
            absl::StrCat(info.vanilla_dir, " is not a vanilla model"));
      }
      info.vanilla_kind = KindOf(vc);
      info.vanilla_layers = static_cast<int>(vc.num_hidden_layers);
      if (vc.hidden_size != cfg->hidden_size || vc.intermediate_size != cfg->intermediate_size ||
          vc.num_attention_heads != cfg->num_attention_heads ||
          vc.num_key_value_heads != cfg->num_key_value_heads || vc.vocab_size != cfg->vocab_size) {
        std::fprintf(stderr, "mor_bench_engine: warning: the vanilla model's dims differ\n");
      }
    }
    info.device = loaded->runner->device();
    info.dtype = loaded->runner->dtype();
    runners[key] = std::move(*loaded);
  }

  const bool json = absl::GetFlag(FLAGS_json);
  std::printf("mor_bench_engine %s: %s%s, device %s dtype %s, policy %s, threads %d, prompt %d\n",
              info.label.c_str(), info.model_kind.c_str(),
              info.vanilla_kind.empty() ? "" : absl::StrCat(" vs ", info.vanilla_kind).c_str(),
              info.device.c_str(), info.dtype.c_str(), info.policies.c_str(), info.threads,
              info.prompt_len);
  std::printf("%-9s %-22s %4s %4s %8s %9s %9s %6s %5s %6s %-22s %9s %7s %6s\n", "policy", "mode",
              "N", "out", "seconds", "tok/s", "dec tok/s", "steps", "cpu%", "rows", "rows@depth",
              "KV B/tok", "KVexact", "depth");
  std::fflush(stdout);
  // N-major; per N and repeat the vanilla model once and each policy's MoR
  // modes, so that the repeats of a configuration are spread over time and
  // a burst of load from other processes does not hit one mode only. The
  // fastest repeat of each configuration is reported.
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));
  for (int n : *ns) {
    std::vector<ConfigResult> best;
    std::vector<std::vector<double>> walls;  // per configuration, every repeat
    std::vector<std::string> loaded_keys;
    for (int rep = 0; rep < repeats; ++rep) {
      int c = 0;
      for (size_t p = 0; p < policies.size(); ++p) {
        for (const ModeSpec& m : modes) {
          if (m.vanilla && p > 0) continue;
          const std::string key = m.vanilla ? "vanilla" : m.depth_aware ? "mor" : "mor_masked";
          LoadedRunner& loaded = runners[key];
          absl::StatusOr<ConfigResult> r =
              RunConfig(loaded.runner.get(), m, n, policies[p], info.nr);
          if (!r.ok()) {
            return absl::Status(
                r.status().code(),
                absl::StrCat(m.name, " N=", n, " ", policies[p].name, ": ", r.status().message()));
          }
          std::vector<std::string> at_depth;
          for (double v :
               RowsPerCallAtDepth(r->decode, m.mode == BatchingMode::kContinuousDepthwise)) {
            at_depth.push_back(absl::StrFormat("%.1f", v));
          }
          const double tokens = std::max(1.0, r->all.kv_tokens);
          std::printf(
              "%-9s %-22s %4d %4d %8.3f %9.1f %9.1f %6lld %5.0f %6.1f %-22s %9.0f %7.0f %6.2f%s\n",
              r->policy.c_str(), m.name.c_str(), n, r->output_len, r->seconds, r->tok_s(),
              r->decode_tok_s(), static_cast<long long>(r->all.steps),
              r->seconds > 0 ? 100.0 * r->cpu_seconds / r->seconds : 0.0, RowsPerCall(r->decode),
              absl::StrJoin(at_depth, "/").c_str(), r->all.kv_bytes / tokens,
              r->all.kv_exact_bytes / tokens,
              r->output_tokens > 0 ? static_cast<double>(r->depth_sum) / r->output_tokens : 0,
              repeats > 1 ? absl::StrCat("  (repeat ", rep + 1, ")").c_str() : "");
          std::fflush(stdout);
          if (rep == 0) {
            best.push_back(*r);
            walls.push_back({r->seconds});
            loaded_keys.push_back(key);
          } else {
            walls[c].push_back(r->seconds);
            if (r->seconds < best[c].seconds) best[c] = *r;
          }
          ++c;
        }
      }
    }
    if (json) {
      for (size_t c = 0; c < best.size(); ++c) {
        std::string line = ToJson(info, best[c], runners[loaded_keys[c]].load_seconds);
        std::vector<std::string> w;
        for (double v : walls[c]) w.push_back(F(v, 6));
        line.insert(line.size() - 1, absl::StrCat(",\"repeats\":", repeats, ",\"repeat_seconds\":[",
                                                  absl::StrJoin(w, ","), "]"));
        std::printf("%s\n", line.c_str());
      }
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mor

int main(int argc, char** argv) {
  if (!mor::bench::HasFlag(argc, argv, "model_dir"))
    mor::bench::ExecOrchestrator(argc, argv, "bench_engine.py", "mor_bench_engine");
  absl::SetProgramUsageMessage(
      "Output tokens/s, per-recursion batch occupancy and KV bytes per token of the MoR engine\n"
      "in every batching mode vs a vanilla model, N concurrent requests in-process.\n"
      "  mor_bench_engine --model_dir MOR --vanilla_model_dir VANILLA [--policy mix] [--json]\n"
      "Without --model_dir: runs tools/bench/bench_engine.py (all configurations, tables).");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "mor_bench_engine: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  absl::Status status = mor::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "mor_bench_engine: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

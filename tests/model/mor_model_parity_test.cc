// Parity of the LibTorch engine with the PyTorch reference (and, for vanilla
// models, HF transformers) on the fixture matrix of
// tools/reference/make_parity_fixtures.py: every sharing strategy x router
// type x KV mode, adaptive and every fixed depth; full prefill, chunked
// prefill, token-by-token decode through the paged cache, and batches of
// several sequences.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "model/simple_block_allocator.h"
#include "tests/model/parity_fixtures.h"

namespace mor {
namespace {

using testing::LoadParityManifest;
using testing::ParityCase;
using testing::ParityExpectations;

#ifndef MOR_PARITY_DEVICE
#define MOR_PARITY_DEVICE "cpu"
#endif

constexpr float kFp32Tolerance = 1e-4f;
const char* const kDevice = MOR_PARITY_DEVICE;

DepthPolicy PolicyFromName(const std::string& name) {
  absl::string_view rest = name;
  int depth = 0;
  if (absl::ConsumePrefix(&rest, "fixed") && absl::SimpleAtoi(rest, &depth)) {
    return DepthPolicy::Fixed(depth);
  }
  return DepthPolicy::Adaptive();
}

struct SequenceRun {
  std::vector<float> logits;  // [n, vocab]
  std::vector<int32_t> depths;
  std::vector<float> scores;  // [n, Nr]
};

struct Engine {
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<SimpleBlockAllocator> allocator;
};

Engine MakeEngine(const ParityCase& c, const std::string& dtype = "float32", int32_t block_size = 4,
                  const std::string& attention = "auto", bool depth_aware = true) {
  ModelRunnerOptions options;
  options.attention = attention;
  options.depth_aware = depth_aware;
  options.model_dir = c.model_dir;
  options.device = kDevice;
  options.dtype = dtype;
  options.block_size = block_size;
  options.num_depth_blocks = 512;
  options.num_threads = 2;
  auto runner = CreateTorchModelRunner(options);
  EXPECT_TRUE(runner.ok()) << c.name << ": " << runner.status();
  Engine engine;
  if (!runner.ok()) return engine;
  engine.runner = std::move(*runner);
  engine.allocator = std::make_unique<SimpleBlockAllocator>(engine.runner->kv_geometry());
  return engine;
}

SequenceKv NewSequenceKv(const ModelRunner& runner) {
  SequenceKv kv;
  kv.depths.resize(runner.kv_geometry().num_depth_levels);
  return kv;
}

// Runs several sequences side by side, each in chunks of its own size (one
// Step per round, every unfinished sequence in it), collecting all logits.
std::vector<SequenceRun> RunBatched(Engine& engine, const std::vector<std::vector<int32_t>>& seqs,
                                    const std::vector<DepthPolicy>& policies,
                                    const std::vector<int>& chunk_sizes) {
  const int nr = engine.runner->config().num_recursions;
  const bool has_router = engine.runner->config().has_router();
  std::vector<SequenceRun> runs(seqs.size());
  std::vector<SequenceKv> kvs;
  for (size_t s = 0; s < seqs.size(); ++s) kvs.push_back(NewSequenceKv(*engine.runner));
  std::vector<size_t> done(seqs.size(), 0);
  while (true) {
    std::vector<SequenceChunk> chunks;
    std::vector<size_t> owner;
    for (size_t s = 0; s < seqs.size(); ++s) {
      if (done[s] >= seqs[s].size()) continue;
      const size_t n = std::min<size_t>(chunk_sizes[s], seqs[s].size() - done[s]);
      SequenceChunk chunk;
      chunk.tokens = std::span<const int32_t>(seqs[s].data() + done[s], n);
      chunk.start_position = static_cast<int32_t>(done[s]);
      chunk.policy = policies[s];
      chunk.kv = &kvs[s];
      chunk.logits = LogitsRequest::kAll;
      chunks.push_back(chunk);
      owner.push_back(s);
    }
    if (chunks.empty()) break;
    auto result = engine.runner->Step(chunks, *engine.allocator);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return runs;
    size_t token_base = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      SequenceRun& run = runs[owner[i]];
      const size_t n = chunks[i].tokens.size();
      const int64_t v = result->vocab_size;
      const float* rows = result->logits.data() + result->logits_row[i] * v;
      run.logits.insert(run.logits.end(), rows, rows + n * v);
      for (size_t t = 0; t < n; ++t) {
        run.depths.push_back(result->token_depth[token_base + t]);
        if (has_router) {
          const float* sc = result->router_scores.data() + (token_base + t) * nr;
          run.scores.insert(run.scores.end(), sc, sc + nr);
        }
      }
      token_base += n;
      done[owner[i]] += n;
    }
  }
  for (SequenceKv& kv : kvs) engine.allocator->Release(kv);
  return runs;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

void ExpectScoresMatch(const std::vector<float>& got, const std::vector<float>& want,
                       const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << where;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << where << " score " << i << " should not be evaluated";
    } else {
      EXPECT_NEAR(got[i], want[i], kFp32Tolerance) << where << " score " << i;
    }
  }
}

void ExpectRunMatches(const ParityCase& c, const ParityExpectations& expected,
                      const std::string& policy, int seq, const SequenceRun& run,
                      const std::string& mode) {
  const std::string where = absl::StrCat(c.name, " ", policy, " seq ", seq, " ", mode);
  EXPECT_LE(MaxAbsDiff(run.logits, expected.Logits(policy, seq)), kFp32Tolerance) << where;
  EXPECT_EQ(run.depths, expected.Depths(policy, seq)) << where;
  if (c.sharing != "none") ExpectScoresMatch(run.scores, expected.Scores(policy, seq), where);
}

class ParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(kDevice) != "cpu") {
      ModelRunnerOptions probe;
      probe.device = kDevice;
      auto runner = CreateTorchModelRunner(probe);
      if (runner.status().code() == absl::StatusCode::kFailedPrecondition) {
        GTEST_SKIP() << kDevice << " is not available: " << runner.status();
      }
    }
    auto cases = LoadParityManifest();
    ASSERT_TRUE(cases.ok()) << cases.status();
    cases_ = *cases;
    ASSERT_GE(cases_.size(), 17u) << "the matrix has 16 MoR cases plus vanilla";
  }
  std::vector<ParityCase> cases_;
};

// One forward over the whole sequence, then 5-token chunks, then one token
// at a time: all three must equal the reference's full forward.
TEST_F(ParityTest, PrefillChunkedAndDecodeMatchReference) {
  for (const ParityCase& c : cases_) {
    Engine engine = MakeEngine(c);
    ASSERT_NE(engine.runner, nullptr);
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (const std::string& policy : c.policies) {
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        const std::vector<int32_t> tokens = expected->Tokens(seq);
        const int n = static_cast<int>(tokens.size());
        for (int chunk : {n, 5, 1}) {
          auto runs = RunBatched(engine, {tokens}, {PolicyFromName(policy)}, {chunk});
          ExpectRunMatches(c, *expected, policy, seq, runs[0], absl::StrCat("chunk ", chunk));
        }
      }
      // Every block went back to the pool.
      EXPECT_EQ(engine.allocator->num_free(KvPool::kDepth),
                engine.runner->kv_geometry().num_depth_blocks - 1);
    }
  }
}

// All sequences of a case in one batch, each with a different policy and a
// different chunk size (prefill chunks and decode tokens mixed in one step).
void ExpectMixedBatchesMatch(const std::vector<ParityCase>& cases, const std::string& attention,
                             bool depth_aware = true) {
  for (const ParityCase& c : cases) {
    Engine engine = MakeEngine(c, "float32", /*block_size=*/3, attention, depth_aware);
    ASSERT_NE(engine.runner, nullptr);
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (size_t rotate = 0; rotate < c.policies.size(); ++rotate) {
      std::vector<std::vector<int32_t>> seqs;
      std::vector<DepthPolicy> policies;
      std::vector<std::string> policy_names;
      std::vector<int> chunk_sizes;
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        seqs.push_back(expected->Tokens(seq));
        policy_names.push_back(c.policies[(seq + rotate) % c.policies.size()]);
        policies.push_back(PolicyFromName(policy_names.back()));
        chunk_sizes.push_back(seq == 0 ? 1 : 4 * seq + 3);
      }
      auto runs = RunBatched(engine, seqs, policies, chunk_sizes);
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        ExpectRunMatches(c, *expected, policy_names[seq], seq, runs[seq],
                         absl::StrCat("batched, attention ", attention));
      }
    }
  }
}

TEST_F(ParityTest, MixedBatchMatchesReference) { ExpectMixedBatchesMatch(cases_, "auto"); }

// No depth awareness (every token through every recursion, results masked)
// computes more but must give the same outputs.
TEST_F(ParityTest, MixedBatchMatchesReferenceWithoutDepthAwareness) {
  ExpectMixedBatchesMatch(cases_, "auto", /*depth_aware=*/false);
}

// The gather + SDPA attention path (the one CUDA uses) on the CPU too.
TEST_F(ParityTest, MixedBatchMatchesReferenceWithSdpaAttention) {
  ExpectMixedBatchesMatch(cases_, "sdpa");
}

// Continuous depth-wise execution: all sequences of a case in flight at
// once, each entering in chunks of its own size with its own policy, tokens
// of different sequences at different recursion depths sharing block calls.
std::vector<SequenceRun> RunDepthwise(Engine& engine, const std::vector<std::vector<int32_t>>& seqs,
                                      const std::vector<DepthPolicy>& policies,
                                      const std::vector<int>& chunk_sizes, int64_t* mixed_calls) {
  struct InFlight {
    int32_t start = 0;
    std::vector<int32_t> slots;
    std::vector<uint8_t> active;
    std::vector<int32_t> taken;  // recursions taken per token
    int32_t depth = 0;           // last recursion taken
  };
  std::vector<SequenceRun> runs(seqs.size());
  std::vector<SequenceKv> kvs;
  for (size_t s = 0; s < seqs.size(); ++s) kvs.push_back(NewSequenceKv(*engine.runner));
  std::vector<std::optional<InFlight>> flight(seqs.size());
  std::vector<size_t> entered(seqs.size(), 0);
  std::vector<int32_t> free_slots;
  for (int32_t i = engine.runner->num_state_slots() - 1; i >= 0; --i) free_slots.push_back(i);
  for (int guard = 0; guard < 10000; ++guard) {
    std::vector<DepthwiseGroup> groups;
    std::vector<size_t> owner;
    for (size_t s = 0; s < seqs.size(); ++s) {
      DepthwiseGroup group;
      group.kv = &kvs[s];
      group.policy = policies[s];
      group.logits = LogitsRequest::kAll;
      if (flight[s]) {
        group.start_position = flight[s]->start;
        group.slots = flight[s]->slots;
        group.active = flight[s]->active;
        group.depth = flight[s]->depth + 1;
      } else if (entered[s] < seqs[s].size()) {
        const size_t n = std::min<size_t>(chunk_sizes[s], seqs[s].size() - entered[s]);
        InFlight f;
        f.start = static_cast<int32_t>(entered[s]);
        for (size_t i = 0; i < n; ++i) {
          f.slots.push_back(free_slots.back());
          free_slots.pop_back();
        }
        f.active.assign(n, 1);
        f.taken.assign(n, 0);
        flight[s] = f;
        entered[s] += n;
        group.enter = true;
        group.start_position = f.start;
        group.tokens = std::span<const int32_t>(seqs[s].data() + f.start, n);
        group.slots = flight[s]->slots;
        group.depth = 1;
      } else {
        continue;
      }
      groups.push_back(group);
      owner.push_back(s);
    }
    if (groups.empty()) break;
    std::set<int32_t> depths_in_step;
    for (const DepthwiseGroup& g : groups) depths_in_step.insert(g.depth);
    auto result = engine.runner->StepDepthwise(groups, *engine.allocator);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return runs;
    if (depths_in_step.size() > 1 && result->block_calls == 1) ++*mixed_calls;
    for (size_t k = 0; k < groups.size(); ++k) {
      InFlight& f = *flight[owner[k]];
      const DepthwiseGroupResult& out = result->groups[k];
      for (size_t i = 0; i < f.slots.size(); ++i) {
        if (groups[k].enter || f.active[i]) f.taken[i] = groups[k].depth;
      }
      f.depth = groups[k].depth;
      f.active = out.continues;
      if (!out.exited) continue;
      SequenceRun& run = runs[owner[k]];
      const int64_t v = result->vocab_size;
      const float* rows = result->logits.data() + out.logits_row * v;
      run.logits.insert(run.logits.end(), rows, rows + f.slots.size() * v);
      run.depths.insert(run.depths.end(), f.taken.begin(), f.taken.end());
      free_slots.insert(free_slots.end(), f.slots.begin(), f.slots.end());
      flight[owner[k]].reset();
    }
  }
  for (SequenceKv& kv : kvs) engine.allocator->Release(kv);
  return runs;
}

TEST_F(ParityTest, ContinuousDepthwiseMatchesReference) {
  int64_t mixed_calls = 0;
  for (const ParityCase& c : cases_) {
    Engine engine = MakeEngine(c, "float32", /*block_size=*/3);
    ASSERT_NE(engine.runner, nullptr);
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (size_t rotate = 0; rotate < c.policies.size(); ++rotate) {
      std::vector<std::vector<int32_t>> seqs;
      std::vector<DepthPolicy> policies;
      std::vector<std::string> names;
      std::vector<int> chunk_sizes;
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        seqs.push_back(expected->Tokens(seq));
        names.push_back(c.policies[(seq + rotate) % c.policies.size()]);
        policies.push_back(PolicyFromName(names.back()));
        chunk_sizes.push_back(seq == 0 ? 1 : 3 * seq + 2);
      }
      auto runs = RunDepthwise(engine, seqs, policies, chunk_sizes, &mixed_calls);
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        const std::string where = absl::StrCat(c.name, " ", names[seq], " seq ", seq, " depthwise");
        EXPECT_LE(MaxAbsDiff(runs[seq].logits, expected->Logits(names[seq], seq)), kFp32Tolerance)
            << where;
        EXPECT_EQ(runs[seq].depths, expected->Depths(names[seq], seq)) << where;
      }
    }
    EXPECT_EQ(engine.allocator->num_free(KvPool::kDepth),
              engine.runner->kv_geometry().num_depth_blocks - 1);
  }
  // Tokens at different depths did share single block calls.
  EXPECT_GT(mixed_calls, 0);
}

// Vanilla checkpoints in plain HF Llama naming equal HF transformers.
TEST_F(ParityTest, VanillaMatchesHfTransformers) {
  int checked = 0;
  for (const ParityCase& c : cases_) {
    if (!c.has_hf_logits) continue;
    Engine engine = MakeEngine(c);
    ASSERT_NE(engine.runner, nullptr);
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (int seq = 0; seq < c.num_sequences; ++seq) {
      const std::vector<int32_t> tokens = expected->Tokens(seq);
      for (int chunk : {static_cast<int>(tokens.size()), 1}) {
        auto runs = RunBatched(engine, {tokens}, {DepthPolicy::Adaptive()}, {chunk});
        EXPECT_LE(MaxAbsDiff(runs[0].logits, expected->Logits("hf", seq)), kFp32Tolerance)
            << c.name << " seq " << seq << " chunk " << chunk;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// bf16 compute against the fp32 reference, at every fixed depth (adaptive
// routing is excluded: a router score within bf16 rounding of the threshold
// may legitimately send a token elsewhere). bf16 keeps 8 significant bits and
// these random models amplify rounding differently (up to ~12% of the logit
// scale for the reference itself), so the bound is relative to the PyTorch
// reference's own bf16 error on the same input: the engine may be at most
// twice as far from fp32 as the reference in bf16 is (max and mean error),
// plus 1% / 0.2% of the logit scale. A wrong computation (a missing norm or
// gate, a wrong cache entry) is off by the logit scale itself.
TEST_F(ParityTest, Bf16WithinToleranceOfFp32Reference) {
  float worst_ratio = 0;
  for (const ParityCase& c : cases_) {
    Engine engine = MakeEngine(c, "bfloat16");
    ASSERT_NE(engine.runner, nullptr);
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (const std::string& policy : c.policies) {
      if (policy == "adaptive" && c.sharing != "none") continue;
      for (int seq = 0; seq < c.num_sequences; ++seq) {
        const std::vector<int32_t> tokens = expected->Tokens(seq);
        for (int chunk : {static_cast<int>(tokens.size()), 1}) {
          auto runs = RunBatched(engine, {tokens}, {PolicyFromName(policy)}, {chunk});
          const std::vector<float> want = expected->Logits(policy, seq);
          ASSERT_EQ(runs[0].logits.size(), want.size());
          float scale = 0;
          double mean_error = 0;
          for (size_t i = 0; i < want.size(); ++i) {
            scale = std::max(scale, std::abs(want[i]));
            mean_error += std::abs(want[i] - runs[0].logits[i]);
          }
          mean_error /= static_cast<double>(want.size());
          const float max_error = MaxAbsDiff(runs[0].logits, want);
          worst_ratio = std::max(worst_ratio, max_error / scale);
          const std::string where =
              absl::StrCat(c.name, " ", policy, " seq ", seq, " chunk ", chunk);
          const std::vector<float> reference_error = expected->Bf16Error(policy, seq);
          ASSERT_EQ(reference_error.size(), 2u) << where;
          EXPECT_LE(max_error, 2.0f * reference_error[0] + 0.01f * scale) << where;
          EXPECT_LE(mean_error, 2.0 * reference_error[1] + 0.002 * scale) << where;
          EXPECT_EQ(runs[0].depths, expected->Depths(policy, seq)) << where;
        }
      }
    }
  }
  std::printf("bf16: worst max|error| / max|logit| = %.4f\n", worst_ratio);
}

}  // namespace
}  // namespace mor

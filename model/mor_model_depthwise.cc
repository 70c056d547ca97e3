// MorModel's continuous depth-wise step (ModelRunner::StepDepthwise): enter
// (embedding + unique first layer), one recursion for every token in flight
// (one shared-block call per distinct weight set, tokens at mixed depths),
// and exit (unique last layer + LM head) for groups none of whose tokens
// continues.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "absl/status/status.h"
#include "model/mor_model.h"
#include "model/status_macros.h"

namespace mor {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

absl::StatusOr<DepthwiseStepResult> MorModel::ForwardDepthwise(
    std::span<const DepthwiseGroup> groups, KvBlockAllocator& allocator) {
  const auto start = Clock::now();
  DepthwiseStepResult result;
  result.vocab_size = config_.vocab_size;
  result.groups.resize(groups.size());
  result.token_steps_per_depth.assign(config_.num_recursions, 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    result.groups[g].continues.assign(groups[g].slots.size(), 0);
  }
  auto stage = Clock::now();
  MOR_RETURN_IF_ERROR(EnterGroups(groups, allocator, result));
  result.enter_seconds = SecondsSince(stage);
  stage = Clock::now();
  MOR_RETURN_IF_ERROR(RecurseGroups(groups, allocator, result));
  result.block_seconds = SecondsSince(stage);
  stage = Clock::now();
  MOR_RETURN_IF_ERROR(ExitGroups(groups, result, allocator));
  result.exit_seconds = SecondsSince(stage);
  result.total_seconds = SecondsSince(start);
  return result;
}

absl::Status MorModel::EnterGroups(std::span<const DepthwiseGroup> groups,
                                   KvBlockAllocator& allocator, DepthwiseStepResult& result) {
  std::vector<int64_t> ids, positions, slots;
  std::vector<KvTable*> tables;
  std::vector<int32_t> entries;
  std::vector<int> depths;
  std::vector<DepthPolicy> policies;
  for (const DepthwiseGroup& group : groups) {
    if (!group.enter) continue;
    for (size_t i = 0; i < group.tokens.size(); ++i) {
      ids.push_back(group.tokens[i]);
      positions.push_back(group.start_position + static_cast<int64_t>(i));
      slots.push_back(group.slots[i]);
      tables.push_back(&group.kv->unique);
      entries.push_back(group.start_position + static_cast<int32_t>(i));
      depths.push_back(0);
      policies.push_back(group.policy);
    }
  }
  if (ids.empty()) return absl::OkStatus();
  at::Tensor h = weights_.embed.index_select(0, IndexTensor(ids));
  if (plan_.num_unique_layers > 0) {
    at::Tensor pos = IndexTensor(positions);
    at::Tensor cos = rope_cos_.index_select(0, pos).unsqueeze(1).to(dtype_);
    at::Tensor sin = rope_sin_.index_select(0, pos).unsqueeze(1).to(dtype_);
    MOR_ASSIGN_OR_RETURN(AttentionBatch batch,
                         PrepareRows(tables, entries, depths, KvPool::kUnique, true, allocator));
    for (int id : plan_.prefix_unique_layers) {
      h = DecoderLayer(weights_.unique_layers[id], h, cos, sin, cache_.keys(KvPool::kUnique, id),
                       cache_.values(KvPool::kUnique, id), batch, /*write_kv=*/true);
    }
    for (KvTable* table : tables) ++table->num_tokens;
  }
  at::Tensor slot_index = IndexTensor(slots);
  if (config_.router_type == RouterType::kTokenChoice && config_.has_router()) {
    // The token-choice router assigns each token's depth when it enters.
    const int nr = config_.num_recursions;
    const RouterWeights& router = weights_.routers[0];
    at::Tensor logits = RouterLogits(router, h);
    at::Tensor probs = config_.router_activation == RouterActivation::kSoftmax
                           ? at::softmax(logits, -1)
                           : at::sigmoid(logits);
    at::Tensor ranked = (probs + router.bias).cpu().contiguous();
    const float* rank = ranked.data_ptr<float>();
    std::vector<int64_t> gate_index(ids.size());
    for (size_t row = 0; row < ids.size(); ++row) {
      int d = policies[row].fixed_depth;
      if (policies[row].adaptive()) {
        d = 1;
        for (int i = 1; i < nr; ++i) {
          if (rank[row * nr + i] > rank[row * nr + d - 1]) d = i + 1;
        }
      }
      slot_depth_[slots[row]] = d;
      gate_index[row] = static_cast<int64_t>(row) * nr + d - 1;
    }
    at::Tensor gate = probs.view({-1}).index_select(0, IndexTensor(gate_index)) *
                      static_cast<float>(config_.router_alpha);
    entry_state_.index_copy_(0, slot_index, h);
    slot_gate_.index_copy_(0, slot_index, gate);
  }
  state_.index_copy_(0, slot_index, h);
  return absl::OkStatus();
}

absl::Status MorModel::RecurseGroups(std::span<const DepthwiseGroup> groups,
                                     KvBlockAllocator& allocator, DepthwiseStepResult& result) {
  const int nr = config_.num_recursions;
  const bool sharing = config_.kv_mode == KvMode::kRecursiveSharing && !config_.is_vanilla();
  const bool token_choice = config_.router_type == RouterType::kTokenChoice && config_.has_router();

  // Tokens taking a recursion, split into block calls: one call when every
  // recursion applies the same weights and writes K/V (tokens at mixed depths
  // share it); otherwise one call per depth.
  struct Row {
    int32_t group;
    int32_t token;
    int32_t depth;
  };
  std::map<int, std::vector<Row>> calls;
  for (size_t g = 0; g < groups.size(); ++g) {
    const DepthwiseGroup& group = groups[g];
    const int32_t r = group.enter ? 1 : group.depth;
    for (size_t i = 0; i < group.slots.size(); ++i) {
      if (!group.enter && !group.active[i]) continue;
      const bool mixed_ok = plan_.recursions_share_weights && !sharing;
      calls[mixed_ok ? 0 : r].push_back(Row{static_cast<int32_t>(g), static_cast<int32_t>(i), r});
    }
  }

  for (const auto& [call_key, rows] : calls) {
    const int call_depth = rows.front().depth;  // the weights of a mixed call are shared
    std::vector<int64_t> slots, positions;
    std::vector<KvTable*> tables;
    std::vector<int32_t> entries;
    std::vector<int> depths;
    std::map<KvTable*, int32_t> appended;
    const bool write = !sharing || call_depth == 1;
    for (const Row& row : rows) {
      const DepthwiseGroup& group = groups[row.group];
      slots.push_back(group.slots[row.token]);
      const int32_t position = group.start_position + row.token;
      positions.push_back(position);
      KvTable* table = &group.kv->depths[(sharing ? 1 : row.depth) - 1];
      tables.push_back(table);
      // Written entries are appended in position order; depth 1 (read when
      // sharing) holds every token, so its entry index is the position.
      entries.push_back(write ? table->num_tokens + appended[table]++ : position);
      depths.push_back(sharing ? 1 : row.depth);
    }
    at::Tensor slot_index = IndexTensor(slots);
    at::Tensor pos = IndexTensor(positions);
    at::Tensor cos = rope_cos_.index_select(0, pos).unsqueeze(1).to(dtype_);
    at::Tensor sin = rope_sin_.index_select(0, pos).unsqueeze(1).to(dtype_);
    at::Tensor x = state_.index_select(0, slot_index);

    // Expert-choice gates, from each row's own recursion router.
    at::Tensor gate;
    std::map<int, std::vector<int64_t>> rows_of_depth;
    for (size_t i = 0; i < rows.size(); ++i) rows_of_depth[rows[i].depth].push_back(i);
    if (config_.has_router() && !token_choice) {
      gate = at::empty({static_cast<int64_t>(rows.size())},
                       at::TensorOptions().dtype(at::kFloat).device(device_));
      for (const auto& [r, idx] : rows_of_depth) {
        at::Tensor sub = IndexTensor(idx);
        gate.index_copy_(
            0, sub,
            at::sigmoid(RouterLogits(weights_.routers[r - 1], x.index_select(0, sub))).view({-1}));
      }
    }

    MOR_ASSIGN_OR_RETURN(AttentionBatch batch,
                         PrepareRows(tables, entries, depths, KvPool::kDepth, write, allocator));
    at::Tensor out = x;
    for (int j = 0; j < plan_.block_layers; ++j) {
      const LayerWeights& layer = weights_.shared_layers[plan_.recursion_layers[call_depth - 1][j]];
      out = DecoderLayer(layer, out, cos, sin, cache_.keys(KvPool::kDepth, j),
                         cache_.values(KvPool::kDepth, j), batch, write);
    }
    ++result.block_calls;
    if (write) {
      for (auto& [table, count] : appended) table->num_tokens += count;
    }

    at::Tensor updated;
    std::vector<uint8_t> is_last(rows.size(), 0);
    if (token_choice) {
      std::vector<int64_t> last_rows;
      for (size_t i = 0; i < rows.size(); ++i) {
        is_last[i] = rows[i].depth >= slot_depth_[slots[i]];
        if (is_last[i]) last_rows.push_back(static_cast<int64_t>(i));
      }
      updated = out;
      if (!last_rows.empty()) {
        at::Tensor li = IndexTensor(last_rows);
        at::Tensor last_slots = slot_index.index_select(0, li);
        at::Tensor g = slot_gate_.index_select(0, last_slots).to(dtype_).unsqueeze(1);
        updated = out.clone();
        updated.index_copy_(0, li,
                            entry_state_.index_select(0, last_slots) + g * out.index_select(0, li));
      }
    } else if (config_.has_router()) {
      updated = x + (gate * static_cast<float>(config_.router_alpha)).to(dtype_).unsqueeze(1) * out;
    } else {
      updated = out;
    }
    state_.index_copy_(0, slot_index, updated);

    // Who takes the next recursion.
    std::vector<uint8_t> next(rows.size(), 0);
    if (token_choice) {
      for (size_t i = 0; i < rows.size(); ++i) next[i] = !is_last[i];
    } else if (config_.has_router()) {
      for (const auto& [r, idx] : rows_of_depth) {
        if (r >= nr) continue;
        std::vector<int64_t> adaptive;
        for (int64_t i : idx) {
          const DepthPolicy& policy = groups[rows[i].group].policy;
          if (policy.adaptive()) {
            adaptive.push_back(i);
          } else {
            next[i] = r < policy.fixed_depth;
          }
        }
        if (adaptive.empty()) continue;
        at::Tensor sub = IndexTensor(adaptive);
        at::Tensor scores =
            at::sigmoid(RouterLogits(weights_.routers[r], updated.index_select(0, sub)))
                .view({-1})
                .cpu()
                .contiguous();
        const float* s = scores.data_ptr<float>();
        for (size_t k = 0; k < adaptive.size(); ++k) {
          next[adaptive[k]] = s[k] >= static_cast<float>(config_.router_threshold);
        }
      }
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      result.groups[rows[i].group].continues[rows[i].token] = next[i];
      ++result.token_steps_per_depth[rows[i].depth - 1];
    }
  }
  return absl::OkStatus();
}

absl::Status MorModel::ExitGroups(std::span<const DepthwiseGroup> groups,
                                  DepthwiseStepResult& result, KvBlockAllocator& allocator) {
  std::vector<int64_t> slots, positions, logit_rows;
  std::vector<KvTable*> tables;
  std::vector<int32_t> entries;
  for (size_t g = 0; g < groups.size(); ++g) {
    DepthwiseGroupResult& out = result.groups[g];
    if (std::any_of(out.continues.begin(), out.continues.end(), [](uint8_t c) { return c; })) {
      continue;
    }
    out.exited = true;
    const DepthwiseGroup& group = groups[g];
    const int64_t base = static_cast<int64_t>(slots.size());
    const int64_t n = static_cast<int64_t>(group.slots.size());
    for (int64_t i = 0; i < n; ++i) {
      slots.push_back(group.slots[i]);
      positions.push_back(group.start_position + i);
      tables.push_back(&group.kv->unique);
      entries.push_back(group.start_position + static_cast<int32_t>(i));
    }
    if (group.logits == LogitsRequest::kLast) {
      out.logits_row = static_cast<int32_t>(logit_rows.size());
      logit_rows.push_back(base + n - 1);
    } else if (group.logits == LogitsRequest::kAll) {
      out.logits_row = static_cast<int32_t>(logit_rows.size());
      for (int64_t i = 0; i < n; ++i) logit_rows.push_back(base + i);
    }
  }
  if (slots.empty()) return absl::OkStatus();
  at::Tensor h = state_.index_select(0, IndexTensor(slots));
  if (plan_.num_unique_layers > 0) {
    at::Tensor pos = IndexTensor(positions);
    at::Tensor cos = rope_cos_.index_select(0, pos).unsqueeze(1).to(dtype_);
    at::Tensor sin = rope_sin_.index_select(0, pos).unsqueeze(1).to(dtype_);
    std::vector<int> depths(slots.size(), 0);
    MOR_ASSIGN_OR_RETURN(AttentionBatch batch,
                         PrepareRows(tables, entries, depths, KvPool::kUnique, true, allocator));
    for (int id : plan_.suffix_unique_layers) {
      h = DecoderLayer(weights_.unique_layers[id], h, cos, sin, cache_.keys(KvPool::kUnique, id),
                       cache_.values(KvPool::kUnique, id), batch, /*write_kv=*/true);
    }
  }
  if (!logit_rows.empty()) {
    at::Tensor x = h.index_select(0, IndexTensor(logit_rows));
    at::Tensor logits =
        at::linear(RmsNorm(x, weights_.final_norm), weights_.lm_head).to(at::kFloat).cpu();
    logits = logits.contiguous();
    result.logits.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  }
  return absl::OkStatus();
}

}  // namespace mor

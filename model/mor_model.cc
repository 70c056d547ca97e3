#include "model/mor_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "model/status_macros.h"

namespace mor {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::Status EnsureCapacity(KvTable& table, int64_t entries, int32_t block_size, KvPool pool,
                            int depth, KvBlockAllocator& allocator) {
  while (static_cast<int64_t>(table.blocks.size()) * block_size < entries) {
    MOR_ASSIGN_OR_RETURN(int32_t block, allocator.Allocate(pool, depth));
    table.blocks.push_back(block);
  }
  return absl::OkStatus();
}

}  // namespace

struct MorModel::StepRows {
  std::span<const SequenceChunk> chunks;
  std::vector<int32_t> chunk_of_row;
  std::vector<int32_t> index_in_chunk;
  std::vector<int64_t> all_rows;
};

MorModel::MorModel(ModelConfig config, MorWeights weights, const KvCacheGeometry& geometry,
                   at::ScalarType dtype, at::Device device, const std::string& attention,
                   int32_t num_state_slots, bool depth_aware)
    : config_(std::move(config)),
      plan_(config_.MakeLayerPlan()),
      weights_(std::move(weights)),
      cache_(geometry, dtype, device),
      dtype_(dtype),
      device_(device),
      use_cpu_attention_(device.is_cpu() && attention != "sdpa" && config_.head_dim <= 512),
      depth_aware_(depth_aware),
      num_state_slots_(num_state_slots) {
  const auto options = at::TensorOptions().dtype(dtype_).device(device_);
  state_ = at::zeros({num_state_slots_, config_.hidden_size}, options);
  if (config_.router_type == RouterType::kTokenChoice && config_.has_router()) {
    entry_state_ = at::zeros({num_state_slots_, config_.hidden_size}, options);
    slot_gate_ = at::zeros({num_state_slots_}, options.dtype(at::kFloat));
  }
  slot_depth_.assign(num_state_slots_, 0);
  const int64_t half = config_.head_dim / 2;
  at::Tensor inv_freq =
      1.0 / at::pow(config_.rope_theta,
                    at::arange(0, config_.head_dim, 2, at::TensorOptions().dtype(at::kDouble)) /
                        static_cast<double>(config_.head_dim));
  at::Tensor positions =
      at::arange(config_.max_position_embeddings, at::TensorOptions().dtype(at::kDouble));
  at::Tensor freqs = at::outer(positions, inv_freq).reshape({-1, half});
  rope_cos_ = freqs.cos().to(at::kFloat).to(device_);
  rope_sin_ = freqs.sin().to(at::kFloat).to(device_);
}

at::Tensor MorModel::IndexTensor(const std::vector<int64_t>& rows) const {
  at::Tensor t =
      at::from_blob(const_cast<int64_t*>(rows.data()), {static_cast<int64_t>(rows.size())},
                    at::TensorOptions().dtype(at::kLong));
  return device_.is_cpu() ? t.clone() : t.to(device_);
}

at::Tensor MorModel::RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor MorModel::Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  // x: [rows, heads, head_dim]; cos/sin: [rows, 1, head_dim / 2] in x's dtype.
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

at::Tensor MorModel::DecoderLayer(const LayerWeights& w, const at::Tensor& x, const at::Tensor& cos,
                                  const at::Tensor& sin, at::Tensor k_cache, at::Tensor v_cache,
                                  const AttentionBatch& batch, bool write_kv) const {
  const int64_t rows = x.size(0);
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t hd = config_.head_dim;
  at::Tensor qkv = at::linear(RmsNorm(x, w.input_norm), w.wqkv);
  at::Tensor q;
  if (write_kv) {
    // RoPE on q and k in one pass: they are adjacent in the fused projection.
    at::Tensor qk = Rope(
        qkv.narrow(1, 0, (heads + kv_heads) * hd).view({rows, heads + kv_heads, hd}), cos, sin);
    q = qk.narrow(1, 0, heads);
    at::Tensor k = qk.narrow(1, heads, kv_heads);
    at::Tensor v = qkv.narrow(1, (heads + kv_heads) * hd, kv_heads * hd).view({rows, kv_heads, hd});
    WriteKv(batch, k, v, k_cache, v_cache);
  } else {
    q = Rope(qkv.narrow(1, 0, heads * hd).view({rows, heads, hd}), cos, sin);
  }
  at::Tensor h = x + at::linear(PagedAttention(q, k_cache, v_cache, batch), w.wo);
  at::Tensor gate_up = at::linear(RmsNorm(h, w.post_norm), w.w_gate_up);
  const int64_t ff = config_.intermediate_size;
  at::Tensor act = at::silu(gate_up.narrow(1, 0, ff)) * gate_up.narrow(1, ff, ff);
  return h + at::linear(act, w.w_down);
}

at::Tensor MorModel::RouterLogits(const RouterWeights& router, const at::Tensor& h) const {
  at::Tensor out = at::linear(h, router.w1);
  if (router.w2.defined()) out = at::linear(at::gelu(out), router.w2);
  return out.to(at::kFloat);
}

absl::StatusOr<AttentionBatch> MorModel::PrepareLevel(const StepRows& step,
                                                      const std::vector<int64_t>& rows,
                                                      std::vector<KvTable*>& tables, KvPool pool,
                                                      int depth, bool write,
                                                      KvBlockAllocator& allocator,
                                                      const std::vector<uint8_t>* dummy) {
  const int32_t block_size = cache_.geometry().block_size;
  LevelQueries queries;
  queries.group.reserve(rows.size());
  queries.entry.reserve(rows.size());
  std::vector<int32_t> group_of_chunk(step.chunks.size(), -1);
  std::vector<int32_t> count_of_chunk(step.chunks.size(), 0);
  // Entries of one chunk are appended in position order, whatever the order
  // of `rows` (the depth-grouped order may interleave a chunk's tokens).
  std::vector<std::vector<int32_t>> positions_of_chunk(step.chunks.size());
  if (write) {
    for (size_t i = 0; i < rows.size(); ++i) {
      if (dummy != nullptr && (*dummy)[i]) continue;
      positions_of_chunk[step.chunk_of_row[rows[i]]].push_back(step.index_in_chunk[rows[i]]);
    }
    for (auto& positions : positions_of_chunk) std::sort(positions.begin(), positions.end());
  }
  int32_t dummy_group = -1;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t row = rows[i];
    if (dummy != nullptr && (*dummy)[i]) {
      // A masked row (no depth awareness): it computes like the others but
      // writes to and reads from the reserved null block only.
      if (dummy_group < 0) {
        dummy_group = static_cast<int32_t>(queries.tables.size());
        queries.tables.push_back(&null_table_);
      }
      queries.group.push_back(dummy_group);
      queries.entry.push_back(0);
      continue;
    }
    const int32_t c = step.chunk_of_row[row];
    if (group_of_chunk[c] < 0) {
      group_of_chunk[c] = static_cast<int32_t>(queries.tables.size());
      queries.tables.push_back(tables[c]);
    }
    queries.group.push_back(group_of_chunk[c]);
    if (write) {
      const std::vector<int32_t>& positions = positions_of_chunk[c];
      const int32_t rank = static_cast<int32_t>(
          std::lower_bound(positions.begin(), positions.end(), step.index_in_chunk[row]) -
          positions.begin());
      queries.entry.push_back(tables[c]->num_tokens + rank);
    } else {
      // Read-only (recursive sharing): attend to the depth-1 entries, which
      // this step already extended by every token of the chunk.
      const int32_t base =
          tables[c]->num_tokens - static_cast<int32_t>(step.chunks[c].tokens.size());
      queries.entry.push_back(base + step.index_in_chunk[row]);
    }
    ++count_of_chunk[c];
  }
  if (write) {
    for (size_t c = 0; c < step.chunks.size(); ++c) {
      if (count_of_chunk[c] == 0) continue;
      MOR_RETURN_IF_ERROR(EnsureCapacity(*tables[c], tables[c]->num_tokens + count_of_chunk[c],
                                         block_size, pool, depth, allocator));
    }
  }
  return BuildAttentionBatch(queries, block_size, device_, use_cpu_attention_);
}

absl::StatusOr<AttentionBatch> MorModel::PrepareRows(const std::vector<KvTable*>& row_table,
                                                     const std::vector<int32_t>& row_entry,
                                                     const std::vector<int>& row_depth, KvPool pool,
                                                     bool write, KvBlockAllocator& allocator) {
  const int32_t block_size = cache_.geometry().block_size;
  LevelQueries queries;
  queries.entry = row_entry;
  queries.group.reserve(row_table.size());
  std::vector<int32_t> needed;  // per group: entries the table must cover
  std::vector<int> group_depth;
  for (size_t i = 0; i < row_table.size(); ++i) {
    auto it = std::find(queries.tables.begin(), queries.tables.end(), row_table[i]);
    int32_t g = static_cast<int32_t>(it - queries.tables.begin());
    if (it == queries.tables.end()) {
      queries.tables.push_back(row_table[i]);
      needed.push_back(0);
      group_depth.push_back(row_depth[i]);
    }
    queries.group.push_back(g);
    needed[g] = std::max(needed[g], row_entry[i] + 1);
  }
  if (write) {
    for (size_t g = 0; g < queries.tables.size(); ++g) {
      MOR_RETURN_IF_ERROR(EnsureCapacity(*const_cast<KvTable*>(queries.tables[g]), needed[g],
                                         block_size, pool, group_depth[g], allocator));
    }
  }
  return BuildAttentionBatch(queries, block_size, device_, use_cpu_attention_);
}

void MorModel::CommitLevel(const StepRows& step, const std::vector<int64_t>& rows,
                           std::vector<KvTable*>& tables) {
  for (int64_t row : rows) ++tables[step.chunk_of_row[row]]->num_tokens;
}

absl::StatusOr<at::Tensor> MorModel::RunRecursion(int r, const StepRows& step,
                                                  const std::vector<int64_t>& rows,
                                                  const at::Tensor& x, const at::Tensor& cos,
                                                  const at::Tensor& sin,
                                                  KvBlockAllocator& allocator,
                                                  const std::vector<uint8_t>* dummy) {
  const bool sharing = config_.kv_mode == KvMode::kRecursiveSharing && !config_.is_vanilla();
  const int level = sharing ? 1 : r;
  const bool write = !sharing || r == 1;
  std::vector<KvTable*> tables(step.chunks.size());
  for (size_t c = 0; c < step.chunks.size(); ++c) tables[c] = &step.chunks[c].kv->depths[level - 1];
  MOR_ASSIGN_OR_RETURN(AttentionBatch batch, PrepareLevel(step, rows, tables, KvPool::kDepth, level,
                                                          write, allocator, dummy));
  at::Tensor out = x;
  for (int j = 0; j < plan_.block_layers; ++j) {
    const LayerWeights& layer = weights_.shared_layers[plan_.recursion_layers[r - 1][j]];
    out = DecoderLayer(layer, out, cos, sin, cache_.keys(KvPool::kDepth, j),
                       cache_.values(KvPool::kDepth, j), batch, write);
  }
  if (write) {
    for (size_t i = 0; i < rows.size(); ++i) {
      if (dummy == nullptr || !(*dummy)[i]) ++tables[step.chunk_of_row[rows[i]]]->num_tokens;
    }
  }
  return out;
}

absl::Status MorModel::RunUniqueLayers(const std::vector<int>& layers, const StepRows& step,
                                       const AttentionBatch& batch, at::Tensor& h,
                                       const at::Tensor& cos, const at::Tensor& sin) {
  for (int id : layers) {
    h = DecoderLayer(weights_.unique_layers[id], h, cos, sin, cache_.keys(KvPool::kUnique, id),
                     cache_.values(KvPool::kUnique, id), batch, /*write_kv=*/true);
  }
  return absl::OkStatus();
}

absl::Status MorModel::RunExpertChoice(const StepRows& step, at::Tensor& h, const at::Tensor& cos,
                                       const at::Tensor& sin, KvBlockAllocator& allocator,
                                       StepResult& result) {
  const int nr = config_.num_recursions;
  const int64_t total = static_cast<int64_t>(step.all_rows.size());
  // Depth-grouped order: rows that may go deepest first (adaptive rows, then
  // fixed depths in decreasing order; stable, so a chunk keeps position
  // order). Recursion r then runs on a contiguous leading slice of the live
  // rows; a row that stops leaves the slice (its final state is written back
  // at once) and only when adaptive rows drop out of the middle are the
  // survivors compacted.
  auto max_depth = [&](int64_t row) {
    const DepthPolicy policy = step.chunks[step.chunk_of_row[row]].policy;
    return policy.adaptive() ? nr : policy.fixed_depth;
  };
  std::vector<int64_t> live = step.all_rows;
  std::stable_sort(live.begin(), live.end(),
                   [&](int64_t a, int64_t b) { return max_depth(a) > max_depth(b); });
  const bool identity = std::is_sorted(live.begin(), live.end());
  at::Tensor order = identity ? at::Tensor() : IndexTensor(live);
  at::Tensor x = identity ? h : h.index_select(0, order);
  at::Tensor cos_l = identity ? cos : cos.index_select(0, order);
  at::Tensor sin_l = identity ? sin : sin.index_select(0, order);
  at::Tensor final_h = identity ? at::Tensor() : at::empty_like(h);

  auto retire = [&](const std::vector<int64_t>& rows, const at::Tensor& values) {
    if (rows.empty()) return;
    if (identity && static_cast<int64_t>(rows.size()) == total) {
      h = values;
      return;
    }
    if (!final_h.defined()) final_h = h.clone();
    final_h.index_copy_(0, IndexTensor(rows), values);
  };

  // Without depth awareness every row stays live and rows that stopped are
  // only marked dead (their results masked).
  std::vector<uint8_t> alive(live.size(), 1);
  for (int r = 1; r <= nr && !live.empty(); ++r) {
    const auto start = Clock::now();
    const int64_t n = static_cast<int64_t>(live.size());
    at::Tensor scores;  // fp32 [n], sigmoid of the router logit
    std::vector<float> host_scores;
    if (config_.has_router()) {
      scores = at::sigmoid(RouterLogits(weights_.routers[r - 1], x)).view({-1});
      at::Tensor host = scores.cpu().contiguous();
      host_scores.assign(host.data_ptr<float>(), host.data_ptr<float>() + n);
    }
    std::vector<uint8_t> take(n);
    int64_t taken = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = live[i];
      const DepthPolicy policy = step.chunks[step.chunk_of_row[row]].policy;
      if (!alive[i]) {
        take[i] = 0;
        continue;
      }
      if (!host_scores.empty()) result.router_scores[row * nr + (r - 1)] = host_scores[i];
      if (r == 1) {
        take[i] = 1;
      } else if (policy.adaptive()) {
        take[i] = host_scores[i] >= static_cast<float>(config_.router_threshold);
      } else {
        take[i] = r <= policy.fixed_depth;
      }
      taken += take[i];
    }
    if (taken == 0) {
      retire(live, x);
      live.clear();
      break;
    }

    std::vector<uint8_t> dummy;  // rows computed only to be masked
    at::Tensor keep;             // no depth awareness: 1 where the row took r
    if (!depth_aware_ && taken < n) {
      dummy.resize(n);
      for (int64_t i = 0; i < n; ++i) dummy[i] = !take[i];
      keep = at::from_blob(take.data(), {n}, at::TensorOptions().dtype(at::kByte))
                 .to(device_)
                 .to(at::kBool)
                 .unsqueeze(1);
    } else if (taken < n) {
      // Rows that stop leave; the takers become the new leading slice.
      std::vector<int64_t> stay_index, stay_rows, gone_index, gone_rows;
      for (int64_t i = 0; i < n; ++i) {
        (take[i] ? stay_index : gone_index).push_back(i);
        (take[i] ? stay_rows : gone_rows).push_back(live[i]);
      }
      retire(gone_rows, x.index_select(0, IndexTensor(gone_index)));
      if (stay_index.back() == taken - 1) {  // already a prefix: no gather
        x = x.narrow(0, 0, taken);
        cos_l = cos_l.narrow(0, 0, taken);
        sin_l = sin_l.narrow(0, 0, taken);
        if (scores.defined()) scores = scores.narrow(0, 0, taken);
      } else {
        at::Tensor stay = IndexTensor(stay_index);
        x = x.index_select(0, stay);
        cos_l = cos_l.index_select(0, stay);
        sin_l = sin_l.index_select(0, stay);
        if (scores.defined()) scores = scores.index_select(0, stay);
      }
      live = std::move(stay_rows);
      alive.assign(live.size(), 1);
    }

    MOR_ASSIGN_OR_RETURN(
        at::Tensor block_out,
        RunRecursion(r, step, live, x, cos_l, sin_l, allocator, dummy.empty() ? nullptr : &dummy));
    at::Tensor updated;
    if (config_.has_router()) {
      at::Tensor g = (scores * static_cast<float>(config_.router_alpha)).to(dtype_).unsqueeze(1);
      updated = x + g * block_out;
    } else {
      updated = block_out;  // vanilla: the block is the whole model body
    }
    x = keep.defined() ? at::where(keep, updated, x) : updated;
    for (int64_t i = 0; i < static_cast<int64_t>(live.size()); ++i) {
      if (dummy.empty() || take[i]) result.token_depth[live[i]] = static_cast<int8_t>(r);
    }
    // Masked mode: token-recursion steps counted are the useful ones.
    result.stats.token_steps_per_depth[r - 1] +=
        dummy.empty() ? static_cast<int64_t>(live.size()) : taken;
    result.stats.recursion_seconds[r - 1] += SecondsSince(start);
    if (!dummy.empty()) alive = take;  // masked mode: rows stay, marked dead
  }
  retire(live, x);
  if (final_h.defined()) h = final_h;
  return absl::OkStatus();
}

absl::Status MorModel::RunTokenChoice(const StepRows& step, at::Tensor& h, const at::Tensor& cos,
                                      const at::Tensor& sin, KvBlockAllocator& allocator,
                                      StepResult& result) {
  const int nr = config_.num_recursions;
  const int64_t total = static_cast<int64_t>(step.all_rows.size());
  const RouterWeights& router = weights_.routers[0];
  at::Tensor logits = RouterLogits(router, h);  // [T, Nr] fp32
  at::Tensor probs = config_.router_activation == RouterActivation::kSoftmax
                         ? at::softmax(logits, -1)
                         : at::sigmoid(logits);
  at::Tensor host_probs = probs.cpu().contiguous();
  at::Tensor host_ranked = (probs + router.bias).cpu().contiguous();
  const float* p = host_probs.data_ptr<float>();
  const float* ranked = host_ranked.data_ptr<float>();

  std::vector<int> depth(total);
  std::vector<int64_t> gate_index(total);  // row * Nr + depth - 1
  for (int64_t row = 0; row < total; ++row) {
    const DepthPolicy policy = step.chunks[step.chunk_of_row[row]].policy;
    int d = policy.fixed_depth;
    if (policy.adaptive()) {
      int best = 0;
      for (int i = 1; i < nr; ++i) {
        if (ranked[row * nr + i] > ranked[row * nr + best]) best = i;
      }
      d = best + 1;
    }
    depth[row] = d;
    gate_index[row] = row * nr + d - 1;
    for (int i = 0; i < nr; ++i) result.router_scores[row * nr + i] = p[row * nr + i];
    result.token_depth[row] = static_cast<int8_t>(d);
  }
  at::Tensor g = (probs.view({-1}).index_select(0, IndexTensor(gate_index)) *
                  static_cast<float>(config_.router_alpha))
                     .to(dtype_)
                     .unsqueeze(1);

  // Depth-grouped order: rows by assigned depth, deepest first (stable), so
  // recursion r runs on the leading slice of rows with depth >= r.
  std::vector<int64_t> order(total);
  for (int64_t i = 0; i < total; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return depth[a] > depth[b]; });
  const bool identity = std::is_sorted(order.begin(), order.end());
  at::Tensor perm = identity ? at::Tensor() : IndexTensor(order);
  at::Tensor state = identity ? h : h.index_select(0, perm);
  at::Tensor cos_o = identity ? cos : cos.index_select(0, perm);
  at::Tensor sin_o = identity ? sin : sin.index_select(0, perm);
  std::vector<int64_t> done;  // finished state slices, in order
  std::vector<at::Tensor> finished;
  for (int r = 1; r <= nr; ++r) {
    const auto start = Clock::now();
    int64_t n = 0;
    while (n < total && depth[order[n]] >= r) ++n;
    if (n == 0) break;
    std::vector<int64_t> rows(order.begin(), order.begin() + n);
    std::vector<uint8_t> dummy;
    int64_t compute_rows = n;
    if (!depth_aware_) {
      // Every row runs every recursion; rows past their depth are masked.
      compute_rows = total;
      rows = order;
      dummy.assign(total, 0);
      for (int64_t i = n; i < total; ++i) dummy[i] = 1;
    }
    at::Tensor x = state.narrow(0, 0, compute_rows);
    MOR_ASSIGN_OR_RETURN(at::Tensor out,
                         RunRecursion(r, step, rows, x, cos_o.narrow(0, 0, compute_rows),
                                      sin_o.narrow(0, 0, compute_rows), allocator,
                                      dummy.empty() ? nullptr : &dummy));
    state = at::cat({out.narrow(0, 0, n), state.narrow(0, n, total - n)}, 0);
    result.stats.token_steps_per_depth[r - 1] += n;
    result.stats.recursion_seconds[r - 1] += SecondsSince(start);
  }
  at::Tensor final_state = identity ? state : at::empty_like(state).index_copy_(0, perm, state);
  h = h + g * final_state;
  return absl::OkStatus();
}

absl::StatusOr<StepResult> MorModel::Forward(std::span<const SequenceChunk> chunks,
                                             KvBlockAllocator& allocator) {
  const auto step_start = Clock::now();
  const int nr = config_.num_recursions;
  StepRows step;
  step.chunks = chunks;
  std::vector<int64_t> token_ids;
  std::vector<int64_t> positions;
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (size_t i = 0; i < chunks[c].tokens.size(); ++i) {
      step.chunk_of_row.push_back(static_cast<int32_t>(c));
      step.index_in_chunk.push_back(static_cast<int32_t>(i));
      step.all_rows.push_back(static_cast<int64_t>(token_ids.size()));
      token_ids.push_back(chunks[c].tokens[i]);
      positions.push_back(chunks[c].start_position + static_cast<int64_t>(i));
    }
  }
  const int64_t total = static_cast<int64_t>(token_ids.size());

  StepResult result;
  result.vocab_size = config_.vocab_size;
  result.token_depth.assign(total, 0);
  if (config_.has_router()) {
    result.router_scores.assign(total * nr, std::numeric_limits<float>::quiet_NaN());
  }
  result.stats.token_steps_per_depth.assign(nr, 0);
  result.stats.recursion_seconds.assign(nr, 0.0);

  auto start = Clock::now();
  at::Tensor ids = IndexTensor(token_ids);
  at::Tensor pos = IndexTensor(positions);
  at::Tensor h = weights_.embed.index_select(0, ids);
  at::Tensor cos = rope_cos_.index_select(0, pos).unsqueeze(1).to(dtype_);
  at::Tensor sin = rope_sin_.index_select(0, pos).unsqueeze(1).to(dtype_);
  result.stats.embed_seconds = SecondsSince(start);

  // Unique first layer(s): every token, one metadata for prefix and suffix.
  std::vector<KvTable*> unique_tables(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) unique_tables[c] = &chunks[c].kv->unique;
  AttentionBatch unique_batch;
  const bool has_unique = plan_.num_unique_layers > 0;
  if (has_unique) {
    start = Clock::now();
    MOR_ASSIGN_OR_RETURN(unique_batch, PrepareLevel(step, step.all_rows, unique_tables,
                                                    KvPool::kUnique, 0, true, allocator));
    MOR_RETURN_IF_ERROR(
        RunUniqueLayers(plan_.prefix_unique_layers, step, unique_batch, h, cos, sin));
    result.stats.unique_layers_seconds += SecondsSince(start);
  }

  if (config_.router_type == RouterType::kTokenChoice && config_.has_router()) {
    MOR_RETURN_IF_ERROR(RunTokenChoice(step, h, cos, sin, allocator, result));
  } else {
    MOR_RETURN_IF_ERROR(RunExpertChoice(step, h, cos, sin, allocator, result));
  }

  if (has_unique) {
    start = Clock::now();
    MOR_RETURN_IF_ERROR(
        RunUniqueLayers(plan_.suffix_unique_layers, step, unique_batch, h, cos, sin));
    CommitLevel(step, step.all_rows, unique_tables);
    result.stats.unique_layers_seconds += SecondsSince(start);
  }

  // LM head on the rows that want logits.
  start = Clock::now();
  std::vector<int64_t> logit_rows;
  result.logits_row.assign(chunks.size(), -1);
  int64_t row_base = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t n = static_cast<int64_t>(chunks[c].tokens.size());
    if (chunks[c].logits == LogitsRequest::kLast) {
      result.logits_row[c] = static_cast<int32_t>(logit_rows.size());
      logit_rows.push_back(row_base + n - 1);
    } else if (chunks[c].logits == LogitsRequest::kAll) {
      result.logits_row[c] = static_cast<int32_t>(logit_rows.size());
      for (int64_t i = 0; i < n; ++i) logit_rows.push_back(row_base + i);
    }
    row_base += n;
  }
  if (!logit_rows.empty()) {
    at::Tensor x = static_cast<int64_t>(logit_rows.size()) == total
                       ? h
                       : h.index_select(0, IndexTensor(logit_rows));
    at::Tensor logits =
        at::linear(RmsNorm(x, weights_.final_norm), weights_.lm_head).to(at::kFloat).cpu();
    logits = logits.contiguous();
    result.logits.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  }
  result.stats.lm_head_seconds = SecondsSince(start);
  result.stats.total_seconds = SecondsSince(step_start);
  return result;
}

}  // namespace mor

#include "model/paged_attention.h"

#include <algorithm>
#include <cmath>

namespace mor {
namespace {

at::Tensor ToDevice(std::vector<int64_t>& host, std::vector<int64_t> shape, at::Device device) {
  at::Tensor t = at::from_blob(host.data(), shape, at::TensorOptions().dtype(at::kLong));
  return device.is_cpu() ? t.clone() : t.to(device);
}

}  // namespace

AttentionBatch BuildAttentionBatch(const LevelQueries& queries, int32_t block_size,
                                   at::Device device, bool cpu_kernel) {
  AttentionBatch batch;
  const int64_t rows = static_cast<int64_t>(queries.group.size());
  const int64_t groups = static_cast<int64_t>(queries.tables.size());
  batch.num_rows = rows;
  batch.num_groups = groups;
  auto slot_of = [&](const KvTable& table, int64_t entry) -> int64_t {
    return int64_t{table.blocks[entry / block_size]} * block_size + entry % block_size;
  };

  if (cpu_kernel) {
    batch.use_cpu_kernel = true;
    CpuPagedRows& cpu = batch.cpu_rows;
    cpu.block_size = block_size;
    cpu.row_group = queries.group;
    cpu.row_context.resize(rows);
    std::vector<int64_t> row_slots(rows);
    for (int64_t i = 0; i < rows; ++i) {
      cpu.row_context[i] = queries.entry[i] + 1;
      row_slots[i] = slot_of(*queries.tables[queries.group[i]], queries.entry[i]);
    }
    cpu.group_offset.assign(1, 0);
    for (const KvTable* table : queries.tables) {
      cpu.blocks.insert(cpu.blocks.end(), table->blocks.begin(), table->blocks.end());
      cpu.group_offset.push_back(static_cast<int64_t>(cpu.blocks.size()));
    }
    batch.row_slots = ToDevice(row_slots, {rows}, device);
    return batch;
  }

  std::vector<int64_t> queries_in_group(groups, 0);
  std::vector<int64_t> context_of_group(groups, 0);
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t g = queries.group[i];
    ++queries_in_group[g];
    context_of_group[g] = std::max<int64_t>(context_of_group[g], queries.entry[i] + 1);
  }
  batch.max_queries =
      groups ? *std::max_element(queries_in_group.begin(), queries_in_group.end()) : 0;
  batch.max_context =
      groups ? *std::max_element(context_of_group.begin(), context_of_group.end()) : 0;

  std::vector<int64_t> row_slots(rows);
  std::vector<int64_t> padded_index(rows);
  std::vector<int64_t> next_query(groups, 0);
  std::vector<uint8_t> mask(groups * batch.max_queries * batch.max_context, 0);
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t g = queries.group[i];
    const int64_t qi = next_query[g]++;
    row_slots[i] = slot_of(*queries.tables[g], queries.entry[i]);
    padded_index[i] = g * batch.max_queries + qi;
    uint8_t* m = mask.data() + (g * batch.max_queries + qi) * batch.max_context;
    std::fill(m, m + queries.entry[i] + 1, 1);
  }
  // Padding query rows attend to key 0 so the softmax stays finite; their
  // outputs are never read.
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t qi = queries_in_group[g]; qi < batch.max_queries; ++qi) {
      mask[(g * batch.max_queries + qi) * batch.max_context] = 1;
    }
  }
  std::vector<int64_t> context_slots(groups * batch.max_context, 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t k = 0; k < context_of_group[g]; ++k) {
      context_slots[g * batch.max_context + k] = slot_of(*queries.tables[g], k);
    }
  }

  batch.one_query_per_group = batch.max_queries == 1 && rows == groups;
  for (int64_t i = 0; batch.one_query_per_group && i < rows; ++i) {
    batch.one_query_per_group = padded_index[i] == i;
  }
  batch.row_slots = ToDevice(row_slots, {rows}, device);
  batch.padded_index = ToDevice(padded_index, {rows}, device);
  batch.context_slots = ToDevice(context_slots, {groups * batch.max_context}, device);
  at::Tensor host_mask =
      at::from_blob(mask.data(), {groups, 1, batch.max_queries, batch.max_context},
                    at::TensorOptions().dtype(at::kBool));
  batch.mask = device.is_cpu() ? host_mask.clone() : host_mask.to(device);
  return batch;
}

void WriteKv(const AttentionBatch& batch, const at::Tensor& k, const at::Tensor& v,
             at::Tensor& k_cache, at::Tensor& v_cache) {
  k_cache.index_copy_(0, batch.row_slots, k);
  v_cache.index_copy_(0, batch.row_slots, v);
}

at::Tensor PagedAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const AttentionBatch& batch) {
  if (batch.use_cpu_kernel) return CpuPagedAttention(q, k_cache, v_cache, batch.cpu_rows);
  const int64_t heads = q.size(1);
  const int64_t head_dim = q.size(2);
  const int64_t kv_heads = k_cache.size(1);
  const int64_t groups = batch.num_groups;
  at::Tensor q_padded;
  if (batch.one_query_per_group) {
    q_padded = q;
  } else {
    q_padded = at::zeros({groups * batch.max_queries, heads, head_dim}, q.options());
    q_padded.index_copy_(0, batch.padded_index, q);
  }
  // [groups, heads, max_queries, head_dim]
  at::Tensor qg = q_padded.view({groups, batch.max_queries, heads, head_dim}).transpose(1, 2);
  at::Tensor kg = k_cache.index_select(0, batch.context_slots)
                      .view({groups, batch.max_context, kv_heads, head_dim})
                      .transpose(1, 2);
  at::Tensor vg = v_cache.index_select(0, batch.context_slots)
                      .view({groups, batch.max_context, kv_heads, head_dim})
                      .transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(
      qg, kg, vg, batch.mask, /*dropout_p=*/0.0, /*is_causal=*/false,
      /*scale=*/1.0 / std::sqrt(static_cast<double>(head_dim)), /*enable_gqa=*/heads != kv_heads);
  out = out.transpose(1, 2).reshape({groups * batch.max_queries, heads * head_dim});
  if (batch.one_query_per_group) return out;
  return out.index_select(0, batch.padded_index);
}

}  // namespace mor

#include "model/cpu_paged_attention.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mor {
namespace {

constexpr int kLanes = 16;        // partial sums of a dot product
constexpr int kMaxHeadDim = 512;  // checked in CpuPagedAttention

inline float ToFloat(float x) { return x; }
inline float ToFloat(c10::BFloat16 x) { return static_cast<float>(x); }

// Attention of the `group_heads` query heads sharing one KV head, for one row.
// Multiversioned so the inner loops use AVX-512 / AVX2 where the CPU has them.
template <typename T>
__attribute__((always_inline)) inline void AttendOneKvHead(
    const T* q, int64_t q_head_stride, int group_heads, int head_dim, const T* k_cache,
    const T* v_cache, int64_t slot_stride, const int32_t* blocks, int32_t block_size,
    int32_t context, float scale, float* scores, float* acc, float* qf, T* out) {
  for (int h = 0; h < group_heads; ++h) {
    for (int d = 0; d < head_dim; ++d) qf[h * head_dim + d] = ToFloat(q[h * q_head_stride + d]);
  }
  for (int32_t t = 0; t < context; ++t) {
    const int64_t slot = int64_t{blocks[t / block_size]} * block_size + t % block_size;
    const T* key = k_cache + slot * slot_stride;
    // The key row converted once, then dot products with independent
    // partial sums: a plain `dot +=` loop is a serial reduction the compiler
    // may not vectorise (no reassociation), these lanes it can.
    float kf[kMaxHeadDim];
    for (int d = 0; d < head_dim; ++d) kf[d] = ToFloat(key[d]);
    for (int h = 0; h < group_heads; ++h) {
      const float* qh = qf + h * head_dim;
      float lanes[kLanes] = {};
      int d = 0;
      for (; d + kLanes <= head_dim; d += kLanes) {
        for (int l = 0; l < kLanes; ++l) lanes[l] += qh[d + l] * kf[d + l];
      }
      float dot = 0;
      for (; d < head_dim; ++d) dot += qh[d] * kf[d];
      for (int l = 0; l < kLanes; ++l) dot += lanes[l];
      scores[h * context + t] = dot * scale;
    }
  }
  for (int h = 0; h < group_heads; ++h) {
    float* s = scores + h * context;
    const float max_score = *std::max_element(s, s + context);
    float sum = 0;
    for (int32_t t = 0; t < context; ++t) {
      s[t] = std::exp(s[t] - max_score);
      sum += s[t];
    }
    const float inv = 1.0f / sum;
    for (int32_t t = 0; t < context; ++t) s[t] *= inv;
  }
  std::fill(acc, acc + group_heads * head_dim, 0.0f);
  for (int32_t t = 0; t < context; ++t) {
    const int64_t slot = int64_t{blocks[t / block_size]} * block_size + t % block_size;
    const T* value = v_cache + slot * slot_stride;
    for (int h = 0; h < group_heads; ++h) {
      const float p = scores[h * context + t];
      float* a = acc + h * head_dim;
      for (int d = 0; d < head_dim; ++d) a[d] += p * ToFloat(value[d]);
    }
  }
  for (int h = 0; h < group_heads; ++h) {
    for (int d = 0; d < head_dim; ++d)
      out[h * head_dim + d] = static_cast<T>(acc[h * head_dim + d]);
  }
}

template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void AttendRange(
    int64_t begin, int64_t end, const T* q, int64_t q_row_stride, int64_t q_head_stride, int heads,
    int kv_heads, int head_dim, const T* k_cache, const T* v_cache, const CpuPagedRows& rows,
    T* out) {
  const int group_heads = heads / kv_heads;
  const int64_t slot_stride = int64_t{kv_heads} * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  int32_t max_context = 1;
  for (int64_t task = begin; task < end; ++task) {
    max_context = std::max(max_context, rows.row_context[task / kv_heads]);
  }
  std::vector<float> scores(static_cast<size_t>(group_heads) * max_context);
  std::vector<float> acc(static_cast<size_t>(group_heads) * head_dim);
  std::vector<float> qf(static_cast<size_t>(group_heads) * head_dim);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t row = task / kv_heads;
    const int g = static_cast<int>(task % kv_heads);
    const int32_t group = rows.row_group[row];
    AttendOneKvHead<T>(q + row * q_row_stride + g * group_heads * q_head_stride, q_head_stride,
                       group_heads, head_dim, k_cache + g * head_dim, v_cache + g * head_dim,
                       slot_stride, rows.blocks.data() + rows.group_offset[group], rows.block_size,
                       rows.row_context[row], scale, scores.data(), acc.data(), qf.data(),
                       out + row * heads * head_dim + g * group_heads * head_dim);
  }
}

}  // namespace

at::Tensor CpuPagedAttention(const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const CpuPagedRows& rows) {
  const int64_t num_rows = q.size(0);
  const int heads = static_cast<int>(q.size(1));
  const int head_dim = static_cast<int>(q.size(2));
  const int kv_heads = static_cast<int>(k_cache.size(1));
  TORCH_CHECK(q.stride(2) == 1, "query rows must have unit last stride");
  TORCH_CHECK(head_dim <= kMaxHeadDim, "CPU paged attention supports head_dim <= ", kMaxHeadDim);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  at::Tensor out = at::empty({num_rows, heads * head_dim}, q.options());
  // Rough work per task, so short contexts are not split across threads.
  int64_t mean_context = 1;
  for (int32_t c : rows.row_context) mean_context += c;
  mean_context /= std::max<int64_t>(1, num_rows);
  const int64_t grain = std::max<int64_t>(1, 4096 / (mean_context * head_dim / kv_heads + 1));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, num_rows * kv_heads, grain, [&](int64_t begin, int64_t end) {
      AttendRange<T>(begin, end, q.data_ptr<T>(), q.stride(0), q.stride(1), heads, kv_heads,
                     head_dim, k_cache.data_ptr<T>(), v_cache.data_ptr<T>(), rows,
                     out.data_ptr<T>());
    });
  };
  if (q.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16());
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "CPU paged attention supports float32 and bfloat16");
    run(float());
  }
  return out;
}

}  // namespace mor

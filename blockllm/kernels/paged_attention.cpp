// Decode attention over a paged KV pool, read in place (no gather into dense tensors).
//
// One query token per sequence. For sequence b, its keys and values are the first
// context_lens[b] slots of its pages: slot t is row (page_tables[b][t / S] * S + t % S) of
// the pool's (num_pages * S, Hkv, D) K and V. Each (sequence, KV head) pair is one task: the
// G = H / Hkv query heads that share a KV head read each key and value row once. Two passes
// (scores, then the softmax-weighted sum of values), float accumulation whatever the dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// One (sequence, KV head) task; D_ > 0 fixes the head size at compile time (unrolled, SIMD).
template <typename scalar_t, int D_>
void decode_task(const scalar_t* qb, const scalar_t* k, const scalar_t* v, const int64_t* table,
                 int64_t ctx, scalar_t* ob, int64_t G, int64_t Hkv, int64_t g, int64_t D_rt,
                 int64_t S, float scale, std::vector<float>& qf, std::vector<float>& acc,
                 std::vector<float>& scores) {
  const int64_t D = D_ > 0 ? D_ : D_rt;
  if (ctx <= 0) {  // nothing to attend to (callers always include the new token's own KV)
    std::fill(ob, ob + G * D, static_cast<scalar_t>(0));
    return;
  }
  for (int64_t j = 0; j < G * D; ++j) qf[j] = static_cast<float>(qb[j]) * scale;
  scores.resize(G * ctx);
  const int64_t n_pages = (ctx + S - 1) / S;
  for (int64_t p = 0; p < n_pages; ++p) {  // scores: q . k for every key, page by page
    const int64_t first = table[p] * S, n = std::min(S, ctx - p * S);
    for (int64_t o = 0; o < n; ++o) {
      const scalar_t* kr = k + ((first + o) * Hkv + g) * D;
      for (int64_t j = 0; j < G; ++j) {
        const float* qj = qf.data() + j * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; ++d) dot += qj[d] * static_cast<float>(kr[d]);
        scores[j * ctx + p * S + o] = dot;
      }
    }
  }
  for (int64_t j = 0; j < G; ++j) {  // softmax over the context, per query head
    float* sj = scores.data() + j * ctx;
    float m = sj[0], sum = 0.f;
    for (int64_t t = 1; t < ctx; ++t) m = sj[t] > m ? sj[t] : m;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < ctx; ++t) {
      sj[t] = std::exp(sj[t] - m);
      sum += sj[t];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t t = 0; t < ctx; ++t) sj[t] *= inv;
  }
  std::fill(acc.begin(), acc.begin() + G * D, 0.f);
  for (int64_t p = 0; p < n_pages; ++p) {  // the weighted sum of values
    const int64_t first = table[p] * S, n = std::min(S, ctx - p * S);
    for (int64_t o = 0; o < n; ++o) {
      const scalar_t* vr = v + ((first + o) * Hkv + g) * D;
      for (int64_t j = 0; j < G; ++j) {
        const float w = scores[j * ctx + p * S + o];
        float* a = acc.data() + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] += w * static_cast<float>(vr[d]);
      }
    }
  }
  for (int64_t j = 0; j < G * D; ++j) ob[j] = static_cast<scalar_t>(acc[j]);
}

template <typename scalar_t, int D_>
void decode_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v,
                   const int64_t* tables, const int64_t* lens, scalar_t* out, int64_t B,
                   int64_t H, int64_t Hkv, int64_t D, int64_t S, int64_t W, float scale) {
  const int64_t G = H / Hkv;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / Hkv, g = i % Hkv;
      decode_task<scalar_t, D_>(q + (b * H + g * G) * D, k, v, tables + b * W, lens[b],
                                out + (b * H + g * G) * D, G, Hkv, g, D, S, scale, qf, acc,
                                scores);
    }
  });
}

template <typename scalar_t>
void dispatch_head_dim(int64_t D, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                       const int64_t* tables, const int64_t* lens, scalar_t* out, int64_t B,
                       int64_t H, int64_t Hkv, int64_t S, int64_t W, float scale) {
  switch (D) {
#define BLOCKLLM_HEAD_DIM(N) \
  case N: return decode_kernel<scalar_t, N>(q, k, v, tables, lens, out, B, H, Hkv, D, S, W, scale);
    BLOCKLLM_HEAD_DIM(32) BLOCKLLM_HEAD_DIM(64) BLOCKLLM_HEAD_DIM(80) BLOCKLLM_HEAD_DIM(96)
    BLOCKLLM_HEAD_DIM(128) BLOCKLLM_HEAD_DIM(256)
#undef BLOCKLLM_HEAD_DIM
    default: return decode_kernel<scalar_t, 0>(q, k, v, tables, lens, out, B, H, Hkv, D, S, W,
                                               scale);
  }
}

// q: (B, H, D); k_cache, v_cache: (num_pages, S, Hkv, D), contiguous; page_tables: (B, W)
// int64; context_lens: (B,) int64 (0 gives zeros). Returns (B, H, D) in q's dtype.
// Compiled with -ffast-math (vectorized exp): scores are finite; lengths and page ids
// are checked against the table and the pool.
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache,
                        const at::Tensor& v_cache, const at::Tensor& page_tables,
                        const at::Tensor& context_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode: q (B, H, D), caches (pages, page_size, Hkv, D)");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() &&
              q.scalar_type() == v_cache.scalar_type(), "q and the caches share a dtype");
  TORCH_CHECK(page_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong,
              "page tables and context lengths are int64");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t S = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == D && H % Hkv == 0, "head sizes do not match");
  TORCH_CHECK(page_tables.dim() == 2 && context_lens.dim() == 1 && page_tables.size(0) == B &&
              context_lens.size(0) == B, "one row per sequence");
  // the kernel trusts every length and page id it reads: a bookkeeping bug is an error here,
  // not a read outside the pool (O(B * W) integers, nothing beside the attention itself)
  if (B > 0) {
    TORCH_CHECK(context_lens.min().item<int64_t>() >= 0 &&
                context_lens.max().item<int64_t>() <= page_tables.size(1) * k_cache.size(1),
                "paged_decode: a context length exceeds its page table");
    if (page_tables.numel() > 0) {
      TORCH_CHECK(page_tables.min().item<int64_t>() >= 0 &&
                  page_tables.max().item<int64_t>() < k_cache.size(0),
                  "paged_decode: a page id outside the pool");
    }
  }
  auto qc = q.contiguous();
  auto tables = page_tables.contiguous();
  auto lens = context_lens.contiguous();
  auto out = at::empty_like(qc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    dispatch_head_dim<scalar_t>(D, qc.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(),
                                v_cache.data_ptr<scalar_t>(), tables.data_ptr<int64_t>(),
                                lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), B, H, Hkv,
                                S, tables.size(1), static_cast<float>(scale));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(blockllm, m) {
  m.def("paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_tables, "
        "Tensor context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(blockllm, CPU, m) { m.impl("paged_decode", &paged_decode); }

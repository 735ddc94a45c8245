// y = x @ w.T for the few rows of a decode step (CPU, float32): `skinny_linear`.
//
// At a decode step x has 1-16 rows and every weight is read once from memory per step, so the
// matmul is bound by memory bandwidth, not arithmetic. BLAS and oneDNN are built for the other
// case: on 2 Xeon cores (SmolLM2's 30 layers, fp32, 18.6 ms to read at 22.9 GB/s) MKL took
// 20-36 ms for 1-4 rows and oneDNN's packed layout 28-30 ms. Here each weight row streams
// through once, in its stored (out, in) layout, and is reused from cache for every row of x:
// a tile of 4 weight rows times up to 4 rows of x in 16 AVX-512 accumulators, the next tile
// prefetched meanwhile; the next 4 rows of x then pass over the same 16 tiles, now in L2.
// Output rows are split over torch's threads. Measured by benchmarks.matmul_layout: 1-4 rows
// at 0.95-1.07x the read-bandwidth bound on 2 Xeon cores; from ~16 rows compute-bound.
//
// With AVX2 only (`-march=native` on an AMD EPYC Zen 3, say) the same loop runs on 8-float
// registers, 3 rows of x at a time: on 2 EPYC cores 1-4 rows at 1.1-1.25x the bound, 18-21 ms
// against oneDNN's packed layout's 22-29 ms; tied at 24 rows (benchmarks.matmul_layout).
// Without either the loop runs in plain C++ and `skinny_linear_isa()` says "generic": the model
// code then keeps BLAS / oneDNN (models/llama.py), since that loop is not known to be faster.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <string>

namespace {

constexpr int64_t kTile = 4;       // weight rows per tile
constexpr int64_t kMaxRows = 64;   // rows of x this op takes (it is meant for 1-16)
constexpr int64_t kGrain = 64;     // output rows per task
constexpr int64_t kPrefetchTiles = 1;  // the weights of the tile this far ahead are prefetched
// tiles whose weights stay in L2 while x's row groups pass (8 where the CPU is AVX2-only:
// an AMD EPYC's 512 KiB L2 holds 16 tiles of a 1536-column weight but not x's rows beside them;
// 32 rows 79 -> 68 ms for SmolLM2's layers)
#if defined(__AVX512F__)
constexpr int64_t kBlock = 16;
#else
constexpr int64_t kBlock = 8;
#endif

#if defined(__AVX512F__)
// (sum(a), sum(b), sum(c), sum(d)): per 128-bit lane, interleave and add pairwise, then add
// the four lanes
inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
  __m512 v = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(v);
}

// rows m0..m0+MB of y, columns o0..o0+3: weight tile W (4 rows, stride I), x rows X (stride I)
template <int MB>
inline void tile_avx512(const float* X, const float* W, float* Y, int64_t I, int64_t O,
                        int64_t o0) {
  __m512 acc[kTile][MB];
  for (int r = 0; r < kTile; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  const float* w0 = W + o0 * I;
  // the next tile's weights are fetched while this one computes (this one's at the last)
  const float* ahead = o0 + (kPrefetchTiles + 1) * kTile <= O ? w0 + kPrefetchTiles * kTile * I
                                                               : w0;
  int64_t i = 0;
  for (; i + 16 <= I; i += 16) {
    __m512 xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = _mm512_loadu_ps(X + m * I + i);
    for (int r = 0; r < kTile; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + r * I + i), _MM_HINT_T0);
      const __m512 wv = _mm512_loadu_ps(w0 + r * I + i);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  if (i < I) {  // the last columns, masked
    const __mmask16 k = static_cast<__mmask16>((1u << (I - i)) - 1);
    __m512 xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = _mm512_maskz_loadu_ps(k, X + m * I + i);
    for (int r = 0; r < kTile; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(k, w0 + r * I + i);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int m = 0; m < MB; ++m)  // the 4 sums of row m at once (4 horizontal sums in one)
    _mm_storeu_ps(Y + m * O + o0, sum4(acc[0][m], acc[1][m], acc[2][m], acc[3][m]));
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__)
// (sum(a), sum(b), sum(c), sum(d)) of 8-float vectors: two rounds of pairwise adds, then the
// two 128-bit lanes
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// The AVX-512 tile's loop on AVX2's 16 8-float registers: 4 weight rows times up to 3 rows of
// x is 12 accumulators, 3 x vectors and the weight vector.
template <int MB>
inline void tile_avx2(const float* X, const float* W, float* Y, int64_t I, int64_t O,
                      int64_t o0) {
  __m256 acc[kTile][MB];
  for (int r = 0; r < kTile; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_setzero_ps();
  const float* w0 = W + o0 * I;
  const float* ahead = o0 + (kPrefetchTiles + 1) * kTile <= O ? w0 + kPrefetchTiles * kTile * I
                                                               : w0;
  int64_t i = 0;
  for (; i + 8 <= I; i += 8) {
    __m256 xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = _mm256_loadu_ps(X + m * I + i);
    for (int r = 0; r < kTile; ++r) {
      if ((i & 15) == 0)  // one prefetch per 64-byte line
        _mm_prefetch(reinterpret_cast<const char*>(ahead + r * I + i), _MM_HINT_T0);
      const __m256 wv = _mm256_loadu_ps(w0 + r * I + i);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  if (i < I) {  // the last columns, masked
    alignas(32) static const int32_t ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                 0,  0,  0,  0,  0,  0,  0,  0};
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ones + 8 - (I - i)));
    __m256 xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = _mm256_maskload_ps(X + m * I + i, k);
    for (int r = 0; r < kTile; ++r) {
      const __m256 wv = _mm256_maskload_ps(w0 + r * I + i, k);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int m = 0; m < MB; ++m)
    _mm_storeu_ps(Y + m * O + o0, sum4(acc[0][m], acc[1][m], acc[2][m], acc[3][m]));
}
#endif

// the same tile in plain C++ (any CPU; also the last output rows when O % 4 != 0)
inline void tile_generic(const float* X, const float* W, float* Y, int64_t I, int64_t O,
                         int64_t o0, int64_t rows, int64_t M) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < rows; ++r) {
      const float* w = W + (o0 + r) * I;
      const float* x = X + m * I;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < I; ++i) s += w[i] * x[i];
      Y[m * O + o0 + r] = s;
    }
}

// tiles t0..t1 of y's columns, in blocks of kBlock tiles: each group of 4 rows of x runs over
// a block's tiles before the next group does, so that group stays in L1 while the block's
// weights (read from memory by the first group) stay in L2
inline void tiles(const float* X, const float* W, float* Y, int64_t I, int64_t O, int64_t t0,
                  int64_t t1, int64_t M) {
  for (int64_t b = t0; b < t1; b += kBlock) {
    const int64_t e = std::min(t1, b + kBlock);
#if defined(__AVX512F__)
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
      for (int64_t t = b; t < e; ++t) tile_avx512<4>(X + m * I, W, Y + m * O, I, O, t * kTile);
    for (int64_t t = b; t < e; ++t) switch (M - m) {
        case 3: tile_avx512<3>(X + m * I, W, Y + m * O, I, O, t * kTile); break;
        case 2: tile_avx512<2>(X + m * I, W, Y + m * O, I, O, t * kTile); break;
        case 1: tile_avx512<1>(X + m * I, W, Y + m * O, I, O, t * kTile); break;
        default: break;
      }
#elif defined(__AVX2__)
    // groups of 3 rows, the last 4 as 2 + 2: a 1-row pass reads 4 weight vectors from L2 per
    // 4 FMAs, which L2 cannot feed
    for (int64_t m = 0; m < M;) {
      const int64_t left = M - m, mb = left == 4 || left == 2 ? 2 : left == 1 ? 1 : 3;
      for (int64_t t = b; t < e; ++t) {
        if (mb == 3) tile_avx2<3>(X + m * I, W, Y + m * O, I, O, t * kTile);
        else if (mb == 2) tile_avx2<2>(X + m * I, W, Y + m * O, I, O, t * kTile);
        else tile_avx2<1>(X + m * I, W, Y + m * O, I, O, t * kTile);
      }
      m += mb;
    }
#else
    for (int64_t t = b; t < e; ++t) tile_generic(X, W, Y, I, O, t * kTile, kTile, M);
#endif
  }
}

// x (M, I), w (O, I), both float32 and contiguous -> y (M, O)
at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "skinny_linear: float32 only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous() && w.is_contiguous(),
              "skinny_linear: contiguous 2-D x (rows, in) and w (out, in)");
  const int64_t M = x.size(0), I = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == I, "skinny_linear: x has ", I, " columns, w ", w.size(1));
  TORCH_CHECK(M <= kMaxRows, "skinny_linear: at most ", kMaxRows, " rows (got ", M, ")");
  at::Tensor y = at::empty({M, O}, x.options());
  if (M == 0 || O == 0) return y;
  if (I == 0) return y.zero_();
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t full = O / kTile * kTile;
  at::parallel_for(0, full / kTile, kGrain / kTile, [&](int64_t t0, int64_t t1) {
    tiles(X, W, Y, I, O, t0, t1, M);
  });
  if (full < O) tile_generic(X, W, Y, I, O, full, O - full, M);
  return y;
}

std::string skinny_linear_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "generic";
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blockllm, m) {
  m.def("skinny_linear(Tensor x, Tensor w) -> Tensor");
  m.def("skinny_linear_isa() -> str");
}

TORCH_LIBRARY_IMPL(blockllm, CPU, m) { m.impl("skinny_linear", &skinny_linear); }

TORCH_LIBRARY_IMPL(blockllm, CatchAll, m) { m.impl("skinny_linear_isa", &skinny_linear_isa); }

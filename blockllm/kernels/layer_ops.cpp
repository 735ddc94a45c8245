// Fused elementwise ops of a decoder layer (CPU), each one pass over its rows instead of the
// 3-16 small torch ops it replaces (at a decode step, per-op dispatch cost more than the
// arithmetic). Numerics follow transformers' Llama: RMSNorm in float32 then cast, SiLU gate,
// rotate-half RoPE in the model's dtype; float accumulation whatever the dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

namespace {

constexpr int64_t kRowGrain = 4;  // rows per task: small batches stay on one thread

template <typename scalar_t>
void norm_row(const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t h, float eps) {
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t d = 0; d < h; ++d) {
    const float v = static_cast<float>(x[d]);
    sq += v * v;
  }
  const float inv = 1.f / std::sqrt(sq / static_cast<float>(h) + eps);
  for (int64_t d = 0; d < h; ++d) {  // weight * (x * inv).to(dtype), as transformers
    const scalar_t n = static_cast<scalar_t>(static_cast<float>(x[d]) * inv);
    y[d] = static_cast<scalar_t>(static_cast<float>(w[d]) * static_cast<float>(n));
  }
}

template <typename scalar_t>
void add_row(scalar_t* r, const scalar_t* x, int64_t h) {
#pragma omp simd
  for (int64_t d = 0; d < h; ++d)
    r[d] = static_cast<scalar_t>(static_cast<float>(r[d]) + static_cast<float>(x[d]));
}

template <typename scalar_t>
void silu_mul_row(const scalar_t* g, const scalar_t* u, scalar_t* o, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gv = static_cast<float>(g[i]);
    // silu in the dtype, then the product in the dtype (as F.silu(g) * u)
    const scalar_t s = static_cast<scalar_t>(gv / (1.f + std::exp(-gv)));
    o[i] = static_cast<scalar_t>(static_cast<float>(s) * static_cast<float>(u[i]));
  }
}

template <typename scalar_t>
void rope_head(scalar_t* x, const scalar_t* c, const scalar_t* s, int64_t half) {
#pragma omp simd
  for (int64_t d = 0; d < half; ++d) {  // x * cos + rotate_half(x) * sin, in the dtype
    const float x1 = static_cast<float>(x[d]), x2 = static_cast<float>(x[d + half]);
    const scalar_t a1 = static_cast<scalar_t>(x1 * static_cast<float>(c[d]));
    const scalar_t b1 = static_cast<scalar_t>(-x2 * static_cast<float>(s[d]));
    const scalar_t a2 = static_cast<scalar_t>(x2 * static_cast<float>(c[d + half]));
    const scalar_t b2 = static_cast<scalar_t>(x1 * static_cast<float>(s[d + half]));
    x[d] = static_cast<scalar_t>(static_cast<float>(a1) + static_cast<float>(b1));
    x[d + half] = static_cast<scalar_t>(static_cast<float>(a2) + static_cast<float>(b2));
  }
}

// x: (T, h) contiguous; returns RMSNorm(x) * weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.is_contiguous() &&
              weight.numel() == x.size(1), "rms_norm: x (T, h), weight (h,)");
  auto y = at::empty_like(x);
  const int64_t T = x.size(0), h = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, T, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) norm_row(xp + t * h, wp, yp + t * h, h, float(eps));
    });
  });
  return y;
}

// residual += x (in place, the residual stream); returns RMSNorm(residual) * weight.
at::Tensor add_rms_norm_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                         double eps) {
  TORCH_CHECK(residual.dim() == 2 && residual.is_contiguous() && x.is_contiguous() &&
              x.sizes() == residual.sizes() && weight.is_contiguous() &&
              weight.numel() == x.size(1), "add_rms_norm_: (T, h) contiguous, weight (h,)");
  auto y = at::empty_like(x);
  const int64_t T = x.size(0), h = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm_",
                                  [&] {
    scalar_t* rp = residual.data_ptr<scalar_t>();
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, T, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        add_row(rp + t * h, xp + t * h, h);
        norm_row(rp + t * h, wp, yp + t * h, h, float(eps));
      }
    });
  });
  return y;
}

// gate_up: (T, 2I) = [gate | up]; returns silu(gate) * up, (T, I).
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "silu_mul: (T, 2I) contiguous");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  auto y = at::empty({T, I}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul",
                                  [&] {
    const scalar_t* gp = gate_up.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, T, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        silu_mul_row(gp + t * 2 * I, gp + t * 2 * I + I, yp + t * I, I);
    });
  });
  return y;
}

// qkv: (T, (H + 2 Hkv) D) contiguous, the fused projection's output; rotates its first H + Hkv
// heads (q and k) in place by cos, sin: (T, D) in the same dtype (rotate-half RoPE).
at::Tensor rope_qk_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                    int64_t n_heads, int64_t n_kv_heads) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && cos.is_contiguous() &&
              sin.is_contiguous() && cos.dim() == 2, "rope_qk_: qkv (T, .), cos/sin (T, D)");
  const int64_t T = qkv.size(0), D = cos.size(1), half = D / 2;
  const int64_t width = qkv.size(1), heads = n_heads + n_kv_heads;
  TORCH_CHECK(width == (n_heads + 2 * n_kv_heads) * D && cos.size(0) == T &&
              sin.sizes() == cos.sizes() && D % 2 == 0, "rope_qk_: shapes");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_qk_", [&] {
    scalar_t* xp = qkv.data_ptr<scalar_t>();
    const scalar_t *cp = cos.data_ptr<scalar_t>(), *sp = sin.data_ptr<scalar_t>();
    at::parallel_for(0, T, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const scalar_t *c = cp + t * D, *s = sp + t * D;
        for (int64_t hd = 0; hd < heads; ++hd) rope_head(xp + t * width + hd * D, c, s, half);
      }
    });
  });
  return qkv;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blockllm, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) residual, Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("rope_qk_(Tensor(a!) qkv, Tensor cos, Tensor sin, int n_heads, int n_kv_heads) -> "
        "Tensor(a!)");
}

TORCH_LIBRARY_IMPL(blockllm, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm_", &add_rms_norm_);
  m.impl("silu_mul", &silu_mul);
  m.impl("rope_qk_", &rope_qk_);
}

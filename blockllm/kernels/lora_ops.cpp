// LoRA deltas of a batch whose rows use different adapters, in one op per (layer, fused
// module group): y[t] += (A_a x[t]) Bt_a for row t's adapter a (a BGMV, as Punica and vLLM's
// CPU path do). It replaces, per adapter in the batch, a row gather, two small matmuls and an
// index_add: at a decode step each of those cost more in dispatch than in arithmetic
// (measured: 17 of a 60 ms step, base + 2 adapters on 2 cores). float32; other dtypes and
// devices take the torch path (models/lora.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

// y (T, out) += per row t with adapter k = row_adapter[t] >= 0: (a[k] (r, in) @ x[t]) @ bt[k]
// (r, out); rows with -1 are left alone.
at::Tensor lora_delta_(at::Tensor y, const at::Tensor& x, at::TensorList a, at::TensorList bt,
                       const at::Tensor& row_adapter) {
  TORCH_CHECK(y.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat,
              "lora_delta_: float32 only");
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.is_contiguous() && x.is_contiguous(),
              "lora_delta_: contiguous 2-D x and y");
  const int64_t T = x.size(0), in = x.size(1), out = y.size(1);
  TORCH_CHECK(y.size(0) == T && row_adapter.numel() == T &&
              row_adapter.scalar_type() == at::kLong && row_adapter.is_contiguous(),
              "lora_delta_: one int64 adapter index per row");
  TORCH_CHECK(a.size() == bt.size(), "lora_delta_: an A and a B per adapter");
  std::vector<const float*> ap, bp;
  std::vector<int64_t> rank;
  int64_t max_r = 1;
  for (size_t k = 0; k < a.size(); ++k) {
    TORCH_CHECK(a[k].scalar_type() == at::kFloat && bt[k].scalar_type() == at::kFloat &&
                a[k].is_contiguous() && bt[k].is_contiguous() && a[k].size(1) == in &&
                bt[k].size(1) == out && a[k].size(0) == bt[k].size(0),
                "lora_delta_: A (r, in) and Bt (r, out), float32, contiguous");
    ap.push_back(a[k].data_ptr<float>());
    bp.push_back(bt[k].data_ptr<float>());
    rank.push_back(a[k].size(0));
    max_r = std::max(max_r, a[k].size(0));
  }
  const int64_t* idx = row_adapter.data_ptr<int64_t>();
  const int64_t n_adapters = static_cast<int64_t>(a.size());
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(idx[t] < n_adapters, "lora_delta_: adapter index out of range");
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> xa(max_r);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = idx[t];
      if (k < 0) continue;
      const float* A = ap[k];
      const float* Bt = bp[k];
      const float* xt = X + t * in;
      float* yt = Y + t * out;
      for (int64_t j = 0; j < rank[k]; ++j) {
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < in; ++i) s += A[j * in + i] * xt[i];
        xa[j] = s;
      }
      for (int64_t j = 0; j < rank[k]; ++j) {
        const float c = xa[j];
        const float* b = Bt + j * out;
#pragma omp simd
        for (int64_t o = 0; o < out; ++o) yt[o] += c * b[o];
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blockllm, m) {
  m.def("lora_delta_(Tensor(a!) y, Tensor x, Tensor[] a, Tensor[] bt, Tensor row_adapter) -> "
        "Tensor(a!)");
}

TORCH_LIBRARY_IMPL(blockllm, CPU, m) { m.impl("lora_delta_", &lora_delta_); }

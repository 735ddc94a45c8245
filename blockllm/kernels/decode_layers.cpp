// A decode step through every layer of a decoder block in one call (CPU, float32): the same
// ops in the same order as models.llama's Python path (fused norms, the skinny matmul up to
// `skinny_rows` rows and MKL beyond, RoPE, the KV write, paged decode attention), so the
// tokens are the same; what goes is the Python and the per-op dispatch between them, about
// ten calls per layer (measured at ~3 ms of a 22 ms SmolLM2 token on 2 cores). LoRA rows add
// their adapters' deltas after each fused matmul with the op the Python path calls
// (lora_ops.cpp's lora_delta_), so adapter steps take one call too.
// The ops are reached through the dispatcher: they live in the other translation units.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

namespace {

using at::Tensor;
using at::TensorList;

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// x (T, hidden) contiguous: the block's input. Per layer j: in_norm[j], qkv[j] ((H + 2 Hkv) D,
// hidden), o[j], post_norm[j], gate_up[j] (2 I, hidden), down[j], all plain and contiguous.
// kv: the block's pool (layers, 2, pages, page_size, Hkv, D); slots (T,), tables (T, W),
// lens (T,) int64: one decode per row; cos, sin (T, D). LoRA: lora_a, lora_bt hold K adapters'
// joint A (r, in) and Bt (r, out) per layer and fused matmul (q/k/v, o, gate/up, down; rank 0
// where an adapter has none), adapter-major: [(k L + j) 4 + m]; row_adapter (T,) each row's
// adapter k or -1; none of the three when K = 0. Returns the block's output stream.
Tensor decode_layers(const Tensor& x, TensorList in_norm, TensorList qkv, TensorList o,
                     TensorList post_norm, TensorList gate_up, TensorList down, Tensor& kv,
                     const Tensor& slots, const Tensor& tables, const Tensor& lens,
                     const Tensor& cos, const Tensor& sin, TensorList lora_a,
                     TensorList lora_bt, const Tensor& row_adapter, int64_t n_heads,
                     int64_t n_kv, double eps, double scale, int64_t skinny_rows) {
  static auto rms = handle<Tensor(const Tensor&, const Tensor&, double)>("blockllm::rms_norm");
  static auto add_rms = handle<Tensor(Tensor&, const Tensor&, const Tensor&, double)>(
      "blockllm::add_rms_norm_");
  static auto rope = handle<Tensor(Tensor&, const Tensor&, const Tensor&, int64_t, int64_t)>(
      "blockllm::rope_qk_");
  static auto silu_mul = handle<Tensor(const Tensor&)>("blockllm::silu_mul");
  static auto skinny = handle<Tensor(const Tensor&, const Tensor&)>("blockllm::skinny_linear");
  static auto attend = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, double)>("blockllm::paged_decode");
  static auto lora = handle<Tensor(Tensor, const Tensor&, TensorList, TensorList,
                                   const Tensor&)>("blockllm::lora_delta_");
  const int64_t L = static_cast<int64_t>(in_norm.size());
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "decode_layers: x (T, hidden) contiguous float32");
  TORCH_CHECK(qkv.size() == L && o.size() == L && post_norm.size() == L &&
              gate_up.size() == L && down.size() == L, "decode_layers: one weight per layer");
  TORCH_CHECK(kv.dim() == 6 && kv.size(0) == L && kv.size(1) == 2 && kv.is_contiguous(),
              "decode_layers: kv (layers, 2, pages, page_size, Hkv, D) contiguous");
  const int64_t T = x.size(0), D = kv.size(5), qd = n_heads * D, kvd = n_kv * D;
  TORCH_CHECK(kv.size(4) == n_kv && slots.size(0) == T && lens.size(0) == T &&
              tables.size(0) == T && cos.size(0) == T && cos.size(1) == D,
              "decode_layers: one decode per row");
  const int64_t n_lora = static_cast<int64_t>(lora_a.size());
  TORCH_CHECK(lora_bt.size() == lora_a.size() && (L == 0 || n_lora % (4 * L) == 0) &&
              (n_lora == 0 || row_adapter.numel() == T),
              "decode_layers: an A and a Bt per adapter, layer and fused matmul; a row index each");
  const int64_t K = L == 0 ? 0 : n_lora / (4 * L);
  auto lin = [&](const Tensor& a, const Tensor& w) {
    return a.size(0) <= skinny_rows ? skinny.call(a, w) : at::linear(a, w);
  };
  std::vector<Tensor> la(K), lb(K);
  auto delta = [&](Tensor y, const Tensor& in, int64_t j, int64_t m) {  // y += its rows' deltas
    if (K == 0) return y;
    for (int64_t k = 0; k < K; ++k) {
      la[k] = lora_a[(k * L + j) * 4 + m];
      lb[k] = lora_bt[(k * L + j) * 4 + m];
    }
    return lora.call(y, in, la, lb, row_adapter);
  };
  Tensor residual = x.clone(at::MemoryFormat::Contiguous);
  Tensor h;
  for (int64_t j = 0; j < L; ++j) {
    h = j == 0 ? rms.call(residual, in_norm[0], eps)
               : add_rms.call(residual, h, in_norm[j], eps);
    Tensor fused = delta(lin(h, qkv[j]), h, j, 0);  // (T, qd + 2 kvd)
    rope.call(fused, cos, sin, n_heads, n_kv);
    const Tensor q = fused.narrow(1, 0, qd).view({T, n_heads, D});
    const Tensor k = fused.narrow(1, qd, kvd).view({T, n_kv, D});
    const Tensor v = fused.narrow(1, qd + kvd, kvd).view({T, n_kv, D});
    const Tensor layer = kv[j];  // (2, pages, page_size, Hkv, D)
    Tensor flat = layer.view({2, -1, n_kv, D});
    flat[0].index_copy_(0, slots, k);
    flat[1].index_copy_(0, slots, v);
    const Tensor out = attend.call(q, layer[0], layer[1], tables, lens, scale).reshape({T, qd});
    h = add_rms.call(residual, delta(lin(out, o[j]), out, j, 1), post_norm[j], eps);
    const Tensor act = silu_mul.call(delta(lin(h, gate_up[j]), h, j, 2));
    h = delta(lin(act, down[j]), act, j, 3);
  }
  return L == 0 ? residual : residual.add_(h);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blockllm, m) {
  m.def("decode_layers(Tensor x, Tensor[] in_norm, Tensor[] qkv, Tensor[] o, "
        "Tensor[] post_norm, Tensor[] gate_up, Tensor[] down, Tensor(a!) kv, Tensor slots, "
        "Tensor tables, Tensor lens, Tensor cos, Tensor sin, Tensor[] lora_a, "
        "Tensor[] lora_bt, Tensor row_adapter, int n_heads, int n_kv, float eps, float scale, "
        "int skinny_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(blockllm, CPU, m) { m.impl("decode_layers", &decode_layers); }

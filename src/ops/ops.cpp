// libtorch operations that tch 0.24 does not bind, behind a small C ABI (src/train/ops.rs).
// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` pointers are. Every entry
// point catches C++ exceptions and returns them as a malloc'd message (null on success) that
// the caller releases with tb_free.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include "ffi.h"
#include <ATen/Parallel.h>
#include <ATen/ops/_fused_adamw.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

using tb::list;

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// ---- Few rows times a large weight: out (rows, n) = h (rows, k) W^T, W (n, k), float32. ----
// A decode step multiplies a handful of rows by every weight, which streams from memory. MKL
// computes this at a third of its GEMM rate for 8 rows (Gemma-3-270M's head, 262,144 x 640,
// two threads: 45 ms) and its hardware prefetch alone leaves the stream short of the memory
// bandwidth. Here each thread walks its share of W's rows once, a block of them against up
// to 8 rows of h held in L1, and prefetches W a few rows ahead into L2: 18-22 ms for the
// same head (BENCHMARKS.md). Each output is summed wholly by one thread in a fixed
// order, so the result does not depend on the thread count. k must be a multiple of 16.
namespace {
constexpr int64_t kAhead = 16;  // rows of W prefetched ahead (16 x 2.5 KB for k = 640)

#if defined(__x86_64__)
template <int WB, int RB>
__attribute__((target("avx512f"))) void block_avx512(const float* w, const float* h, float* out, int64_t n_all,
                                                      int64_t k_all, int64_t n) {
  __m512 acc[WB][RB];
  for (int i = 0; i < WB; i++)
    for (int r = 0; r < RB; r++) acc[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_all; k += 16) {
    __m512 x[WB];
    for (int i = 0; i < WB; i++) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (n + i + kAhead) * k_all + k), _MM_HINT_T1);
      x[i] = _mm512_loadu_ps(w + (n + i) * k_all + k);
    }
    for (int r = 0; r < RB; r++) {
      __m512 y = _mm512_loadu_ps(h + r * k_all + k);
      for (int i = 0; i < WB; i++) acc[i][r] = _mm512_fmadd_ps(x[i], y, acc[i][r]);
    }
  }
  for (int i = 0; i < WB; i++)
    for (int r = 0; r < RB; r++) out[r * n_all + n + i] = _mm512_reduce_add_ps(acc[i][r]);
}

template <int RB>
__attribute__((target("avx2,fma"))) void block_avx2(const float* w, const float* h, float* out, int64_t n_all,
                                                     int64_t k_all, int64_t n) {
  __m256 acc[RB];
  for (int r = 0; r < RB; r++) acc[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < k_all; k += 8) {
    if ((k & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (n + kAhead) * k_all + k), _MM_HINT_T1);
    __m256 x = _mm256_loadu_ps(w + n * k_all + k);
    for (int r = 0; r < RB; r++) acc[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(h + r * k_all + k), acc[r]);
  }
  for (int r = 0; r < RB; r++) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    out[r * n_all + n] = _mm_cvtss_f32(s);
  }
}

// W's rows [n0, n1) against RB rows of h: blocks of 4 rows of W with AVX-512 (16 + 4 + 1 of
// its 32 registers for 8 rows of h), one row at a time with AVX2 (8 + 2 of 16).
template <int RB>
void rows_span(bool avx512, const float* w, const float* h, float* out, int64_t n_all, int64_t k_all, int64_t n0,
               int64_t n1) {
  int64_t n = n0;
  if (avx512) {
    for (; n + 4 <= n1; n += 4) block_avx512<4, RB>(w, h, out, n_all, k_all, n);
    for (; n < n1; n++) block_avx512<1, RB>(w, h, out, n_all, k_all, n);
  } else {
    for (; n < n1; n++) block_avx2<RB>(w, h, out, n_all, k_all, n);
  }
}

using Span = void (*)(bool, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);
constexpr Span kSpans[8] = {rows_span<1>, rows_span<2>, rows_span<3>, rows_span<4>,
                            rows_span<5>, rows_span<6>, rows_span<7>, rows_span<8>};
#endif
}  // namespace

extern "C" {

// 2 when the CPU has AVX-512, 1 with AVX2 and FMA, 0 when tb_few_rows_mm cannot run here.
int tb_few_rows_isa() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

// out (rows, n) = h (rows, k) W^T for contiguous float32 CPU tensors, k a multiple of 16,
// with the kernel `isa` names (2 AVX-512, 1 AVX2; at most what tb_few_rows_isa() says, so
// a test can run the AVX2 kernel on an AVX-512 machine). Rows of h go in passes of 8.
char* tb_few_rows_mm(at::Tensor* h, at::Tensor* w, at::Tensor* out, int isa) {
  try {
    TORCH_CHECK(isa >= 1 && isa <= tb_few_rows_isa(), "kernel ", isa, " cannot run on this CPU (it has ", tb_few_rows_isa(), ")");
    TORCH_CHECK(h->dim() == 2 && w->dim() == 2 && out->dim() == 2, "few_rows_mm takes matrices");
    int64_t rows = h->size(0), k_all = h->size(1), n_all = w->size(0);
    TORCH_CHECK(w->size(1) == k_all && k_all % 16 == 0 && out->size(0) == rows && out->size(1) == n_all,
                "shapes ", h->sizes(), " x ", w->sizes(), "^T -> ", out->sizes());
    for (const at::Tensor* t : {h, w, out})
      TORCH_CHECK(t->is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                  "few_rows_mm takes contiguous float32 CPU tensors");
#if defined(__x86_64__)
    const float* wp = w->data_ptr<float>();
    const float* hp = h->data_ptr<float>();
    float* op = out->data_ptr<float>();
    // A grain of 64 rows of W (160 KB for k = 640): a small weight stays on one thread. Past 8
    // rows of h, each 64 rows of W meet every pass while they are still in L2.
    at::parallel_for(0, n_all, 64, [&](int64_t begin, int64_t end) {
      for (int64_t n0 = begin; n0 < end; n0 += 64) {
        int64_t n1 = std::min(end, n0 + 64);
        for (int64_t r0 = 0; r0 < rows; r0 += 8) {
          int64_t rb = std::min<int64_t>(8, rows - r0);
          kSpans[rb - 1](isa == 2, wp, hp + r0 * k_all, op + r0 * n_all, n_all, k_all, n0, n1);
        }
      }
    });
#endif
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}


// Which kernels scaled_dot_product_attention may choose on CUDA (torch.backends.cuda's
// enable_flash_sdp, enable_mem_efficient_sdp, enable_math_sdp, enable_cudnn_sdp).
void tb_sdp_backends(bool flash, bool mem_efficient, bool math, bool cudnn) {
  auto& c = at::globalContext();
  c.setSDPUseFlash(flash);
  c.setSDPUseMemEfficient(mem_efficient);
  c.setSDPUseMath(math);
  c.setSDPUseCuDNN(cudnn);
}

void tb_free(char* p) {
  free(p);
}

// torch.optim.AdamW(fused=True)'s kernel, one weight-decay group: `at::_fused_adamw_` updates
// params, exp_avgs and exp_avg_sqs in place. `step` is the update's number (1 for the first),
// as the float tensor the kernel reads for every parameter (Python's state_steps, already
// incremented).
char* tb_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                     size_t n, at::Tensor* step, double lr, double beta1, double beta2, double weight_decay,
                     double eps) {
  try {
    std::vector<at::Tensor> steps(n, *step);
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n), {}, steps, lr, beta1,
                      beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Adds `grad` to `var`'s gradient as autograd's AccumulateGrad does: in place when it has
// one, otherwise `grad` becomes it; then runs its post-accumulate-grad hook, if any. A null `grad` removes the gradient (zero_grad with
// set_to_none, so the next backward writes the gradient instead of adding it to zeros).
char* tb_accumulate_grad(at::Tensor* var, at::Tensor* grad) {
  try {
    at::Tensor& current = var->mutable_grad();
    if (grad == nullptr) {
      current.reset();
      return nullptr;
    }
    TORCH_CHECK(grad->sizes().equals(var->sizes()) && grad->scalar_type() == var->scalar_type() &&
                    grad->device() == var->device(),
                "a ", grad->scalar_type(), " gradient of shape ", grad->sizes(), " on ", grad->device(), " for a ",
                var->scalar_type(), " parameter of shape ", var->sizes(), " on ", var->device());
    if (current.defined()) {
      current.add_(*grad);
    } else {
      current = grad->detach();
    }
    // As AccumulateGrad does: the parameter's post-accumulate hook (the data-parallel
    // reducer's, src/train/dist.cpp) learns that its gradient grew.
    if (auto& hook = torch::autograd::impl::post_acc_grad_hooks(*var)) (*hook)(*var);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}
}

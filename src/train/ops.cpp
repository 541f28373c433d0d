// libtorch operations that tch 0.24 does not bind, behind a small C ABI (src/train/ops.rs).
// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` pointers are. Every entry
// point catches C++ exceptions and returns them as a malloc'd message (null on success) that
// the caller releases with tb_free.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include "ffi.h"
#include <ATen/ops/_fused_adamw.h>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

using tb::list;

extern "C" {

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
// one, otherwise `grad` becomes it. A null `grad` removes the gradient (zero_grad with
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
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}
}

//! libtorch operations that tch 0.24 does not bind, compiled by build.rs from ops.cpp:
//! torch's fused AdamW kernel and writing a parameter's gradient directly (zero_grad with
//! `set_to_none`, and adding a gradient computed outside autograd); and one CPU kernel
//! libtorch lacks, few rows times a large weight (a decode step's projections).
use anyhow::{bail, Result};
use std::ffi::{c_char, c_void, CStr};
use tch::Tensor;

type T = *mut c_void;

extern "C" {
    fn tb_sdp_backends(flash: bool, mem_efficient: bool, math: bool, cudnn: bool);
    fn tb_free(p: *mut c_char);
    fn tb_fused_adamw(params: *const T, grads: *const T, exp_avgs: *const T, exp_avg_sqs: *const T, n: usize, step: T, lr: f64, beta1: f64, beta2: f64, weight_decay: f64, eps: f64) -> *mut c_char;
    fn tb_accumulate_grad(var: T, grad: T) -> *mut c_char;
    fn tb_few_rows_isa() -> i32;
    fn tb_few_rows_mm(h: T, w: T, out: T, isa: i32) -> *mut c_char;
}

/// Which kernels `scaled_dot_product_attention` may choose on CUDA, as
/// `torch.backends.cuda.enable_{flash,mem_efficient,math,cudnn}_sdp` set them.
pub fn sdp_backends(flash: bool, mem_efficient: bool, math: bool, cudnn: bool) {
    // SAFETY: sets four flags of libtorch's global context; no pointers cross.
    unsafe { tb_sdp_backends(flash, mem_efficient, math, cudnn) }
}

fn ptr(t: &Tensor) -> T {
    t.as_ptr() as T
}

/// Turns ops.cpp's error message (null: success) into a `Result`.
fn check(what: &str, err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string from strdup, released once here.
    let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { tb_free(err) };
    bail!("{what}: {}", text.lines().next().unwrap_or("libtorch error"))
}

/// One weight-decay group of `torch.optim.AdamW(fused=True)`: `params`, `exp_avgs` and
/// `exp_avg_sqs` are updated in place from `grads` (all float32, contiguous, one device).
/// `step` is a float tensor on that device holding this update's number (1 for the first).
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(params: &[Tensor], grads: &[Tensor], exp_avgs: &[Tensor], exp_avg_sqs: &[Tensor], step: &Tensor, lr: f64, betas: [f64; 2], weight_decay: f64, eps: f64) -> Result<()> {
    let n = params.len();
    if grads.len() != n || exp_avgs.len() != n || exp_avg_sqs.len() != n {
        bail!("fused AdamW: {n} parameters but {} gradients, {} and {} moments", grads.len(), exp_avgs.len(), exp_avg_sqs.len());
    }
    let ptrs = |ts: &[Tensor]| ts.iter().map(ptr).collect::<Vec<_>>();
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: every pointer is a live at::Tensor owned by the slices above for the whole call.
    let err = unsafe { tb_fused_adamw(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), n, ptr(step), lr, betas[0], betas[1], weight_decay, eps) };
    check("fused AdamW", err)
}

/// Adds `grad` to `var`'s gradient, in place, or makes it the gradient when `var` has none.
pub fn accumulate_grad(var: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: both pointers are live at::Tensors for the call.
    check("accumulating a gradient", unsafe { tb_accumulate_grad(ptr(var), ptr(grad)) })
}

/// Removes `var`'s gradient (torch's `zero_grad(set_to_none=True)`).
pub fn clear_grad(var: &Tensor) {
    // SAFETY: `var` is a live at::Tensor; resetting a gradient does not throw.
    let err = unsafe { tb_accumulate_grad(ptr(var), std::ptr::null_mut()) };
    check("clearing a gradient", err).expect("resetting a gradient cannot fail");
}

/// The best few-rows kernel this CPU runs: 2 (AVX-512), 1 (AVX2 and FMA) or 0 (none).
fn few_rows_isa() -> i32 {
    static ISA: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    // SAFETY: reads CPU feature flags; no pointers cross.
    *ISA.get_or_init(|| unsafe { tb_few_rows_isa() })
}

/// Whether `few_rows_mm` can run on this CPU (x86-64 with AVX2 and FMA, or AVX-512).
pub fn few_rows_available() -> bool {
    few_rows_isa() > 0
}

/// `h W^T` (rows, n) for `h` (rows, k) and `w` (n, k): contiguous float32 CPU matrices with
/// `k` a multiple of 16, where `few_rows_available()`. Streams `w` once per 8 rows of `h`
/// (ops.cpp says why this beats MKL for a decode step's few rows).
pub fn few_rows_mm(h: &Tensor, w: &Tensor) -> Result<Tensor> {
    few_rows_mm_with(h, w, few_rows_isa())
}

/// `few_rows_mm` with the kernel `isa` names (1 AVX2, 2 AVX-512), at most the CPU's best.
fn few_rows_mm_with(h: &Tensor, w: &Tensor, isa: i32) -> Result<Tensor> {
    let out = Tensor::empty([h.size()[0], w.size()[0]], (h.kind(), h.device()));
    // SAFETY: the three pointers are live at::Tensors for the call; ops.cpp checks their
    // shapes, dtypes, devices and layout before reading or writing any data.
    check("few_rows_mm", unsafe { tb_few_rows_mm(ptr(h), ptr(w), ptr(&out), isa) })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn gradients_are_set_added_and_cleared() {
        let w = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        assert!(!w.grad().defined());
        accumulate_grad(&w, &Tensor::from_slice(&[1f32, 2., 3.])).unwrap();
        accumulate_grad(&w, &Tensor::from_slice(&[1f32, 1., 1.])).unwrap();
        (&w * Tensor::from_slice(&[10f32, 0., 0.])).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![12., 3., 4.]);
        clear_grad(&w);
        assert!(!w.grad().defined());
        let err = accumulate_grad(&w, &Tensor::from_slice(&[1f32, 2.])).unwrap_err().to_string();
        assert!(err.starts_with("accumulating a gradient: a Float gradient of shape [2] on cpu for a Float parameter of shape [3]"), "{err}");
        assert!(!w.grad().defined());
    }

    #[test]
    fn few_rows_mm_is_the_matrix_product_in_float64() {
        if !few_rows_available() {
            return;
        }
        tch::manual_seed(0);
        // Both kernels this CPU runs (AVX2 everywhere the kernel runs, AVX-512 here). Rows in
        // one pass, in two passes and a partial third; W with a tail of 3 rows past the blocks
        // of 4 and more rows than one thread's grain.
        for isa in 1..=few_rows_isa() {
            for (rows, n) in [(1, 1027), (3, 64), (8, 515), (19, 1031)] {
                let h = Tensor::randn([rows, 48], (Kind::Float, tch::Device::Cpu));
                let w = Tensor::randn([n, 48], (Kind::Float, tch::Device::Cpu));
                let got = few_rows_mm_with(&h, &w, isa).unwrap();
                let want = h.to_kind(Kind::Double).mm(&w.to_kind(Kind::Double).tr());
                assert_eq!(got.size(), vec![rows, n]);
                let err = (got.to_kind(Kind::Double) - &want).abs().max().double_value(&[]);
                // 48 products of unit normals: float32 rounding is a few 1e-6; a wrong element is O(1).
                assert!(err < 2e-5, "kernel {isa}, {rows} x {n}: {err}");
            }
        }
        let h = Tensor::zeros([2, 16], (Kind::Float, tch::Device::Cpu));
        let err = few_rows_mm_with(&h, &h, 3).unwrap_err().to_string();
        assert!(err.starts_with("few_rows_mm: kernel 3 cannot run on this CPU"), "{err}");
        let err = few_rows_mm(&Tensor::zeros([2, 40], (Kind::Float, tch::Device::Cpu)), &Tensor::zeros([4, 40], (Kind::Float, tch::Device::Cpu))).unwrap_err().to_string();
        assert!(err.starts_with("few_rows_mm: shapes [2, 40] x [4, 40]^T -> [2, 4]"), "{err}");
    }
}

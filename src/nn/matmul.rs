//! `h W^T` for a few rows of activations and a large weight: the unembedding of every
//! family and the large bias-free projections of `nn::Linear`, routed to the kernel that is
//! fastest for their shape on the CPU (our few-rows kernel in `ops`, or MKL in the orientation
//! that does not repack the weight on every call).
use tch::{Device, Kind, Tensor};

/// Weights of at least this many entries stream from memory on every decode step: they take
/// the few-rows kernel in `by_weight`, and `nn::Linear` sends them to `by_weight`. Smaller ones
/// (the demo's and the fixtures' models, at most 89,600 entries) stay in the cache.
pub const STREAMED_WEIGHT: usize = 1 << 17;

/// `h W^T` for rows of `h` (any leading shape) and the unembedding `W` (vocab, hidden), or a
/// large bias-free projection's weight (`nn::Linear`). Without a graph on the CPU, for up to
/// 128 rows (a decode step, a scored window), a float32 `W` of at least 2^17 entries goes
/// through our few-rows kernel (`ops::few_rows_mm`: Gemma-3-270M's 262,144 × 640 head
/// at 8 rows 53 → 18 ms on 2 threads, BENCHMARKS.md); otherwise it is computed as `(W h^T)^T`:
/// MKL packs `W` afresh on every call for `h W^T` with few rows (the profile of Gemma-3-270M
/// sampling: 66% of the time in `sgemm_scopy_right16`), which the other orientation avoids.
/// One row goes as two (MKL's one-column path is a slow gemv). Measured on that head with 2
/// threads: 8 rows 106 → 47 ms, 2 rows 126 → 21 ms, 128 rows 397 → 304 ms, 1 row 56 → 20 ms.
/// Smaller weights (the demo's and the fixtures' models) stay on that path.
pub fn by_weight(h: &Tensor, w: &Tensor) -> Tensor {
    let size = h.size();
    let hidden = size.last().copied().unwrap_or(0);
    let rows = h.numel() as i64 / hidden.max(1);
    if h.requires_grad() || h.device() != Device::Cpu || rows > 128 || rows == 0 {
        return h.matmul(&w.tr());
    }
    let mut out = size.clone();
    if let Some(last) = out.last_mut() {
        *last = w.size()[0];
    }
    let h2 = h.reshape([rows, hidden]);
    if w.numel() >= STREAMED_WEIGHT && hidden % 16 == 0 && w.kind() == Kind::Float && h.kind() == Kind::Float && w.is_contiguous() && crate::ops::few_rows_available() {
        let y = crate::ops::few_rows_mm(&h2.contiguous(), w).expect("few_rows_mm's conditions were checked above");
        return y.view(out.as_slice());
    }
    let h2 = if rows == 1 { Tensor::cat(&[&h2, &h2], 0) } else { h2 };
    w.mm(&h2.tr()).narrow(1, 0, rows).tr().contiguous().view(out.as_slice())
}

//! Scaled dot-product attention with grouped KV heads, causal + padding + sliding-window masks,
//! optional logit soft-capping (Gemma 2), and a KV cache for incremental decoding.
//!
//! Masks follow transformers' semantics: a query at absolute index `i` (cache positions, pads
//! included) sees key `j` when `j <= i`, key `j` is not padding, and, for a sliding window `w`,
//! `i - j < w`. Masked scores get the dtype's most negative finite value rather than -inf, so
//! the rows of padding queries stay finite. Unpadded passes whose window does not bite (all of
//! training) use SDPA's `is_causal` without a mask tensor, so libtorch may pick its fused
//! (flash) kernels; grouped KV heads go to SDPA as they are (`enable_gqa`), not repeated.
use tch::{Device, Kind, Tensor};

/// Where a forward pass sits: the positions of its tokens and which keys are real.
pub struct Context {
    /// (batch, seq) int64 rotary positions of the new tokens.
    pub positions: Tensor,
    /// (batch, past + seq) bool, true for real (non-padding) keys.
    pub key_valid: Tensor,
    /// Number of cached tokens before this call.
    pub past: i64,
    /// Whether any key is padding.
    pub padded: bool,
    /// Tree attention: (batch, seq, past + seq) bool, which keys each query sees, replacing the
    /// causal rule (candidate branches that share a prefix; sliding windows then measure
    /// distance in positions, not indices).
    pub visible: Option<Tensor>,
}

/// What one layer's attention may see.
pub enum Mask {
    /// The causal triangle of an unpadded pass from position 0 (SDPA's `is_causal`).
    Causal,
    /// Every key (one new token over an unpadded cache).
    All,
    /// An additive (batch, 1, seq, total) mask.
    Additive(Tensor),
}

impl Context {
    pub fn new(positions: Tensor, key_valid: Tensor, past: i64) -> Self {
        let padded = !bool::try_from(key_valid.all()).unwrap_or(false);
        Self { positions, key_valid, past, padded, visible: None }
    }

    /// An unpadded pass from position 0 whose queries see the keys `visible` (batch, seq, seq)
    /// allows, at rotary `positions` (batch, seq): a prefix with branches that each see the
    /// prefix up to their own start and their ancestors in the tree.
    pub fn tree(positions: Tensor, visible: Tensor) -> Self {
        let (b, t) = positions.size2().expect("positions are (batch, seq)");
        let key_valid = Tensor::ones([b, t], (Kind::Bool, positions.device()));
        Self { positions, key_valid, past: 0, padded: false, visible: Some(visible) }
    }

    /// A context for unpadded sequences starting at position `past`.
    pub fn dense(batch: i64, seq: i64, past: i64, device: Device) -> Self {
        let positions = Tensor::arange_start(past, past + seq, (Kind::Int64, device)).unsqueeze(0).repeat([batch, 1]);
        let key_valid = Tensor::ones([batch, past + seq], (Kind::Bool, device));
        Self { positions, key_valid, past, padded: false, visible: None }
    }

    /// The mask of a layer with an optional sliding `window`; an explicit tensor when
    /// `explicit` (eager attention needs one) or when no shortcut applies.
    pub fn attn_mask(&self, window: Option<i64>, kind: Kind, explicit: bool) -> Mask {
        let total = self.key_valid.size()[1];
        let seq = total - self.past;
        let window_bites = window.is_some_and(|w| w < total);
        match (explicit || self.padded || window_bites || self.visible.is_some(), self.past, seq) {
            (false, 0, _) => Mask::Causal,
            (false, _, 1) => Mask::All,
            _ => Mask::Additive(self.mask(window, kind)),
        }
    }

    /// An additive mask (batch, 1, seq, past + seq) in `kind` for an optional sliding window.
    pub fn mask(&self, window: Option<i64>, kind: Kind) -> Tensor {
        let device = self.key_valid.device();
        let total = self.key_valid.size()[1];
        let seq = total - self.past;
        let allowed = if let Some(visible) = &self.visible {
            // (batch, 1, seq, total); windows by rotary position.
            let mut allowed = visible.unsqueeze(1);
            if let Some(w) = window {
                let d = self.positions.unsqueeze(2) - self.positions.unsqueeze(1); // (batch, seq, total)
                allowed = allowed.logical_and(&d.lt(w).unsqueeze(1));
            }
            allowed
        } else {
            let q = Tensor::arange_start(self.past, total, (Kind::Int64, device)).unsqueeze(1); // (seq, 1)
            let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0); // (1, total)
            let mut allowed = k.le_tensor(&q);
            if let Some(w) = window {
                allowed = allowed.logical_and(&(&q - &k).lt(w));
            }
            allowed.view([1, 1, seq, total])
        };
        // (batch, 1, seq, total)
        let allowed = allowed.logical_and(&self.key_valid.view([-1, 1, 1, total]));
        let zero = Tensor::zeros([1], (kind, device));
        let neg = Tensor::full([1], min_value(kind), (kind, device));
        zero.where_self(&allowed, &neg)
    }
}

/// The most negative finite value of a floating dtype (what transformers uses for masking).
pub fn min_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Cached keys and values of every layer: buffers (batch, kv_heads, capacity, head_dim) of
/// which the first `len` positions are filled. New positions are written in place and the
/// capacity doubles when full, so decoding N tokens copies O(N) values, not O(N²) as growing
/// the cache by concatenation would. Used under no_grad (generation).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
    /// Positions written by the layers of the current call (all layers append the same count).
    pending: i64,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: (0..n_layers).map(|_| None).collect(), len: 0, pending: 0 }
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.len + self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the new keys and values of `layer` and returns views of all of them.
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if layer == 0 {
            // A new forward call: what the previous call appended is now committed.
            self.len += self.pending;
            self.pending = 0;
        }
        let t = k.size()[2];
        let need = self.len + t;
        let slot = &mut self.layers[layer];
        let grow = slot.as_ref().is_none_or(|(kb, _)| kb.size()[2] < need);
        if grow {
            let cap = (need * 2).max(64);
            let alloc = |x: &Tensor| {
                let (b, h, _, d) = x.size4().expect("(batch, kv_heads, seq, head_dim)");
                Tensor::zeros([b, h, cap, d], (x.kind(), x.device()))
            };
            let (kb, vb) = (alloc(&k), alloc(&v));
            if let Some((ok, ov)) = slot.as_ref() {
                kb.narrow(2, 0, self.len).copy_(&ok.narrow(2, 0, self.len));
                vb.narrow(2, 0, self.len).copy_(&ov.narrow(2, 0, self.len));
            }
            *slot = Some((kb, vb));
        }
        let (kb, vb) = slot.as_ref().expect("allocated above");
        kb.narrow(2, self.len, t).copy_(&k);
        vb.narrow(2, self.len, t).copy_(&v);
        self.pending = t;
        (kb.narrow(2, 0, need), vb.narrow(2, 0, need))
    }

    /// Keeps only the batch rows in `rows` (int64 indices), e.g. to drop finished sequences.
    pub fn select(&mut self, rows: &Tensor) {
        for slot in self.layers.iter_mut().flatten() {
            *slot = (slot.0.index_select(0, rows), slot.1.index_select(0, rows));
        }
    }
}

/// Keys/values through the cache when there is one.
pub fn cached(cache: Option<&mut KvCache>, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
    match cache {
        Some(c) => c.append(layer, k, v),
        None => (k, v),
    }
}

/// Attention of q (batch, heads, seq, dim) over k, v (batch, kv_heads, total, dim) under
/// `mask`. Returns (batch, seq, heads * dim).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, scale: f64, softcap: Option<f64>) -> Tensor {
    let (b, h, t, d) = q.size4().expect("q is (batch, heads, seq, dim)");
    let gqa = k.size()[1] != h;
    let out = match (softcap, mask) {
        (None, Mask::Causal) => Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, true, scale, gqa),
        (None, Mask::All) => Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, scale, gqa),
        (None, Mask::Additive(m)) => Tensor::scaled_dot_product_attention(q, k, v, Some(m), 0.0, false, scale, gqa),
        (Some(cap), Mask::Additive(m)) => {
            // Eager attention as Gemma 2 does it: cap the scores, add the mask, softmax in f32.
            let rep = h / k.size()[1];
            let (k, v) = (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None));
            let scores = q.matmul(&k.transpose(-2, -1)) * scale;
            let scores = (scores / cap).tanh() * cap + m;
            scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
        }
        (Some(_), _) => panic!("soft-capped attention needs an explicit mask (Context::attn_mask with explicit)"),
    };
    // (batch, seq, heads * dim)
    out.transpose(1, 2).contiguous().view([b, t, h * d])
}

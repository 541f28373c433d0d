//! Model families and loading a Hugging Face model directory into a `VarStore`.
//!
//! `config.json`'s `model_type` picks the family (one closed enum, one `match`). Parameters are
//! created under their Hugging Face names and filled from the checkpoint strictly: a missing,
//! unexpected or mis-shaped tensor is an error naming the tensor and its file. The tied
//! `lm_head.weight` is the one allowed absence. Weights are cast to the requested dtype after
//! reading (tch would otherwise adopt the file's dtype).
pub mod gemma;
pub mod gpt2;
pub mod llama;
pub mod phi3;

use crate::hf::safetensors::Checkpoint;
use crate::nn::attention::{Context, KvCache, Mask};
use anyhow::{bail, ensure, Context as _, Result};
use crate::nn::lora::LoraSpec;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi3,
    Gpt2,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
        Family::Gpt2,
    ];

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
            Family::Gpt2 => "gpt2",
        }
    }

    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type).with_context(|| {
            let names: Vec<_> = Self::ALL.iter().map(|f| f.model_type()).collect();
            format!("unknown model_type {model_type:?} (supported: {})", names.join(", "))
        })
    }
}

/// The architecture-specific module tree.
pub enum Arch {
    Llama(llama::Model),
    Gemma(gemma::Model),
    Phi3(phi3::Model),
    Gpt2(gpt2::Model),
}

/// A loaded causal language model.
pub struct Model {
    pub family: Family,
    pub arch: Arch,
    pub vs: VarStore,
    /// config.json as read.
    pub config: Value,
    pub dir: PathBuf,
    pub kind: Kind,
    pub n_layers: usize,
    /// How many logits one chunk of `backward_tokens` may hold; `None`: 2^25 (128 MiB in
    /// float32) on the CPU, 2^27 on a GPU.
    pub logits_per_chunk: Option<i64>,
    /// LoRA adapters on top of the (then frozen) base weights.
    pub adapters: Option<Adapters>,
}

/// A model's LoRA adapters: their settings and their own store (float32), trainable for a
/// recipe's `lora:`, frozen when a loaded adapter only applies.
pub struct Adapters {
    pub spec: LoraSpec,
    pub vs: VarStore,
}

/// One family's forward pass in parts, so that a caller can run the blocks itself
/// (activation recomputation). `Model::forward` is embed, every block, head.
pub(crate) trait Layers {
    /// Token (and learned position) embeddings, (batch, seq, hidden), in the model's dtype.
    fn embed(&self, ids: &Tensor, ctx: &Context) -> Tensor;
    /// What every block of one pass shares: rotary tables and masks.
    fn shared(&self, ctx: &Context, kind: Kind) -> Shared;
    /// Block `i` on the residual stream `x`.
    fn block(&self, i: usize, x: &Tensor, s: &Shared, cache: Option<&mut KvCache>) -> Tensor;
    /// The final norm, applied to the last block's output.
    fn final_norm(&self, x: &Tensor) -> Tensor;
    /// The output projection (vocab, hidden): `lm_head.weight`, or the embedding table when tied.
    fn unembedding(&self) -> &Tensor;
    /// Gemma 2's final logit soft-capping, `cap * tanh(logits / cap)`.
    fn final_softcap(&self) -> Option<f64> {
        None
    }
    /// Float32 logits from the last block's output.
    fn head(&self, x: &Tensor) -> Tensor {
        let logits = unembed(&self.final_norm(x), self.unembedding()).to_kind(Kind::Float);
        match self.final_softcap() {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
}

/// Weights of at least this many entries stream from memory on every decode step: they take
/// the few-rows kernel in `unembed`, and `nn::Linear` sends them to `unembed`. Smaller ones
/// (the demo's and the fixtures' models, at most 89,600 entries) stay in the cache.
pub(crate) const STREAMED_WEIGHT: usize = 1 << 17;

/// `h W^T` for rows of `h` (any leading shape) and the unembedding `W` (vocab, hidden), or a
/// large bias-free projection's weight (`nn::Linear`). Without a graph on the CPU, for up to
/// 128 rows (a decode step, a scored window), a float32 `W` of at least 2^17 entries goes
/// through our few-rows kernel (`train::ops::few_rows_mm`: Gemma-3-270M's 262,144 × 640 head
/// at 8 rows 53 → 18 ms on 2 threads, BENCHMARKS.md); otherwise it is computed as `(W h^T)^T`:
/// MKL packs `W` afresh on every call for `h W^T` with few rows (the profile of Gemma-3-270M
/// sampling: 66% of the time in `sgemm_scopy_right16`), which the other orientation avoids.
/// One row goes as two (MKL's one-column path is a slow gemv). Measured on that head with 2
/// threads: 8 rows 106 → 47 ms, 2 rows 126 → 21 ms, 128 rows 397 → 304 ms, 1 row 56 → 20 ms.
/// Smaller weights (the demo's and the fixtures' models) stay on that path.
pub(crate) fn unembed(h: &Tensor, w: &Tensor) -> Tensor {
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
    if w.numel() >= STREAMED_WEIGHT && hidden % 16 == 0 && w.kind() == Kind::Float && h.kind() == Kind::Float && w.is_contiguous() && crate::train::ops::few_rows_available() {
        let y = crate::train::ops::few_rows_mm(&h2.contiguous(), w).expect("few_rows_mm's conditions were checked above");
        return y.view(out.as_slice());
    }
    let h2 = if rows == 1 { Tensor::cat(&[&h2, &h2], 0) } else { h2 };
    w.mm(&h2.tr()).narrow(1, 0, rows).tr().contiguous().view(out.as_slice())
}

/// The per-pass tensors blocks share.
pub(crate) struct Shared {
    /// Rotary cos and sin for the pass's positions (empty for learned positions).
    pub cos_sin: (Tensor, Tensor),
    /// Those of sliding-window layers when they have their own rope (Gemma 3).
    pub cos_sin_local: Option<(Tensor, Tensor)>,
    pub masks: Masks,
}

impl Model {
    fn layers(&self) -> &dyn Layers {
        match &self.arch {
            Arch::Llama(m) => m,
            Arch::Gemma(m) => m,
            Arch::Phi3(m) => m,
            Arch::Gpt2(m) => m,
        }
    }

    /// Float32 logits (batch, seq, vocab) for `ids` (batch, seq) at `ctx`.
    pub fn forward(&self, ids: &Tensor, ctx: &Context, cache: Option<&mut KvCache>) -> Tensor {
        self.layers().head(&self.blocks(ids, ctx, cache))
    }

    /// Embeddings and every block: the last block's output (batch, seq, hidden) at `ctx`
    /// (tree attention for candidate branches passes its own context).
    pub fn blocks(&self, ids: &Tensor, ctx: &Context, mut cache: Option<&mut KvCache>) -> Tensor {
        let l = self.layers();
        let mut x = l.embed(ids, ctx);
        let s = l.shared(ctx, x.kind());
        for i in 0..self.n_layers {
            x = l.block(i, &x, &s, cache.as_deref_mut());
        }
        x
    }

    /// Logits of unpadded sequences (batch, seq) from position 0.
    pub fn logits(&self, ids: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("ids are (batch, seq)");
        self.forward(ids, &Context::dense(b, t, 0, ids.device()), None)
    }

    /// Computes `loss_of(logits of ids)` (ids unpadded from position 0, or right-padded) and
    /// back-propagates the loss into the parameters' gradients; returns its value and what
    /// `loss_of` returned beside it. With `recompute` (activation checkpointing) the blocks
    /// first run without a graph, keeping only each block's input; after the head's backward
    /// every block runs again with its graph, last first, and is back-propagated with the
    /// gradient of its output. Activation memory is then one block's instead of all of them,
    /// for one more forward pass of the blocks; the gradients are the same.
    pub fn backward<T>(&self, ids: &Tensor, recompute: bool, loss_of: impl FnOnce(&Tensor) -> Result<(Tensor, T)>) -> Result<(f64, T)> {
        if !recompute {
            self.check_positions(ids.size().last().copied().unwrap_or(0) as usize)?;
            let (loss, extra) = loss_of(&self.logits(ids))?;
            if loss.requires_grad() {
                loss.backward();
            }
            return Ok((loss.double_value(&[]), extra));
        }
        let pass = Pass::new(self, ids, None, true)?;
        let top = pass.top_for_grad();
        let (loss, extra) = loss_of(&pass.l.head(&top))?;
        let value = loss.double_value(&[]);
        if loss.requires_grad() {
            loss.backward();
            pass.backward(&top);
        }
        Ok((value, extra))
    }

    /// The last block's output (batch, seq, hidden) for unpadded `ids` from position 0: what
    /// `head` turns into logits. A teacher keeps these rows instead of vocabulary-sized logits.
    pub fn hidden(&self, ids: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("ids are (batch, seq)");
        self.blocks(ids, &Context::dense(b, t, 0, ids.device()), None)
    }

    /// Float32 logits from rows of `hidden` (any leading shape).
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        self.layers().head(hidden)
    }

    /// `backward` for a loss that is a sum over positions of a function of each position's
    /// next-token log-prob (cross-entropy, the PPO surrogate). The head and its log-softmax run
    /// over chunks of positions, so the vocabulary-sized tensors exist for one chunk at a time,
    /// as in Liger's fused linear cross-entropy. `loss_of(lp, t0)` gets the log-probs (batch, n)
    /// of positions `t0..t0 + n`, numbered as `train::token_logprobs` numbers them, and returns
    /// their part of the loss; the value returned is the sum of the parts. Positions before
    /// `from` carry no loss (the prompts of every row): the head skips them.
    ///
    /// Autograd sees only the small tensors. With `g` the gradient of the loss with respect to
    /// the chosen tokens' log-probs, the gradient of the logits is `g * (onehot - softmax)`,
    /// written in place over the log-softmax (`softmax = exp(log-softmax)`, the formula of
    /// torch's log-softmax backward). A chunk's logits live only until their log-softmax is
    /// made, and that is the one vocabulary-sized tensor (two with soft-capping) kept for the
    /// gradient, where autograd would make four. The head's two matmul gradients follow from
    /// it; the one of the hidden states goes back through the final norm and the blocks.
    pub fn backward_tokens(&self, ids: &Tensor, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, None, from, recompute, true, loss_of)
    }

    /// `backward_tokens` at a context of its own: packed rows, whose sequences each start at
    /// position 0 and see only themselves (`train::Batch::packed`).
    pub fn backward_tokens_in(&self, ids: &Tensor, ctx: Context, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, Some(ctx), from, recompute, true, loss_of)
    }

    /// `backward_tokens` for a loss of each position's whole next-token distribution (the
    /// full-distribution divergences of same-vocabulary distillation): `loss_of(logits, t0)`
    /// gets the float32 logits (batch, n, vocab) of positions `t0..t0 + n` (after soft-capping)
    /// as a leaf that requires grad. Autograd runs inside one chunk only, so the vocabulary-sized
    /// tensors are still bounded by the chunk; the gradient of the logits then takes the same
    /// path back as in `backward_tokens`.
    pub fn backward_logits(&self, ids: &Tensor, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, None, from, recompute, false, loss_of)
    }

    fn backward_head(&self, ids: &Tensor, ctx: Option<Context>, from: i64, recompute: bool, tokens: bool, mut loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        let pass = Pass::new(self, ids, ctx, recompute)?;
        let top = pass.top_for_grad();
        let normed = pass.l.final_norm(&top);
        let (b, t, hidden) = normed.size3()?;
        let (w, cap) = (pass.l.unembedding(), pass.l.final_softcap());
        let vocab = w.size()[0];
        let device = self.device();
        let budget = self.logits_per_chunk.unwrap_or(if device == Device::Cpu { 1 << 25 } else { 1 << 27 });
        let step = (budget / (vocab * b)).max(1);
        let h_all = normed.detach();
        // The loss is summed on the device and read once, so chunks do not wait on each other.
        let mut value = Tensor::zeros([], (Kind::Float, device));
        let (mut grad_h, mut grad_w, mut any_grad) = (Vec::new(), None::<Tensor>, false);
        // The chunks before `from` are skipped; the others keep the boundaries they have from
        // position 0, so the sums (and so the gradients) are bit for bit those of a pass over
        // every chunk, whose skipped chunks would add exact zeros.
        let mut t0 = from.clamp(0, t - 1) / step * step;
        if t0 > 0 {
            grad_h.push(Tensor::zeros([b, t0, hidden], (h_all.kind(), device)));
        }
        while t0 < t - 1 {
            let n = step.min(t - 1 - t0);
            let h = h_all.narrow(1, t0, n);
            let (z, tanh) = tch::no_grad(|| {
                let z = h.matmul(&w.tr()).to_kind(Kind::Float);
                match cap {
                    Some(cap) => {
                        let tanh = z.g_div_scalar(cap).tanh_();
                        (&tanh * cap, Some(tanh))
                    }
                    None => (z, None),
                }
            });
            // The gradient of the loss with respect to the (soft-capped) logits of the chunk.
            let (loss, grad_z) = if tokens {
                let targets = ids.narrow(1, t0 + 1, n).unsqueeze(-1);
                let log_probs = tch::no_grad(|| z.log_softmax(-1, Kind::Float));
                drop(z);
                let lp = log_probs.gather(2, &targets, false).squeeze_dim(-1).set_requires_grad(true);
                let loss = loss_of(&lp, t0)?;
                let g = if loss.requires_grad() {
                    loss.backward();
                    lp.grad()
                } else {
                    Tensor::new()
                };
                let d = g.defined().then(|| {
                    let g = g.unsqueeze(-1);
                    tch::no_grad(|| {
                        let mut d = log_probs;
                        let _ = d.exp_().g_mul_(&-&g).scatter_add_(2, &targets, &g);
                        d
                    })
                });
                (loss, d)
            } else {
                let z = z.set_requires_grad(true);
                let loss = loss_of(&z, t0)?;
                if loss.requires_grad() {
                    loss.backward();
                }
                let g = z.grad();
                (loss, g.defined().then_some(g))
            };
            value += loss.detach().to_kind(Kind::Float);
            let Some(mut d) = grad_z else {
                grad_h.push(h.zeros_like());
                t0 += n;
                continue;
            };
            any_grad = true;
            tch::no_grad(|| {
                if let Some(mut tanh) = tanh {
                    // d cap*tanh(z/cap) / dz = 1 - tanh^2
                    let _ = d.g_mul_(&tanh.square_().neg_().g_add_scalar_(1.0));
                }
                let grad_z = d.to_kind(h.kind());
                grad_h.push(grad_z.matmul(w));
                if w.requires_grad() {
                    let (gz, hs) = (grad_z.reshape([-1, vocab]), h.reshape([-1, hidden]));
                    match &mut grad_w {
                        Some(acc) => {
                            let _ = acc.addmm_(&gz.tr(), &hs);
                        }
                        None => grad_w = Some(gz.tr().matmul(&hs)),
                    }
                }
            });
            t0 += n;
        }
        if any_grad {
            grad_h.push(Tensor::zeros([b, 1, hidden], (h_all.kind(), device)));
            if let Some(grad_w) = grad_w {
                crate::train::ops::accumulate_grad(w, &grad_w)?;
            }
            let seed = (&normed * Tensor::cat(&grad_h, 1)).sum(Kind::Float);
            if seed.requires_grad() {
                seed.backward();
            }
            pass.backward(&top);
        }
        Ok(value.double_value(&[]))
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The store whose variables training updates: the adapters under LoRA, else the model.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        if let Some(a) = &self.adapters {
            vars.extend(a.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The base weights with the adapters merged in (`W + scale B A`, PEFT's
    /// `merge_and_unload`), by Hugging Face name; the model itself is unchanged.
    pub fn merged_weights(&self) -> Vec<(String, Tensor)> {
        let mut w = crate::train::checkpoint::named_weights_of(&self.vs);
        let Some(ad) = &self.adapters else { return w };
        let vars = ad.vs.variables();
        let _guard = tch::no_grad_guard();
        for (name, t) in w.iter_mut() {
            let Some(module) = name.strip_suffix(".weight") else { continue };
            let (Some(a), Some(b)) = (vars.get(&format!("{module}.lora_A.weight")), vars.get(&format!("{module}.lora_B.weight"))) else { continue };
            let delta = b.matmul(a) * ad.spec.scale();
            // GPT-2's Conv1D stores its weight (in, out).
            let delta = if self.family == Family::Gpt2 { delta.tr() } else { delta };
            *t = (t.to_kind(Kind::Float) + delta.to_device(t.device())).to_kind(t.kind());
        }
        w
    }

    /// The most positions the model has (config.json `n_positions` or
    /// `max_position_embeddings`), if it declares them.
    pub fn max_positions(&self) -> Option<usize> {
        ["n_positions", "max_position_embeddings"].iter().find_map(|k| self.config.get(*k).and_then(Value::as_u64)).map(|n| n as usize)
    }

    /// Refuses a sequence of `len` tokens longer than the model's positions, before any tensor
    /// work (GPT-2's learned position table would otherwise be indexed out of range).
    pub fn check_positions(&self, len: usize) -> Result<()> {
        match self.max_positions() {
            Some(max) if len > max => bail!("{} tokens exceed the {max} positions of {} ({})", len, self.dir.display(), self.family.model_type()),
            _ => Ok(()),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.n_layers)
    }
}

/// One training forward of the blocks, up to the last block's output, kept so that the
/// gradient of that output can be sent back through the blocks and the embeddings.
struct Pass<'a> {
    l: &'a dyn Layers,
    ids: &'a Tensor,
    ctx: Context,
    shared: Shared,
    /// The last block's output: with its graph, or (recomputation) without.
    top: Tensor,
    recompute: bool,
    /// Recomputation: each block's input, without graph.
    inputs: Vec<Tensor>,
}

impl<'a> Pass<'a> {
    /// `ctx`: where the tokens sit; None for unpadded or right-padded rows from position 0.
    fn new(model: &'a Model, ids: &'a Tensor, ctx: Option<Context>, recompute: bool) -> Result<Self> {
        let (b, t) = ids.size2().context("ids are (batch, seq)")?;
        // Packed rows restart their positions at each sequence: the span is the largest one.
        let span = ctx.as_ref().map_or(t, |c| c.positions.max().int64_value(&[]) + 1);
        model.check_positions(span as usize)?;
        let ctx = ctx.unwrap_or_else(|| Context::dense(b, t, 0, ids.device()));
        let l = model.layers();
        let shared = l.shared(&ctx, model.kind);
        let mut inputs = Vec::new();
        let top = if recompute {
            tch::no_grad(|| {
                let mut x = l.embed(ids, &ctx);
                for i in 0..model.n_layers {
                    inputs.push(x.shallow_clone());
                    x = l.block(i, &x, &shared, None);
                }
                x
            })
        } else {
            let mut x = l.embed(ids, &ctx);
            for i in 0..model.n_layers {
                x = l.block(i, &x, &shared, None);
            }
            x
        };
        Ok(Self { l, ids, ctx, shared, top, recompute, inputs })
    }

    /// `top` for the loss: itself (its graph reaches the parameters), or with recomputation
    /// a leaf whose gradient `backward` then sends through the blocks.
    fn top_for_grad(&self) -> Tensor {
        if self.recompute {
            self.top.detach().set_requires_grad(true)
        } else {
            self.top.shallow_clone()
        }
    }

    /// With recomputation, back-propagates the gradient that the loss's backward left in
    /// `top` (from `top_for_grad`) through the blocks, last first, and the embeddings.
    fn backward(mut self, top: &Tensor) {
        if !self.recompute {
            return;
        }
        let mut grad = top.grad();
        for i in (0..self.inputs.len()).rev() {
            let x = self.inputs[i].detach().set_requires_grad(true);
            self.inputs[i] = Tensor::new();
            (self.l.block(i, &x, &self.shared, None) * &grad).sum(Kind::Float).backward();
            grad = x.grad();
        }
        let e = self.l.embed(self.ids, &self.ctx);
        if e.requires_grad() {
            (e * grad).sum(Kind::Float).backward();
        }
    }
}

/// Per-layer masks of one forward pass, made once for the full and the sliding layer type.
pub(crate) struct Masks {
    full: Mask,
    sliding: Option<(i64, Mask)>,
}

impl Masks {
    /// `explicit`: always mask tensors (eager attention).
    pub(crate) fn new(ctx: &Context, windows: impl Iterator<Item = Option<i64>>, kind: Kind, explicit: bool) -> Self {
        let window = windows.flatten().next();
        Self {
            full: ctx.attn_mask(None, kind, explicit),
            sliding: window.map(|w| (w, ctx.attn_mask(Some(w), kind, explicit))),
        }
    }

    pub(crate) fn get(&self, window: Option<i64>) -> &Mask {
        match (window, &self.sliding) {
            (Some(w), Some((sw, m))) if w == *sw => m,
            _ => &self.full,
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(config: &Value, path: &Path) -> Result<T> {
    serde_json::from_value(config.clone()).with_context(|| format!("{}: invalid config", path.display()))
}

/// Loads the model in `dir` (config.json + safetensors) onto `device` in `kind`.
pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Model> {
    load_adapted(dir, device, kind, None, None)
}

/// `load`, with LoRA adapters: read from a PEFT adapter directory `adapter` (applied, and
/// trained further when `lora` is also given), or made fresh as `lora` says (trained). The
/// base weights are then frozen.
pub fn load_adapted(dir: &Path, device: Device, kind: Kind, adapter: Option<&Path>, lora: Option<&LoraSpec>) -> Result<Model> {
    let spec = match adapter {
        Some(a) => Some(LoraSpec::from_peft_config(&a.join("adapter_config.json"))?),
        None => lora.cloned(),
    };
    let Some(spec) = spec else { return load_base(dir, device, kind) };
    let (built, mut avs) = crate::nn::lora::with_adapters(&spec, device, || load_base(dir, device, kind));
    let mut model = built?;
    let n = avs.variables().len();
    ensure!(n > 0, "lora.target_modules {:?}: no layer of {} ({}) has that name", spec.target_modules, dir.display(), model.family.model_type());
    if let Some(a) = adapter {
        let path = a.join("adapter_model.safetensors");
        let ckpt = Checkpoint::open_file(&path)?;
        let mut vars = avs.variables();
        let _guard = tch::no_grad_guard();
        let base = model.vs.variables();
        for stored in ckpt.names() {
            let name = crate::nn::lora::our_name(stored);
            if spec.saves(&name) {
                // A module saved whole (PEFT's modules_to_save): it replaces the base's.
                let mut var = base.get(&name).with_context(|| format!("{}: {stored} names no weight of the base", path.display()))?.shallow_clone();
                let t = ckpt.tensor(stored)?;
                ensure!(t.size() == var.size(), "{}: tensor {stored} has shape {:?}, the base's {:?}", path.display(), t.size(), var.size());
                var.f_copy_(&t.to_kind(var.kind()).to_device(device))?;
                continue;
            }
            let mut var = vars.remove(&name).with_context(|| format!("{}: unexpected tensor {stored} (no such adapter on this base)", path.display()))?;
            let t = ckpt.tensor(stored)?;
            ensure!(t.size() == var.size(), "{}: tensor {stored} has shape {:?}, the adapter config implies {:?}", path.display(), t.size(), var.size());
            var.f_copy_(&t.to_kind(Kind::Float).to_device(device))?;
        }
        if let Some(name) = vars.keys().min() {
            bail!("{}: missing tensor {}", path.display(), crate::nn::lora::peft_name(name));
        }
    }
    model.vs.freeze();
    if lora.is_none() {
        avs.freeze();
    } else if !spec.modules_to_save.is_empty() {
        // modules_to_save train in full beside the adapters.
        let saved: Vec<(String, Tensor)> = model.vs.variables().into_iter().filter(|(n, _)| spec.saves(n)).collect();
        ensure!(!saved.is_empty(), "lora.modules_to_save {:?}: no module of {} has that name", spec.modules_to_save, dir.display());
        ensure!(
            !model.config["tie_word_embeddings"].as_bool().unwrap_or(false) || !saved.iter().any(|(n, _)| n.contains("embed") || n.starts_with("lm_head") || n.ends_with("wte.weight")),
            "lora.modules_to_save: {} ties its input and output embeddings, and training one of them alone is not supported",
            dir.display()
        );
        for (_, mut t) in saved {
            t = t.set_requires_grad(true);
            let _ = t;
        }
    }
    model.adapters = Some(Adapters { spec, vs: avs });
    Ok(model)
}

fn load_base(dir: &Path, device: Device, kind: Kind) -> Result<Model> {
    let (mut model, tied) = build(dir, device)?;
    let checkpoint = Checkpoint::open(dir)?;
    fill(&model.vs, &checkpoint, model.family, tied)?;
    match kind {
        Kind::Float => model.vs.float(),
        Kind::BFloat16 => model.vs.bfloat16(),
        Kind::Half => model.vs.half(),
        Kind::Double => model.vs.double(),
        other => bail!("unsupported model dtype {other:?}"),
    }
    model.kind = kind;
    Ok(model)
}

/// The model that `dir/config.json` describes, with zero-filled float32 parameters, and
/// whether its head is tied to the embeddings.
pub fn build(dir: &Path, device: Device) -> Result<(Model, bool)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no \"model_type\"", config_path.display()))?;
    let family = Family::from_model_type(model_type).with_context(|| config_path.display().to_string())?;
    let vs = VarStore::new(device);
    let root = vs.root();
    let (arch, n_layers, tied) = match family {
        Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 => {
            let c: llama::Config = parse(&config, &config_path)?;
            let m = llama::Model::new(&root, &c, &config, family).with_context(|| config_path.display().to_string())?;
            let tied = m.tied();
            (Arch::Llama(m), c.num_hidden_layers, tied)
        }
        Family::Gemma | Family::Gemma2 | Family::Gemma3 => {
            let c: gemma::Config = parse(&config, &config_path)?;
            let m = gemma::Model::new(&root, &c, &config, family).with_context(|| config_path.display().to_string())?;
            (Arch::Gemma(m), c.num_hidden_layers, true)
        }
        Family::Phi3 => {
            let c: phi3::Config = parse(&config, &config_path)?;
            let tied = c.tie_word_embeddings.unwrap_or(false);
            let m = phi3::Model::new(&root, &c, &config).with_context(|| config_path.display().to_string())?;
            (Arch::Phi3(m), c.num_hidden_layers, tied)
        }
        Family::Gpt2 => {
            let c: gpt2::Config = parse(&config, &config_path)?;
            let m = gpt2::Model::new(&root, &c).with_context(|| config_path.display().to_string())?;
            (Arch::Gpt2(m), c.n_layer, true)
        }
    };
    Ok((Model { family, arch, vs, config, dir: dir.to_path_buf(), kind: Kind::Float, n_layers: n_layers as usize, logits_per_chunk: None, adapters: None }, tied))
}

/// The name a stored tensor has in our VarStore (GPT-2 hub files lack the `transformer.` prefix).
fn canonical_name(family: Family, name: &str) -> String {
    if family == Family::Gpt2 && !name.starts_with("transformer.") && name != "lm_head.weight" {
        format!("transformer.{name}")
    } else {
        name.to_string()
    }
}

/// Stored tensors that transformers itself skips: non-persistent buffers of old checkpoints.
fn ignorable(family: Family, name: &str, tied: bool) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || (tied && name == "lm_head.weight")
        || (family == Family::Gpt2 && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")))
}

/// Copies every checkpoint tensor into its variable, strictly.
fn fill(vs: &VarStore, ckpt: &Checkpoint, family: Family, tied: bool) -> Result<()> {
    let mut vars = vs.variables();
    let _guard = tch::no_grad_guard();
    for stored in ckpt.names() {
        let name = canonical_name(family, stored);
        let file = ckpt.file_of(stored).map(|p| p.display().to_string()).unwrap_or_default();
        let Some(mut var) = vars.remove(&name) else {
            if ignorable(family, &name, tied) {
                continue;
            }
            bail!("{file}: unexpected tensor {stored} (not part of a {} model with this config)", family.model_type());
        };
        let shape = ckpt.shape(stored)?;
        if shape != var.size() {
            bail!("{file}: tensor {stored} has shape {shape:?}, the config implies {:?}", var.size());
        }
        let t = ckpt.tensor(stored)?;
        var.f_copy_(&t.to_kind(var.kind()).to_device(var.device()))
            .with_context(|| format!("{file}: copying tensor {stored}"))?;
    }
    if let Some(name) = vars.keys().min() {
        let dir = ckpt.names().next().and_then(|n| ckpt.file_of(n)).and_then(Path::parent);
        let where_ = dir.map(|d| d.display().to_string()).unwrap_or_default();
        bail!("{where_}: missing tensor {name} ({} missing in all)", vars.len());
    }
    Ok(())
}

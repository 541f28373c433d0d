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
mod backward;
mod load;

pub use load::{build, load, load_adapted, load_spec, named_weights_of};

use crate::nn::attention::{Context, KvCache, Mask};
use anyhow::{bail, Context as _, Result};
use crate::nn::lora::LoraSpec;
use serde_json::Value;
use std::path::PathBuf;
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
        let logits = crate::nn::matmul::by_weight(&self.final_norm(x), self.unembedding()).to_kind(Kind::Float);
        match self.final_softcap() {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
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
        let mut w = named_weights_of(&self.vs);
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

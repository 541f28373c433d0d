//! GPT-2 (`gpt2`): learned absolute positions, pre-LayerNorm blocks, fused `c_attn`, and
//! `Conv1D` weights stored as (in, out), i.e. transposed relative to `nn.Linear`. The head is
//! tied to `wte`.
//!
//! Follows `modeling_gpt2.py`. Hub checkpoints from the original release name tensors without
//! the `transformer.` prefix; `models::canonical_name` adds it, and their `attn.bias` causal
//! buffers are skipped.
use crate::nn::attention::{attend, cached, Context, KvCache};
use crate::nn::{Activation, Embedding, LayerNorm};
use anyhow::{Context as _, Result};
use serde::Deserialize;
use tch::nn::{Init, Path};
use tch::Tensor;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    pub n_inner: Option<i64>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

fn default_act() -> String {
    "gelu_new".into()
}

fn default_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

/// `y = x W + b` with `W` stored (in, out).
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    lora: Option<crate::nn::lora::Adapter>,
}

impl Conv1D {
    fn new(p: Path, n_in: i64, n_out: i64) -> Self {
        let lora = crate::nn::lora::attach(&p, n_in, n_out);
        Self { weight: p.var("weight", &[n_in, n_out], Init::Const(0.)), bias: p.var("bias", &[n_out], Init::Const(0.)), lora }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // One fused addmm, as transformers' Conv1D: in bf16 a separate `+ bias` rounds twice.
        let mut shape = x.size();
        let n_in = shape.pop().expect("x has a feature dimension");
        shape.push(self.weight.size()[1]);
        let y = self.bias.addmm(&x.reshape([-1, n_in]), &self.weight).view(shape.as_slice());
        match &self.lora {
            Some(a) => y + a.delta(x),
            None => y,
        }
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    scale: f64,
}

pub struct Model {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    act: Activation,
    heads: i64,
}

impl Model {
    pub fn new(vs: &Path, cfg: &Config) -> Result<Self> {
        let (e, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let inner = cfg.n_inner.unwrap_or(4 * e);
        let head_dim = e / cfg.n_head;
        let t = vs / "transformer";
        let h = (0..cfg.n_layer as usize)
            .map(|i| {
                let p = &t / "h" / i;
                let mut scale = if cfg.scale_attn_weights { (head_dim as f64).powf(-0.5) } else { 1.0 };
                if cfg.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                Block {
                    ln_1: LayerNorm::new(&p / "ln_1", e, eps),
                    c_attn: Conv1D::new(&p / "attn" / "c_attn", e, 3 * e),
                    attn_proj: Conv1D::new(&p / "attn" / "c_proj", e, e),
                    ln_2: LayerNorm::new(&p / "ln_2", e, eps),
                    c_fc: Conv1D::new(&p / "mlp" / "c_fc", e, inner),
                    mlp_proj: Conv1D::new(&p / "mlp" / "c_proj", inner, e),
                    scale,
                }
            })
            .collect();
        Ok(Self {
            wte: Embedding::new(&t / "wte", cfg.vocab_size, e),
            wpe: Embedding::new(&t / "wpe", cfg.n_positions, e),
            h,
            ln_f: LayerNorm::new(&t / "ln_f", e, eps),
            act: Activation::parse(&cfg.activation_function).context("activation_function")?,
            heads: cfg.n_head,
        })
    }
}

impl super::Layers for Model {
    fn embed(&self, ids: &Tensor, ctx: &Context) -> Tensor {
        self.wte.forward(ids) + self.wpe.forward(&ctx.positions)
    }

    fn shared(&self, ctx: &Context, kind: tch::Kind) -> super::Shared {
        let masks = super::Masks::new(ctx, std::iter::empty(), kind, false);
        super::Shared { cos_sin: (Tensor::new(), Tensor::new()), masks, cos_sin_local: None }
    }

    fn block(&self, i: usize, x: &Tensor, s: &super::Shared, cache: Option<&mut KvCache>) -> Tensor {
        let blk = &self.h[i];
        let (b, t, e) = x.size3().expect("(batch, seq, hidden)");
        let d = e / self.heads;
        let qkv = blk.c_attn.forward(&blk.ln_1.forward(x));
        // (batch, heads, seq, head_dim) each
        let split = |j: i64| qkv.narrow(2, j * e, e).view([b, t, self.heads, d]).transpose(1, 2);
        let (k, v) = cached(cache, i, split(1), split(2));
        let x = x + blk.attn_proj.forward(&attend(&split(0), &k, &v, s.masks.get(None), blk.scale, None));
        &x + blk.mlp_proj.forward(&self.act.forward(&blk.c_fc.forward(&blk.ln_2.forward(&x))))
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.ln_f.forward(x)
    }

    fn unembedding(&self) -> &Tensor {
        &self.wte.weight
    }
}

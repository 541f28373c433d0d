//! Phi-3 (`phi3`): a Llama-style decoder with fused `qkv_proj` and `gate_up_proj` projections,
//! rotary on the first `partial_rotary_factor` of each head, and a sliding window on every
//! layer when the config sets one.
//!
//! Follows `modeling_phi3.py`. LongRoPE scaling (Phi-3 128k variants) is not supported yet
//! and is refused by `Rotary::from_config`.
use crate::nn::attention::{attend, cached, Context, KvCache};
use crate::nn::rotary::{self, Rotary};
use crate::nn::{Activation, Embedding, Linear, RmsNorm};
use anyhow::{Context as _, Result};
use serde::Deserialize;
use tch::nn::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: Option<bool>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "one")]
    pub partial_rotary_factor: f64,
    pub sliding_window: Option<i64>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_act() -> String {
    "silu".into()
}

fn one() -> f64 {
    1.0
}

struct Block {
    input_layernorm: RmsNorm,
    qkv_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_up_proj: Linear,
    down_proj: Linear,
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rotary: Rotary,
    act: Activation,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    window: Option<i64>,
}

impl Model {
    pub fn new(vs: &Path, cfg: &Config, raw: &serde_json::Value) -> Result<Self> {
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads));
        let d = cfg.head_dim.unwrap_or(cfg.hidden_size / h);
        let (hid, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let m = vs / "model";
        let layers = (0..cfg.num_hidden_layers as usize)
            .map(|i| {
                let p = &m / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(&p / "input_layernorm", hid, eps, 0.0),
                    qkv_proj: Linear::new(&p / "self_attn" / "qkv_proj", hid, (h + 2 * kv) * d, false),
                    o_proj: Linear::new(&p / "self_attn" / "o_proj", h * d, hid, false),
                    post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", hid, eps, 0.0),
                    gate_up_proj: Linear::new(&p / "mlp" / "gate_up_proj", hid, 2 * inter, false),
                    down_proj: Linear::new(&p / "mlp" / "down_proj", inter, hid, false),
                }
            })
            .collect();
        let tied = cfg.tie_word_embeddings.unwrap_or(false);
        let rot_dim = (d as f64 * cfg.partial_rotary_factor) as i64;
        Ok(Self {
            embed_tokens: Embedding::new(&m / "embed_tokens", cfg.vocab_size, hid),
            layers,
            norm: RmsNorm::new(&m / "norm", hid, eps, 0.0),
            lm_head: (!tied).then(|| Linear::new(vs / "lm_head", hid, cfg.vocab_size, false)),
            rotary: Rotary::from_config(raw, rot_dim, 10000.0)?,
            act: Activation::parse(&cfg.hidden_act).context("hidden_act")?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
            window: cfg.sliding_window,
        })
    }
}

impl super::Layers for Model {
    fn embed(&self, ids: &Tensor, _ctx: &Context) -> Tensor {
        self.embed_tokens.forward(ids)
    }

    fn shared(&self, ctx: &Context, kind: Kind) -> super::Shared {
        let masks = super::Masks::new(ctx, std::iter::once(self.window), kind, false);
        super::Shared { cos_sin: self.rotary.cos_sin(&ctx.positions, kind), masks, cos_sin_local: None }
    }

    fn block(&self, i: usize, x: &Tensor, s: &super::Shared, cache: Option<&mut KvCache>) -> Tensor {
        let layer = &self.layers[i];
        let (b, t, _) = x.size3().expect("(batch, seq, hidden)");
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let (cos, sin) = &s.cos_sin;
        let qkv = layer.qkv_proj.forward(&layer.input_layernorm.forward(x));
        // (batch, heads, seq, head_dim)
        let q = qkv.narrow(2, 0, h * d).view([b, t, h, d]).transpose(1, 2);
        let k = qkv.narrow(2, h * d, kv * d).view([b, t, kv, d]).transpose(1, 2);
        let v = qkv.narrow(2, (h + kv) * d, kv * d).view([b, t, kv, d]).transpose(1, 2);
        let (q, k) = (rotary::apply(&q, cos, sin), rotary::apply(&k, cos, sin));
        let (k, v) = cached(cache, i, k, v);
        let x = x + layer.o_proj.forward(&attend(&q, &k, &v, s.masks.get(self.window), (d as f64).powf(-0.5), None));
        let gate_up = layer.gate_up_proj.forward(&layer.post_attention_layernorm.forward(&x));
        let inter = gate_up.size()[2] / 2;
        let up = gate_up.narrow(2, inter, inter) * self.act.forward(&gate_up.narrow(2, 0, inter));
        &x + layer.down_proj.forward(&up)
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().map_or(&self.embed_tokens.weight, |head| &head.weight)
    }
}

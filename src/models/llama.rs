//! Llama and the families that are Llama with switches, as transformers' modular files define
//! them: `llama` (Llama 2 / 3.x, optional attention and MLP biases, explicit head_dim),
//! `mistral` (sliding window on every layer), `qwen2` (bias on q, k and v only) and `qwen3`
//! (per-head RMSNorm on q and k before rotary, explicit head_dim).
//!
//! Follows `modeling_llama.py`, `modeling_mistral.py`, `modeling_qwen2.py`, `modeling_qwen3.py`.
use super::Family;
use crate::nn::attention::{attend, cached, Context, KvCache, Mask};
use crate::nn::rotary::{self, Rotary};
use crate::nn::{Activation, Embedding, GatedMlp, Linear, RmsNorm};
use anyhow::{Context as _, Result};
use serde::Deserialize;
use tch::nn::Path;
use tch::Tensor;

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
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub max_window_layers: Option<i64>,
    pub layer_types: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "silu".into()
}

impl Config {
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The sliding window of layer `i`, if it has one.
    fn window(&self, family: Family, i: usize) -> Option<i64> {
        let w = self.sliding_window?;
        // Qwen2Config drops the window unless use_sliding_window is set.
        if matches!(family, Family::Qwen2 | Family::Qwen3) && !self.use_sliding_window {
            return None;
        }
        match &self.layer_types {
            Some(types) => (types.get(i).map(String::as_str) == Some("sliding_attention")).then_some(w),
            None => match family {
                Family::Mistral => Some(w),
                Family::Qwen2 | Family::Qwen3 => (i as i64 >= self.max_window_layers.unwrap_or(0)).then_some(w),
                _ => None,
            },
        }
    }
}

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: Path, cfg: &Config, family: Family) -> Self {
        let (h, kv, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let qkv_bias = cfg.attention_bias || family == Family::Qwen2;
        let o_bias = cfg.attention_bias && family != Family::Qwen2;
        let qk_norm = family == Family::Qwen3;
        Self {
            q_proj: Linear::new(&p / "q_proj", cfg.hidden_size, h * d, qkv_bias),
            k_proj: Linear::new(&p / "k_proj", cfg.hidden_size, kv * d, qkv_bias),
            v_proj: Linear::new(&p / "v_proj", cfg.hidden_size, kv * d, qkv_bias),
            o_proj: Linear::new(&p / "o_proj", h * d, cfg.hidden_size, o_bias),
            q_norm: qk_norm.then(|| RmsNorm::new(&p / "q_norm", d, cfg.rms_norm_eps, 0.0)),
            k_norm: qk_norm.then(|| RmsNorm::new(&p / "k_norm", d, cfg.rms_norm_eps, 0.0)),
            heads: h,
            kv_heads: kv,
            head_dim: d,
        }
    }

    fn forward(&self, x: &Tensor, cos_sin: &(Tensor, Tensor), mask: &Mask, layer: usize, cache: Option<&mut KvCache>) -> Tensor {
        let (b, t, _) = x.size3().expect("x is (batch, seq, hidden)");
        // (batch, seq, heads, head_dim)
        let mut q = self.q_proj.forward(x).view([b, t, self.heads, self.head_dim]);
        let mut k = self.k_proj.forward(x).view([b, t, self.kv_heads, self.head_dim]);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        // (batch, heads, seq, head_dim)
        let q = rotary::apply(&q.transpose(1, 2), &cos_sin.0, &cos_sin.1);
        let k = rotary::apply(&k.transpose(1, 2), &cos_sin.0, &cos_sin.1);
        let v = self.v_proj.forward(x).view([b, t, self.kv_heads, self.head_dim]).transpose(1, 2);
        let (k, v) = cached(cache, layer, k, v);
        let y = attend(&q, &k, &v, mask, (self.head_dim as f64).powf(-0.5), None);
        self.o_proj.forward(&y)
    }
}

pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
    window: Option<i64>,
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rotary: Rotary,
}

impl Model {
    pub fn new(vs: &Path, cfg: &Config, raw: &serde_json::Value, family: Family) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act).context("hidden_act")?;
        let m = vs / "model";
        let layers = (0..cfg.num_hidden_layers as usize)
            .map(|i| {
                let p = &m / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps, 0.0),
                    self_attn: Attention::new(&p / "self_attn", cfg, family),
                    post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps, 0.0),
                    mlp: GatedMlp::new(&p / "mlp", cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, act),
                    window: cfg.window(family, i),
                }
            })
            .collect();
        let tied = cfg.tie_word_embeddings.unwrap_or(false);
        Ok(Self {
            embed_tokens: Embedding::new(&m / "embed_tokens", cfg.vocab_size, cfg.hidden_size),
            layers,
            norm: RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps, 0.0),
            lm_head: (!tied).then(|| Linear::new(vs / "lm_head", cfg.hidden_size, cfg.vocab_size, false)),
            rotary: Rotary::from_config(raw, cfg.head_dim(), 10000.0)?,
        })
    }

    pub fn tied(&self) -> bool {
        self.lm_head.is_none()
    }
}

impl super::Layers for Model {
    fn embed(&self, ids: &Tensor, _ctx: &Context) -> Tensor {
        self.embed_tokens.forward(ids)
    }

    fn shared(&self, ctx: &Context, kind: tch::Kind) -> super::Shared {
        let masks = super::Masks::new(ctx, self.layers.iter().map(|l| l.window), kind, false);
        super::Shared { cos_sin: self.rotary.cos_sin(&ctx.positions, kind), masks, cos_sin_local: None }
    }

    fn block(&self, i: usize, x: &Tensor, s: &super::Shared, cache: Option<&mut KvCache>) -> Tensor {
        let layer = &self.layers[i];
        let x = x + layer.self_attn.forward(&layer.input_layernorm.forward(x), &s.cos_sin, s.masks.get(layer.window), i, cache);
        &x + layer.mlp.forward(&layer.post_attention_layernorm.forward(&x))
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().map_or(&self.embed_tokens.weight, |head| &head.weight)
    }
}

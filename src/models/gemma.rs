//! Gemma (`gemma`), Gemma 2 (`gemma2`) and Gemma 3 text (`gemma3_text`): RMSNorm with
//! `(1 + w)`, embeddings scaled by sqrt(hidden) in the weight dtype, GELU-tanh gated MLP and a
//! tied head. Gemma 2 adds sandwich norms (post-attention, pre/post feed-forward), attention
//! scale `query_pre_attn_scalar^-0.5`, tanh soft-capping of attention and final logits, and
//! sliding-window layers as `layer_types` says (even layers when it is absent). Gemma 3 keeps
//! the sandwich norms and the scale, drops soft-capping, adds RMSNorm on q and k, and gives
//! its sliding layers (five of every six unless `layer_types` says otherwise) their own rope
//! base (`rope_parameters.sliding_attention`, or v4's `rope_local_base_freq`).
//!
//! Follows `modeling_gemma.py`, `modeling_gemma2.py` (eager attention, which Gemma 2 needs for
//! soft-capping) and `modeling_gemma3.py`.
use super::Family;
use crate::nn::attention::{attend, cached, Context, KvCache, Mask};
use crate::nn::rotary::{self, Rotary};
use crate::nn::{Activation, Embedding, GatedMlp, Linear, RmsNorm};
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
    #[serde(default)]
    pub attention_bias: bool,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: Option<i64>,
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 (v4 configs): one full-attention layer in this many.
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3 (v4 configs): the rope base of sliding layers.
    pub rope_local_base_freq: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}

impl Config {
    fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn activation(&self, family: Family) -> Result<Activation> {
        // Gemma reads hidden_act (its legacy "gelu" means the tanh form); Gemma 2 reads hidden_activation.
        let name = match family {
            Family::Gemma => self.hidden_act.as_deref().map(|a| if a == "gelu" { "gelu_pytorch_tanh" } else { a }),
            _ => self.hidden_activation.as_deref().or(self.hidden_act.as_deref()),
        };
        Activation::parse(name.unwrap_or("gelu_pytorch_tanh")).context("hidden_activation")
    }

    fn window(&self, family: Family, i: usize) -> Option<i64> {
        let w = self.sliding_window?;
        let sliding = match &self.layer_types {
            Some(types) => types.get(i).map(String::as_str) == Some("sliding_attention"),
            None if family == Family::Gemma3 => !(i + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(6)),
            None => family == Family::Gemma2 && i.is_multiple_of(2),
        };
        sliding.then_some(w)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Gemma 3's RMSNorm over each head of q and k, before rotary.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    fn forward(&self, x: &Tensor, cos_sin: &(Tensor, Tensor), mask: &Mask, layer: usize, cache: Option<&mut KvCache>) -> Tensor {
        let (b, t, _) = x.size3().expect("x is (batch, seq, hidden)");
        // (batch, heads, seq, head_dim)
        let mut q = self.q_proj.forward(x).view([b, t, self.heads, self.head_dim]).transpose(1, 2);
        let mut k = self.k_proj.forward(x).view([b, t, self.kv_heads, self.head_dim]).transpose(1, 2);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let v = self.v_proj.forward(x).view([b, t, self.kv_heads, self.head_dim]).transpose(1, 2);
        let q = rotary::apply(&q, &cos_sin.0, &cos_sin.1);
        let k = rotary::apply(&k, &cos_sin.0, &cos_sin.1);
        let (k, v) = cached(cache, layer, k, v);
        self.o_proj.forward(&attend(&q, &k, &v, mask, self.scale, self.softcap))
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// Gemma 2's sandwich norms around the MLP.
    pre_feedforward_layernorm: Option<RmsNorm>,
    post_feedforward_layernorm: Option<RmsNorm>,
    mlp: GatedMlp,
    window: Option<i64>,
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    rotary: Rotary,
    /// Gemma 3: the rope of sliding-window layers.
    rotary_local: Option<Rotary>,
    embed_scale: f64,
    final_softcap: Option<f64>,
}

impl Model {
    pub fn new(vs: &Path, cfg: &Config, raw: &serde_json::Value, family: Family) -> Result<Self> {
        let act = cfg.activation(family)?;
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads), cfg.head_dim());
        let v3 = family == Family::Gemma3;
        // Gemma 3 keeps Gemma 2's sandwich norms and attention scale.
        let v2 = family == Family::Gemma2 || v3;
        let scale = match (v2, cfg.query_pre_attn_scalar) {
            (true, Some(s)) => s.powf(-0.5),
            _ => (d as f64).powf(-0.5),
        };
        let m = vs / "model";
        let norm = |p: Path| RmsNorm::new(p, cfg.hidden_size, cfg.rms_norm_eps, 1.0);
        let layers = (0..cfg.num_hidden_layers as usize)
            .map(|i| {
                let p = &m / "layers" / i;
                let a = &p / "self_attn";
                Block {
                    input_layernorm: norm(&p / "input_layernorm"),
                    self_attn: Attention {
                        q_proj: Linear::new(&a / "q_proj", cfg.hidden_size, h * d, cfg.attention_bias),
                        k_proj: Linear::new(&a / "k_proj", cfg.hidden_size, kv * d, cfg.attention_bias),
                        v_proj: Linear::new(&a / "v_proj", cfg.hidden_size, kv * d, cfg.attention_bias),
                        o_proj: Linear::new(&a / "o_proj", h * d, cfg.hidden_size, cfg.attention_bias),
                        q_norm: v3.then(|| RmsNorm::new(&a / "q_norm", d, cfg.rms_norm_eps, 1.0)),
                        k_norm: v3.then(|| RmsNorm::new(&a / "k_norm", d, cfg.rms_norm_eps, 1.0)),
                        heads: h,
                        kv_heads: kv,
                        head_dim: d,
                        scale,
                        softcap: if v2 { cfg.attn_logit_softcapping } else { None },
                    },
                    post_attention_layernorm: norm(&p / "post_attention_layernorm"),
                    pre_feedforward_layernorm: v2.then(|| norm(&p / "pre_feedforward_layernorm")),
                    post_feedforward_layernorm: v2.then(|| norm(&p / "post_feedforward_layernorm")),
                    mlp: GatedMlp::new(&p / "mlp", cfg.hidden_size, cfg.intermediate_size, false, act),
                    window: if v2 { cfg.window(family, i) } else { None },
                }
            })
            .collect();
        Ok(Self {
            embed_tokens: Embedding::new(&m / "embed_tokens", cfg.vocab_size, cfg.hidden_size),
            layers,
            norm: norm(&m / "norm"),
            rotary: if v3 { gemma3_rope(raw, d, "full_attention")? } else { Rotary::from_config(raw, d, 10000.0)? },
            rotary_local: if v3 { Some(gemma3_rope(raw, d, "sliding_attention")?) } else { None },
            // transformers keeps sqrt(hidden) as a float32 buffer, cast to the weight dtype.
            embed_scale: (cfg.hidden_size as f32).sqrt() as f64,
            final_softcap: if v2 { cfg.final_logit_softcapping } else { None },
        })
    }
}

impl super::Layers for Model {
    fn embed(&self, ids: &Tensor, _ctx: &Context) -> Tensor {
        let x = self.embed_tokens.forward(ids);
        // The scale rounded to the activations' dtype, as a scalar: a tensor copied to the GPU
        // on every forward would make each decode step wait for it.
        let scale = Tensor::from(self.embed_scale as f32).to_kind(x.kind()).double_value(&[]);
        x * scale
    }

    fn shared(&self, ctx: &Context, kind: Kind) -> super::Shared {
        // Soft-capped (Gemma 2) attention is eager and needs mask tensors.
        let explicit = self.layers.iter().any(|l| l.self_attn.softcap.is_some());
        let masks = super::Masks::new(ctx, self.layers.iter().map(|l| l.window), kind, explicit);
        let cos_sin_local = self.rotary_local.as_ref().map(|r| r.cos_sin(&ctx.positions, kind));
        super::Shared { cos_sin: self.rotary.cos_sin(&ctx.positions, kind), masks, cos_sin_local }
    }

    fn block(&self, i: usize, x: &Tensor, s: &super::Shared, cache: Option<&mut KvCache>) -> Tensor {
        let layer = &self.layers[i];
        let cos_sin = match (&s.cos_sin_local, layer.window) {
            (Some(local), Some(_)) => local,
            _ => &s.cos_sin,
        };
        let h = layer.self_attn.forward(&layer.input_layernorm.forward(x), cos_sin, s.masks.get(layer.window), i, cache);
        match (&layer.pre_feedforward_layernorm, &layer.post_feedforward_layernorm) {
            (Some(pre), Some(post)) => {
                let x = x + layer.post_attention_layernorm.forward(&h);
                &x + post.forward(&layer.mlp.forward(&pre.forward(&x)))
            }
            _ => {
                let x = x + h;
                &x + layer.mlp.forward(&layer.post_attention_layernorm.forward(&x))
            }
        }
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    fn unembedding(&self) -> &Tensor {
        &self.embed_tokens.weight
    }

    fn final_softcap(&self) -> Option<f64> {
        self.final_softcap
    }
}

/// Gemma 3's rope for one layer type: v5's `rope_parameters[layer_type]`, or v4's `rope_theta`
/// (+ `rope_scaling`) for full layers and `rope_local_base_freq` for sliding ones.
fn gemma3_rope(raw: &serde_json::Value, head_dim: i64, layer_type: &str) -> Result<Rotary> {
    let max_pos = raw.get("max_position_embeddings").and_then(serde_json::Value::as_f64);
    if let Some(p) = raw.get("rope_parameters").and_then(|p| p.get(layer_type)) {
        let default = if layer_type == "full_attention" { 1_000_000.0 } else { 10_000.0 };
        let theta = p.get("rope_theta").and_then(serde_json::Value::as_f64).unwrap_or(default);
        return Rotary::new(theta, head_dim, Some(p), max_pos).with_context(|| format!("rope_parameters.{layer_type}"));
    }
    if layer_type == "full_attention" {
        Rotary::from_config(raw, head_dim, 1_000_000.0)
    } else {
        let theta = raw.get("rope_local_base_freq").and_then(serde_json::Value::as_f64).unwrap_or(10_000.0);
        Rotary::new(theta, head_dim, None, max_pos)
    }
}

//! Rotary position embeddings in the Hugging Face layout ("rotate half", not interleaved),
//! with the frequency schedules of `transformers.modeling_rope_utils`: default, linear,
//! llama3 and yarn. A `partial_rotary_factor` rotates only the first part of each head.
//!
//! Config forms accepted: transformers v5 `rope_parameters: {rope_type, rope_theta, ...}` and
//! v4 `rope_theta` plus `rope_scaling: {rope_type|type, factor, ...}`.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// Rotary settings of one attention layer.
#[derive(Debug)]
pub struct Rotary {
    /// (rot_dim / 2) inverse frequencies, float32.
    inv_freq: Vec<f32>,
    /// Scale applied to cos and sin (yarn's attention factor; 1 otherwise).
    attention_scaling: f64,
    /// `inv_freq` on the device of the last call: copying it there on every forward would make
    /// each decode step wait for the GPU (a host-to-device copy synchronises).
    on_device: std::cell::RefCell<Option<Tensor>>,
}

impl Rotary {
    /// Reads the rope settings of `config` (a config.json object). `rot_dim` is the number of
    /// rotated dimensions per head; `max_pos` is `max_position_embeddings`.
    pub fn from_config(config: &Value, rot_dim: i64, default_theta: f64) -> Result<Self> {
        let (theta, scaling) = if let Some(p) = config.get("rope_parameters").filter(|v| v.is_object()) {
            (p.get("rope_theta").and_then(Value::as_f64).unwrap_or(default_theta), Some(p.clone()))
        } else {
            let theta = config.get("rope_theta").and_then(Value::as_f64).unwrap_or(default_theta);
            (theta, config.get("rope_scaling").filter(|v| v.is_object()).cloned())
        };
        let max_pos = config.get("max_position_embeddings").and_then(Value::as_f64);
        Self::new(theta, rot_dim, scaling.as_ref(), max_pos)
    }

    pub fn new(theta: f64, rot_dim: i64, scaling: Option<&Value>, max_pos: Option<f64>) -> Result<Self> {
        let half = (rot_dim / 2) as usize;
        // As transformers: arange(0, dim, 2).float() / dim, then base ** that, in float32.
        let base: Vec<f32> = (0..half).map(|i| (theta as f32).powf((2 * i) as f32 / rot_dim as f32)).collect();
        let mut inv_freq: Vec<f32> = base.iter().map(|b| 1.0 / b).collect();
        let mut attention_scaling = 1.0;
        let rope_type = scaling
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let get = |key: &str| scaling.and_then(|s| s.get(key)).and_then(Value::as_f64);
        match rope_type {
            "default" => {}
            "linear" => {
                let factor = get("factor").context("rope scaling \"linear\" needs \"factor\"")? as f32;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let need = |k: &str| get(k).with_context(|| format!("rope scaling \"llama3\" needs \"{k}\""));
                let factor = need("factor")?;
                let low = need("low_freq_factor")?;
                let high = need("high_freq_factor")?;
                let old_ctx = need("original_max_position_embeddings")?;
                let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
                for f in inv_freq.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * PI / freq;
                    *f = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    } as f32;
                }
            }
            "yarn" => {
                let factor = get("factor").context("rope scaling \"yarn\" needs \"factor\"")?;
                let orig = get("original_max_position_embeddings").or(max_pos).context(
                    "rope scaling \"yarn\" needs original_max_position_embeddings or max_position_embeddings",
                )?;
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                attention_scaling = match (get("attention_factor"), get("mscale"), get("mscale_all_dim")) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                let beta_fast = get("beta_fast").unwrap_or(32.0);
                let beta_slow = get("beta_slow").unwrap_or(1.0);
                let truncate = scaling.and_then(|s| s.get("truncate")).and_then(Value::as_bool).unwrap_or(true);
                let dim = rot_dim as f64;
                let corr = |rot: f64| dim * (orig / (rot * 2.0 * PI)).ln() / (2.0 * theta.ln());
                let (mut lo, mut hi) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    lo = lo.floor();
                    hi = hi.ceil();
                }
                let (lo, mut hi) = (lo.max(0.0), hi.min(dim - 1.0));
                if lo == hi {
                    hi += 0.001;
                }
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    let extrapolation = 1.0 / base[i] as f64;
                    let interpolation = 1.0 / (factor * base[i] as f64);
                    let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                    let extra_factor = 1.0 - ramp;
                    *f = (interpolation * (1.0 - extra_factor) + extrapolation * extra_factor) as f32;
                }
            }
            other => bail!("unsupported rope type {other:?} (supported: default, linear, llama3, yarn)"),
        }
        Ok(Self { inv_freq, attention_scaling, on_device: Default::default() })
    }

    pub fn rot_dim(&self) -> i64 {
        2 * self.inv_freq.len() as i64
    }

    /// cos and sin for `positions` (batch, seq) as (batch, 1, seq, rot_dim) in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let device: Device = positions.device();
        let inv = {
            let mut cached = self.on_device.borrow_mut();
            match cached.as_ref().filter(|t| t.device() == device) {
                Some(t) => t.shallow_clone(),
                None => cached.insert(Tensor::from_slice(&self.inv_freq).to_device(device)).shallow_clone(),
            }
        };
        // (batch, seq, rot_dim / 2)
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let cos = (emb.cos() * self.attention_scaling).to_kind(kind);
        let sin = (emb.sin() * self.attention_scaling).to_kind(kind);
        (cos, sin)
    }
}

/// Applies the rotation to the first `cos.size()[-1]` dims of `x` (batch, heads, seq, head_dim).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let head_dim = x.size()[3];
    let rot = cos.size()[3];
    let (x_rot, x_pass) = (x.narrow(3, 0, rot), x.narrow(3, rot, head_dim - rot));
    let half = rot / 2;
    let rotated = Tensor::cat(&[-x_rot.narrow(3, half, half), x_rot.narrow(3, 0, half)], 3);
    let out = &x_rot * cos + rotated * sin;
    if rot == head_dim {
        out
    } else {
        Tensor::cat(&[out, x_pass], 3)
    }
}

//! Layers that several model families share, written once: linear, embedding, norms,
//! activations, rotary position embeddings and attention with a KV cache.
//!
//! Parameters are created zero-filled in a `tch::nn::VarStore` under their Hugging Face names
//! (`p / "q_proj"` makes `...q_proj.weight`) and filled by `models::load`. Numerics follow
//! transformers: norms compute in float32 and cast back, as `LlamaRMSNorm` and `GemmaRMSNorm` do.
pub mod attention;
pub mod lora;
pub mod matmul;
pub mod rotary;

use anyhow::{bail, Result};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// `y = x W^T + b`, with `W` of shape (out, in) as in `torch.nn.Linear`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// LoRA adapters when the model was built with them for this layer.
    pub lora: Option<lora::Adapter>,
}

impl Linear {
    pub fn new(p: Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], Init::Const(0.));
        let bias = bias.then(|| p.var("bias", &[out_dim], Init::Const(0.)));
        Self { weight, bias, lora: lora::attach(&p, in_dim, out_dim) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        // A large weight without a bias takes the head's path for few rows without a graph on
        // the CPU (`matmul::by_weight`): when the weights stream from memory on every decode
        // step, one row of Gemma-3-270M decodes in 38 ms instead of 54 (BENCHMARKS.md). Small
        // weights stay in the cache, where `linear` is faster (128 × 64, one row: 3.2 against
        // 10.7 µs), and a bias stays inside `linear`'s one addmm, rounded once as transformers
        // rounds it in bf16.
        let y = match &self.bias {
            None if self.weight.numel() >= matmul::STREAMED_WEIGHT => matmul::by_weight(x, &self.weight),
            _ => x.linear(&self.weight, self.bias.as_ref()),
        };
        match &self.lora {
            Some(a) => y + a.delta(x),
            None => y,
        }
    }
}

/// Token embedding table (vocab, hidden).
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(p: Path, vocab: i64, dim: i64) -> Self {
        Self { weight: p.var("weight", &[vocab, dim], Init::Const(0.)) }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

/// RMSNorm. `offset` is 0 for Llama-style weights (`w * x̂`) and 1 for Gemma (`(1 + w) * x̂`).
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
    offset: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: i64, eps: f64, offset: f64) -> Self {
        Self { weight: p.var("weight", &[dim], Init::Const(0.)), eps, offset }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = &xf * (var + self.eps).rsqrt();
        if self.offset == 0.0 {
            // LlamaRMSNorm: cast back first, then scale in the activation dtype.
            &self.weight * normed.to_kind(kind)
        } else {
            // GemmaRMSNorm: scale in float32, then cast.
            (normed * (self.weight.to_kind(Kind::Float) + self.offset)).to_kind(kind)
        }
    }
}

/// LayerNorm with weight and bias (GPT-2).
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], Init::Const(0.));
        let bias = p.var("bias", &[dim], Init::Const(0.));
        Self { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().unwrap_or(&0);
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// The activation functions named by `hidden_act` / `hidden_activation` / `activation_function`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// The tanh approximation in one kernel (`gelu_pytorch_tanh`).
    GeluTanh,
    /// The tanh approximation written out op by op, as transformers' `gelu_new` (GPT-2) and
    /// `gelu_fast` compute it: the same function, rounded after every op in bf16.
    GeluNew,
    GeluFast,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu" => Self::Gelu,
            "gelu_pytorch_tanh" => Self::GeluTanh,
            "gelu_new" => Self::GeluNew,
            "gelu_fast" => Self::GeluFast,
            "relu" => Self::Relu,
            other => bail!("unsupported activation {other:?} (supported: silu, gelu, gelu_pytorch_tanh, gelu_new, gelu_fast, relu)"),
        })
    }

    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu("none"),
            Self::GeluTanh => x.gelu("tanh"),
            Self::GeluNew => {
                let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
                x * 0.5 * (inner.tanh() + 1.0)
            }
            Self::GeluFast => {
                let inner = x * 0.7978845608 * (x * 0.044715 * x + 1.0);
                x * 0.5 * (inner.tanh() + 1.0)
            }
            Self::Relu => x.relu(),
        }
    }
}

/// The gated MLP of Llama-style models: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn new(p: Path, hidden: i64, inter: i64, bias: bool, act: Activation) -> Self {
        Self {
            gate_proj: Linear::new(&p / "gate_proj", hidden, inter, bias),
            up_proj: Linear::new(&p / "up_proj", hidden, inter, bias),
            down_proj: Linear::new(&p / "down_proj", inter, hidden, bias),
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.act.forward(&self.gate_proj.forward(x)) * self.up_proj.forward(x)))
    }
}

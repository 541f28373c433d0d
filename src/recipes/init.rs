//! The `init_model` recipe: a new, randomly initialised model of a Llama-style family (llama,
//! mistral, qwen2, qwen3) for a trained tokenizer, written through the export path and loaded
//! back through the loader. Initialisation follows transformers' `_init_weights`: normal(0,
//! 0.02) matrices and embeddings, zero biases, unit norm weights.
use crate::export::write_dir;
use crate::models::{self, Family};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `recipe: init_model`: a randomly initialised model of a Llama-style family, saved in
/// Hugging Face layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitModel {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    /// llama, mistral, qwen2 or qwen3.
    pub model_type: String,
    /// A directory with tokenizer.json and tokenizer_config.json.
    pub tokenizer: PathBuf,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Embedding rows; default the tokenizer's vocabulary (real models often pad it, e.g. to a
    /// multiple of 64 or to 128256).
    #[serde(default)]
    pub vocab_size: Option<i64>,
    /// dtype of the written weights.
    #[serde(default = "f32")]
    pub dtype: String,
}

fn d_max_pos() -> i64 {
    2048
}

impl crate::spec::Schema for InitModel {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.hidden_size > 0 && self.num_hidden_layers > 0 && self.intermediate_size > 0, "sizes must be positive");
        ensure!(self.num_attention_heads > 0 && self.num_key_value_heads > 0 && self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads must be a positive multiple of num_key_value_heads");
        ensure!(self.head_dim.is_some() || self.hidden_size % self.num_attention_heads == 0, "hidden_size must divide by num_attention_heads (or set head_dim)");
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

pub fn run(r: &InitModel) -> Result<()> {
    // A folder tokbridge did not write (a user's model) is never replaced; it was deleted whole.
    crate::atomic::check_replaceable(&r.output_dir, false).with_context(|| format!("init_model: output_dir {}", r.output_dir.display()))?;
    let family = Family::from_model_type(&r.model_type)?;
    if !matches!(family, Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3) {
        bail!("init_model: model_type {} is not supported (llama, mistral, qwen2, qwen3)", r.model_type);
    }
    let tok = crate::hf::tokenizer::Tokenizer::load(&r.tokenizer).with_context(|| format!("tokenizer {}", r.tokenizer.display()))?;
    let cfg_path = r.tokenizer.join("tokenizer_config.json");
    let tcfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)?;
    let id = |key: &str| tcfg[key].as_str().and_then(|t| tok.inner.token_to_id(t)).map(|i| i as i64);
    let tok_vocab = tok.inner.get_vocab_size(true) as i64;
    let vocab = r.vocab_size.unwrap_or(tok_vocab);
    if vocab < tok_vocab {
        bail!("init_model: vocab_size {vocab} is smaller than the tokenizer's {tok_vocab} tokens");
    }
    let kind = crate::device::parse_dtype(&r.dtype).context("dtype")?;
    let head_dim = r.head_dim.unwrap_or(r.hidden_size / r.num_attention_heads);
    let config = json!({
        "architectures": [match family { Family::Qwen3 => "Qwen3ForCausalLM", Family::Qwen2 => "Qwen2ForCausalLM", Family::Mistral => "MistralForCausalLM", _ => "LlamaForCausalLM" }],
        "model_type": r.model_type,
        "vocab_size": vocab,
        "hidden_size": r.hidden_size,
        "intermediate_size": r.intermediate_size,
        "num_hidden_layers": r.num_hidden_layers,
        "num_attention_heads": r.num_attention_heads,
        "num_key_value_heads": r.num_key_value_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": r.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": r.tie_word_embeddings,
        "attention_bias": false,
        "bos_token_id": id("bos_token"),
        "eos_token_id": id("eos_token"),
        "pad_token_id": id("pad_token"),
        "dtype": crate::export::dtype_name(kind),
    });
    // Stage the config and tokenizer, build the model from them, initialise, export.
    let stage = crate::atomic::tmp_path(&r.output_dir.with_extension("init"));
    std::fs::create_dir_all(&stage)?;
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        if r.tokenizer.join(f).exists() {
            std::fs::copy(r.tokenizer.join(f), stage.join(f))?;
        }
    }
    std::fs::write(stage.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let gen = json!({"bos_token_id": id("bos_token"), "eos_token_id": id("eos_token"), "pad_token_id": id("pad_token")});
    std::fs::write(stage.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
    let (model, _) = models::build(&stage, Device::Cpu)?;
    tch::manual_seed(r.seed as i64);
    {
        let _g = tch::no_grad_guard();
        // In name order: the variables come in a hash map, whose order differs from run to run.
        let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            if name.ends_with("norm.weight") {
                let _ = t.fill_(1.0);
            } else if name.ends_with(".bias") {
                let _ = t.zero_();
            } else {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.02));
            }
        }
    }
    let written = crate::atomic::publish_new(&r.output_dir, |out| write_dir(&model, &stage, out, kind, u64::MAX));
    std::fs::remove_dir_all(&stage)?;
    written.with_context(|| format!("init_model: output_dir {}", r.output_dir.display()))?;
    let back = models::load(&r.output_dir, Device::Cpu, kind)?;
    let params: i64 = back.vs.variables().values().map(|t| t.numel() as i64).sum();
    crate::info!("init_model: {} with {:.2}M parameters in {}", r.model_type, params as f64 / 1e6, r.output_dir.display());
    Ok(())
}

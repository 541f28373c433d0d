//! Loading a Hugging Face model directory into a `Model`: config.json picks the family,
//! parameters are created under their Hugging Face names and filled from the safetensors
//! strictly (a missing, unexpected or mis-shaped tensor is an error naming it and its file;
//! the tied `lm_head.weight` is the one allowed absence), and LoRA adapters are attached.
use super::*;
use crate::hf::safetensors::Checkpoint;
use crate::hf::{hub, tokenizer::Tokenizer};
use crate::nn::lora::LoraSpec;
use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind};

fn parse<T: serde::de::DeserializeOwned>(config: &Value, path: &Path) -> Result<T> {
    serde_json::from_value(config.clone()).with_context(|| format!("{}: invalid config", path.display()))
}

/// Resolves `spec` (a directory or a hub id, through the Hugging Face cache) and loads the
/// model and its tokenizer, with LoRA adapters as `load_adapted` takes them (`adapter`: a PEFT
/// directory or hub id).
pub fn load_spec(spec: &str, device: Device, kind: Kind, adapter: Option<&str>, lora: Option<&LoraSpec>) -> Result<(Model, Tokenizer)> {
    let dir = hub::resolve(spec)?;
    let adapter = adapter.map(hub::resolve_adapter).transpose()?;
    let model = load_adapted(&dir, device, kind, adapter.as_deref(), lora).with_context(|| format!("loading model {spec}"))?;
    let tok = Tokenizer::load(&dir)?;
    Ok((model, tok))
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
        Some(a) => {
            let path = a.join("adapter_config.json");
            let loaded = LoraSpec::from_peft_config(&path)?;
            match lora {
                Some(l) => {
                    l.agrees_with(&loaded, "lora", &path)?;
                    Some(LoraSpec { dropout: l.dropout, ..loaded })
                }
                None => Some(loaded),
            }
        }
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
            let t = ckpt.tensor(stored)?;
            ensure!(t.is_floating_point(), "{}: tensor {stored} is {:?}; adapter weights are floating point", path.display(), t.kind());
            ensure!(bool::try_from(t.isfinite().all())?, "{}: tensor {stored} holds NaN or infinite values", path.display());
            if spec.saves(&name) {
                // A module saved whole (PEFT's modules_to_save): it replaces the base's.
                let mut var = base.get(&name).with_context(|| format!("{}: {stored} names no weight of the base", path.display()))?.shallow_clone();
                ensure!(t.size() == var.size(), "{}: tensor {stored} has shape {:?}, the base's {:?}", path.display(), t.size(), var.size());
                var.f_copy_(&t.to_kind(var.kind()).to_device(device))?;
                continue;
            }
            let mut var = vars.remove(&name).with_context(|| format!("{}: unexpected tensor {stored} (no such adapter on this base)", path.display()))?;
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
    check_sizes(&config, device, crate::nn::lora::planned_rank()).with_context(|| config_path.display().to_string())?;
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

/// The size keys of every family's config.json (Hugging Face's names, GPT-2's included).
const SIZE_KEYS: [&str; 14] = [
    "vocab_size", "hidden_size", "n_embd", "intermediate_size", "n_inner", "num_hidden_layers", "n_layer",
    "num_attention_heads", "n_head", "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions",
    "sliding_window",
];

/// Checks a config's sizes before anything is allocated (libtorch panics when an allocation
/// fails): every size a positive integer, the heads dividing what they split, positive finite
/// rotary bases and norm epsilons, and the float32 parameters (with LoRA adapters of rank
/// `lora_rank` on every projection, an upper bound) within the memory this host has free.
fn check_sizes(config: &Value, device: Device, lora_rank: Option<i64>) -> Result<()> {
    for key in SIZE_KEYS {
        let v = &config[key];
        ensure!(v.is_null() || v.as_u64().is_some_and(|n| (1..=1 << 31).contains(&n)), "{key}: {v} is not a size (a whole number from 1 to 2^31)");
    }
    let get = |key: &str| config[key].as_u64().map(|n| n as f64);
    for key in ["rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            ensure!(v.as_f64().is_some_and(|x| x.is_finite() && (x > 0.0 || (key != "rope_theta" && x == 0.0))), "{key}: {v} must be a positive number");
        }
    }
    let hidden = get("hidden_size").or(get("n_embd")).context("no hidden_size")?;
    let heads = get("num_attention_heads").or(get("n_head")).context("no num_attention_heads")?;
    let kv = get("num_key_value_heads").unwrap_or(heads);
    ensure!(heads % kv == 0.0, "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}");
    let head_dim = match get("head_dim") {
        Some(d) => d,
        None => {
            ensure!(hidden % heads == 0.0, "hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
            hidden / heads
        }
    };
    let layers = get("num_hidden_layers").or(get("n_layer")).context("no num_hidden_layers")?;
    let vocab = get("vocab_size").context("no vocab_size")?;
    let inter = get("intermediate_size").or(get("n_inner")).unwrap_or(4.0 * hidden);
    // Embeddings and an untied head; per layer q, k, v, o and three MLP projections.
    let per_layer = hidden * head_dim * (2.0 * heads + 2.0 * kv) + 3.0 * hidden * inter + 4.0 * hidden;
    let adapters = lora_rank.map_or(0.0, |r| r as f64 * 7.0 * (hidden + inter.max(heads * head_dim)));
    let bytes = 4.0 * (2.0 * vocab * hidden + layers * (per_layer + adapters));
    let free = match device {
        Device::Cpu => crate::device::available_bytes().unwrap_or(f64::INFINITY),
        _ => f64::INFINITY,
    };
    let gib = |b: f64| b / (1u64 << 30) as f64;
    ensure!(
        bytes <= free.min(1e13),
        "vocab_size {vocab}, hidden_size {hidden}, intermediate_size {inter}, num_hidden_layers {layers}{}: about {:.1} GiB of float32 parameters, more than the {:.1} GiB free here",
        lora_rank.map(|r| format!(" and LoRA r {r}")).unwrap_or_default(),
        gib(bytes),
        gib(free.min(1e13))
    );
    Ok(())
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

/// A store's variables by name, sorted.
pub fn named_weights_of(vs: &tch::nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut w: Vec<_> = vs.variables().into_iter().map(|(n, t)| (n, t.detach())).collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

//! `tokbridge export`: a run's latest checkpoint (or any model) as a Hugging Face model
//! directory that transformers loads: safetensors under the original tensor names in the chosen
//! dtype with `{"format": "pt"}` metadata, sharded with `model.safetensors.index.json` above a
//! size limit, config.json (its dtype updated), generation config and tokenizer files. The
//! directory is assembled under a temporary name, synced, and published in one atomic step;
//! only a directory tokbridge wrote is replaced (`atomic`).
use crate::atomic::tmp_path;
use crate::hf::safetensors;
use crate::train::checkpoint::{self, copy_model_files};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A run directory's latest checkpoint, or the model directory `src` resolves to.
pub fn source_dir(src: &str) -> Result<PathBuf> {
    let path = Path::new(src);
    if path.join("checkpoints").is_dir() {
        return checkpoint::latest(path)?.with_context(|| format!("run {src} has no complete checkpoint"));
    }
    crate::hf::hub::resolve(src)
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The dtype a config.json declares (`dtype` in v5, `torch_dtype` in v4), else float32.
pub fn declared_dtype(config: &Value) -> Kind {
    match config.get("dtype").or_else(|| config.get("torch_dtype")).and_then(Value::as_str) {
        Some("bfloat16") => Kind::BFloat16,
        Some("float16") => Kind::Half,
        _ => Kind::Float,
    }
}

/// Exports `src` to `out` in `kind` (None: the dtype its config declares), converting on
/// `device`. A LoRA run or PEFT adapter directory exports as a PEFT adapter directory (with the
/// base's tokenizer files), or with `merge` as the merged full model.
/// `force`: replace a model folder tokbridge did not write (`atomic::check_replaceable`).
#[allow(clippy::too_many_arguments)]
pub fn export(src: &str, out: &Path, kind: Option<Kind>, max_shard_bytes: u64, device: Device, merge: bool, force: bool) -> Result<()> {
    crate::atomic::clean_around(out)?;
    let dir = source_dir(src)?;
    crate::atomic::check_output(out, &dir)?;
    crate::atomic::check_replaceable(out, force)?;
    let adapter = dir.join("adapter_config.json").is_file().then(|| dir.clone());
    let base = match &adapter {
        Some(a) => {
            let cfg: Value = serde_json::from_str(&std::fs::read_to_string(a.join("adapter_config.json"))?).with_context(|| format!("{}: not valid JSON", a.join("adapter_config.json").display()))?;
            let base = cfg["base_model_name_or_path"].as_str().with_context(|| format!("{}: no base_model_name_or_path", a.join("adapter_config.json").display()))?;
            crate::hf::hub::resolve(base)?
        }
        None => dir.clone(),
    };
    let model = crate::models::load_adapted(&base, device, Kind::Float, adapter.as_deref(), None)?;
    let kind = kind.unwrap_or_else(|| declared_dtype(&model.config));
    let tmp = tmp_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = if adapter.is_some() && !merge {
        crate::train::checkpoint::save_adapters(&model, &base, &tmp).and_then(|()| {
            for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"] {
                if base.join(f).exists() {
                    std::fs::copy(base.join(f), tmp.join(f)).with_context(|| format!("copying {}", base.join(f).display()))?;
                }
            }
            Ok(())
        })
    } else {
        write_dir(&model, &base, &tmp, kind, max_shard_bytes)
    };
    let result = written.and_then(|()| crate::atomic::publish_dir(&tmp, out, force));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes `model` as a Hugging Face directory `dst`, with the config and tokenizer files of `src`.
pub fn write_dir(model: &crate::models::Model, src: &Path, dst: &Path, kind: Kind, max_shard_bytes: u64) -> Result<()> {
    copy_model_files(src, dst)?;
    let mut config = model.config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("dtype".into(), dtype_name(kind).into());
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), dtype_name(kind).into());
        }
    }
    std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    // With adapters, the merged weights (PEFT's merge_and_unload).
    let weights: Vec<(String, tch::Tensor)> = model.merged_weights().into_iter().map(|(n, t)| (n, t.to_kind(kind))).collect();
    let elt = kind.elt_size_in_bytes() as u64;
    // Greedy packing in name order, as transformers' save_pretrained does.
    let mut shards: Vec<Vec<(String, tch::Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    let mut total = 0u64;
    for (name, t) in weights {
        let bytes = t.numel() as u64 * elt;
        total += bytes;
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push((name, t));
    }
    if shards.len() == 1 {
        return safetensors::save(&shards[0], &dst.join("model.safetensors"));
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        safetensors::save(shard, &dst.join(&file))?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(dst.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(())
}

//! `tokbridge export`: a run's latest checkpoint (or any model) as a Hugging Face model
//! directory that transformers loads: safetensors under the original tensor names in the chosen
//! dtype with `{"format": "pt"}` metadata, sharded with `model.safetensors.index.json` above a
//! size limit, config.json (its dtype updated), generation config and tokenizer files. The
//! directory is assembled under a temporary name, synced, and published in one atomic step;
//! only a directory tokbridge wrote is replaced (`atomic`).
use crate::atomic::tmp_path;
use crate::hf::safetensors;
use crate::train::checkpoint::{self, copy_model_files, named_weights};
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
/// `device`.
pub fn export(src: &str, out: &Path, kind: Option<Kind>, max_shard_bytes: u64, device: Device) -> Result<()> {
    crate::atomic::clean_around(out)?;
    let dir = source_dir(src)?;
    crate::atomic::check_output(out, &dir)?;
    crate::atomic::check_replaceable(out)?;
    let model = crate::models::load(&dir, device, Kind::Float)?;
    let kind = kind.unwrap_or_else(|| declared_dtype(&model.config));
    let tmp = tmp_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = write_dir(&model, &dir, &tmp, kind, max_shard_bytes).and_then(|()| crate::atomic::publish_dir(&tmp, out));
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
    let weights: Vec<(String, tch::Tensor)> = named_weights(model).into_iter().map(|(n, t)| (n, t.to_kind(kind))).collect();
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

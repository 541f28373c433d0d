//! Checkpoints: `run_dir/checkpoints/step-NNNNNN/` is a complete Hugging Face model directory
//! (model.safetensors under the original tensor names, config and tokenizer files; under LoRA
//! a PEFT adapter directory on the base model instead) plus
//! `optimizer.safetensors` and `state.json` (step, data position, seeds). Each is written
//! under a temporary name and renamed into place, then `checkpoints/latest` is replaced the
//! same way, so a kill at any moment leaves the previous checkpoint intact; files are synced
//! before each rename, so this holds across a power loss too.
use crate::atomic::tmp_path;
use crate::files::MODEL_FILES;
use crate::hf::safetensors;
use crate::models::Model;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What besides the weights a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Data sampler position.
    pub epoch: u64,
    pub index: usize,
    /// Extra counters a recipe keeps (tokens seen, teacher tokens, wall time, ...).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, f64>,
}

/// Copies the config and tokenizer files of model directory `src` into `dst`.
pub fn copy_model_files(src: &Path, dst: &Path) -> Result<()> {
    for f in MODEL_FILES {
        let from = src.join(f);
        if from.exists() {
            std::fs::copy(&from, dst.join(f)).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

/// The model's parameters under their Hugging Face names, sorted (the base weights; adapters
/// are not among them).
pub fn named_weights(model: &Model) -> Vec<(String, tch::Tensor)> {
    crate::models::named_weights_of(&model.vs)
}

/// Writes a model's LoRA adapters as a PEFT adapter directory's two files in `dir`.
pub fn save_adapters(model: &Model, base: &Path, dir: &Path) -> Result<()> {
    let ad = model.adapters.as_ref().context("the model has no adapters")?;
    let mut named: Vec<(String, tch::Tensor)> = crate::models::named_weights_of(&ad.vs).into_iter().map(|(n, t)| (crate::nn::lora::peft_name(&n), t)).collect();
    // modules_to_save go whole, under PEFT's name for them (`base_model.model.lm_head.weight`).
    named.extend(crate::models::named_weights_of(&model.vs).into_iter().filter(|(n, _)| ad.spec.saves(n)).map(|(n, t)| (crate::nn::lora::peft_name(&n), t)));
    named.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::save(&named, &dir.join("adapter_model.safetensors"))?;
    let config = ad.spec.peft_config(&crate::hf::hub::name_of(base), model.family == crate::models::Family::Gpt2);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)?).with_context(|| format!("writing {}", dir.join("adapter_config.json").display()))
}

/// Writes a checkpoint for `state.step`, synced to disk, and points `latest` at it; keeps the
/// newest `keep_last` checkpoints (all when None). Weights that are not finite are refused, so
/// a diverged model is never saved as a checkpoint. Returns its directory.
pub fn save(run_dir: &Path, model: &Model, source_dir: &Path, optimizer: &[(String, tch::Tensor)], state: &TrainState, keep_last: Option<usize>) -> Result<PathBuf> {
    let weights: Vec<(String, tch::Tensor)> = model.trainable().into_iter().map(|(n, t)| (n, t.detach())).collect();
    if let Some((name, _)) = weights.iter().find(|(_, t)| !bool::try_from(t.isfinite().all()).unwrap_or(false)) {
        bail!("weights are not finite after step {} (tensor {name}); no checkpoint written. The last good checkpoint is {}", state.step, last_good(run_dir, state.step + 1));
    }
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    crate::atomic::clean_stale(&root)?;
    let name = format!("step-{:06}", state.step);
    let dir = root.join(&name);
    let tmp = tmp_path(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if model.adapters.is_some() {
        // LoRA: the checkpoint is a PEFT adapter directory on the base model.
        save_adapters(model, source_dir, &tmp)?;
    } else {
        copy_model_files(source_dir, &tmp)?;
        safetensors::save(&weights, &tmp.join("model.safetensors"))?;
    }
    safetensors::save(optimizer, &tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    crate::atomic::sync_tree(&tmp)?;
    crate::atomic::fault("checkpoint");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    crate::atomic::fault("latest");
    crate::atomic::write(&root.join("latest"), &name)?;
    if let Some(keep) = keep_last {
        for (_, old) in steps(run_dir).into_iter().rev().skip(keep.max(1)) {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing the old checkpoint {}", old.display()))?;
        }
    }
    Ok(dir)
}

/// The run's complete checkpoints as (step, directory), oldest first.
fn steps(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else { return vec![] };
    let mut out: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").exists().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The model a run resumes from its checkpoint `dir`: the checkpoint itself, or under LoRA the
/// same base with the checkpoint's adapters, trained further.
pub fn resume_spec(spec: &crate::spec::ModelSpec, dir: &Path) -> crate::spec::ModelSpec {
    let mut s = spec.clone();
    if s.lora.is_some() {
        s.adapter = Some(dir.display().to_string());
    } else {
        s.path = dir.display().to_string();
    }
    s
}

/// The directory of the newest complete checkpoint of a run, if any. `latest` must name a
/// checkpoint of this run (`step-NNNNNN`), never a path elsewhere.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = run_dir.join("checkpoints");
    let latest = root.join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).with_context(|| format!("reading {}", latest.display()))?;
    let name = name.trim();
    ensure!(
        name.strip_prefix("step-").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
        "{}: names {name:?}, which is not a checkpoint of this run (step-NNNNNN)",
        latest.display()
    );
    let dir = root.join(name);
    ensure!(dir.join("state.json").exists(), "{}: names {}, which is incomplete", latest.display(), dir.display());
    Ok(Some(dir))
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid state", path.display()))
}

/// The newest checkpoint whose weights gave a finite loss, when step `failed` (1-based) went
/// non-finite: the weights of checkpoint `failed - 1` produced that loss, so it is not good.
fn last_good(run_dir: &Path, failed: usize) -> String {
    steps(run_dir).into_iter().rev().find(|(s, _)| s + 2 <= failed).map_or("none".into(), |(_, d)| d.display().to_string())
}

/// The error that stops a run whose loss became NaN or infinite, naming the last good checkpoint.
pub fn non_finite_loss(run_dir: &Path, loss: f64, step: usize) -> anyhow::Error {
    anyhow::anyhow!("non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint is {}", last_good(run_dir, step))
}

//! Recipe modules: one readable function per recipe, dispatched from the typed `Recipe`.
pub mod compare;
pub mod eval;
pub mod init;
pub mod opd;
pub mod pipeline;
pub mod preview;
pub mod recipe;
pub mod sft;
pub mod side;
pub mod sweep;
pub mod task;
pub mod teacher_responses;
pub mod tokenizer;

use crate::spec::ModelSpec;
use crate::recipes::recipe::Recipe;
use crate::train::dist::Dist;
use crate::train::run::RunOptions;
use anyhow::{ensure, Context, Result};
use std::path::Path;
use tch::Device;


/// Runs a recipe: in this process alone, or as one rank of the group the launcher's
/// environment describes (`train::dist`), which every stage of a pipeline or sweep shares.
pub fn run(recipe: &Recipe, opts: &RunOptions) -> Result<()> {
    let dist = Dist::from_env()?;
    run_in(recipe, opts, dist.as_ref())
}

/// `run` within a group (or none). Recipes that train or generate shard their work over the
/// ranks; the others (making a task, a tokenizer or a model, a report) run on rank 0 while
/// the others wait; a pipeline's or sweep's decisions are rank 0's.
pub fn run_in(recipe: &Recipe, opts: &RunOptions, dist: Option<&Dist>) -> Result<()> {
    let on = |spec: &ModelSpec, device: &str| -> Result<()> {
        match dist {
            Some(d) => d.use_device(side::device_of(spec, device)?),
            None => Ok(()),
        }
    };
    match recipe {
        Recipe::Sft(r) => {
            on(&r.model, &r.device)?;
            let _lock = prepare_shared_run_dir(&r.output_dir, recipe, opts.resume, dist)?;
            sft::run(r, opts, dist)?;
            if dist.is_some_and(|d| !d.is_main()) {
                return Ok(());
            }
            export_final(&r.output_dir, r.export_to.as_deref())
        }
        Recipe::TeacherResponses(r) => {
            on(&r.teacher, &r.device)?;
            // Always resumable: finished prompts are kept.
            let _lock = prepare_shared_run_dir(&r.output_dir, recipe, true, dist)?;
            teacher_responses::run(r, dist)
        }
        Recipe::Eval(r) => {
            on(&r.model, &r.device)?;
            let _lock = prepare_shared_run_dir(&r.output_dir, recipe, true, dist)?;
            eval::run(r, dist)
        }
        Recipe::Opd(r) => {
            on(&r.student, &r.device)?;
            let _lock = prepare_shared_run_dir(&r.output_dir, recipe, opts.resume, dist)?;
            opd::run(r, opts, dist)?;
            if dist.is_some_and(|d| !d.is_main()) {
                return Ok(());
            }
            export_final(&r.output_dir, r.export_to.as_deref())
        }
        Recipe::MakeTask(r) => on_main(dist, "making the task", || task::run(r)),
        Recipe::TrainTokenizer(r) => on_main(dist, "training the tokenizer", || tokenizer::run(r)),
        Recipe::InitModel(r) => on_main(dist, "initialising the model", || init::run(r)),
        Recipe::Compare(r) => on_main(dist, "writing the report", || compare::run(r)),
        Recipe::Pipeline(r) => {
            let _lock = dist.is_none_or(Dist::is_main).then(|| crate::atomic::lock_dir(&r.output_dir)).transpose()?;
            pipeline::run(r, opts, dist)
        }
        Recipe::Sweep(r) => {
            let _lock = dist.is_none_or(Dist::is_main).then(|| crate::atomic::lock_dir(&r.output_dir)).transpose()?;
            sweep::run(r, opts, dist)
        }
    }
}

/// Runs `f` on rank 0 alone (every process when there is no group); the other ranks wait for it.
fn on_main(dist: Option<&Dist>, what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    if dist.is_none_or(Dist::is_main) {
        f()?;
    }
    match dist {
        Some(d) => d.barrier(&format!("waiting for rank 0: {what}")),
        None => Ok(()),
    }
}

/// What becomes of a pipeline's stage or a sweep's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Finished before with the same recipe: reused.
    Reuse,
    /// Runs from an empty directory.
    Run,
    /// Interrupted in the same context: resumes from what it wrote.
    Resume,
}

impl Plan {
    /// Rank 0's plan on every rank (`decide` runs on rank 0 alone, or in the process alone,
    /// and readies the file system for it); the others follow it.
    pub fn by_main(dist: Option<&Dist>, what: &str, decide: impl FnOnce() -> Result<Plan>) -> Result<Plan> {
        let Some(d) = dist else { return decide() };
        let code = if d.is_main() { decide()? as u8 as f64 } else { 0.0 };
        Ok(match d.broadcast(&[code], what)?[0] as u8 {
            0 => Plan::Reuse,
            1 => Plan::Run,
            _ => Plan::Resume,
        })
    }
}


/// Exports a finished run's last checkpoint when the recipe asks for it.
fn export_final(run_dir: &Path, to: Option<&Path>) -> Result<()> {
    let Some(to) = to else { return Ok(()) };
    if checkpoint_step(run_dir)?.is_none() {
        return Ok(()); // stopped early (--stop-after): nothing final to export
    }
    crate::export::export(&run_dir.display().to_string(), to, Some(tch::Kind::Float), 5_000_000_000, Device::Cpu, false, false)?;
    crate::info!("exported {} to {}", run_dir.display(), to.display());
    Ok(())
}

/// The step of the run's latest checkpoint if the run finished (its recipe's total, or
/// `training.stop_at` reached).
fn checkpoint_step(run_dir: &Path) -> Result<Option<usize>> {
    let Some(dir) = crate::train::checkpoint::latest(run_dir)? else { return Ok(None) };
    let state = crate::train::checkpoint::read_state(&dir)?;
    let recipe = Recipe::load(&run_dir.join("recipe.yaml"), &[])?;
    let total = match recipe {
        Recipe::Sft(r) => r.training.steps,
        Recipe::Opd(r) => r.training.steps,
        _ => return Ok(None),
    };
    Ok((state.step == total || state.counters.contains_key("stopped_at_target")).then_some(state.step))
}

/// Creates and locks the run directory (held while the returned lock lives), removes what a
/// killed process left half-written, and writes the resolved recipe. A directory that holds
/// files but was never a run directory is refused (`atomic::check_run_dir`). A directory whose run
/// has a checkpoint is only reused with `resume`; one without any starts afresh.
fn prepare_run_dir(dir: &Path, recipe: &Recipe, resume: bool) -> Result<crate::atomic::RunLock> {
    crate::atomic::check_run_dir(dir)?;
    let lock = crate::atomic::lock_dir(dir).with_context(|| format!("output_dir {}", dir.display()))?;
    crate::atomic::clean_stale(dir)?;
    let resolved = recipe.to_yaml()?;
    if crate::train::checkpoint::latest(dir)?.is_some() {
        ensure!(resume, "output_dir {} already holds a run with checkpoints; pass --resume to continue it, or choose another output_dir", dir.display());
        let before = std::fs::read_to_string(dir.join("recipe.yaml")).with_context(|| format!("resuming {}: reading its recipe.yaml", dir.display()))?;
        for (key, was, now) in resume_changes(&serde_yaml::from_str(&before)?, &serde_yaml::from_str(&resolved)?)? {
            crate::info!("resuming {} with {key} changed: {was} -> {now}", dir.display());
        }
    }
    crate::atomic::write(&dir.join("recipe.yaml"), resolved)?;
    Ok(lock)
}

/// The keys a resumed run may change: how long it goes on, what it evaluates and logs, how it
/// keeps checkpoints, where it exports, the device, the ZeRO stage (checkpoints hold the whole
/// optimizer state at any stage). Any other change (the model, the data, the
/// optimizer, the schedule, the batch, the seed) makes another run, which resuming would splice
/// onto this one's state.
const RESUMABLE: [&str; 11] = [
    "training.steps", "training.checkpoint_every", "training.keep_last_checkpoints", "training.activation_checkpointing", "training.zero",
    "training.stop_at", "eval", "logging", "export_to", "device", "output_dir",
];

/// The changes from the recipe a run started with (`before`) to the one resuming it (`now`):
/// each key that may change, with its two values; an error naming every key that may not.
fn resume_changes(before: &serde_yaml::Value, now: &serde_yaml::Value) -> Result<Vec<(String, String, String)>> {
    fn walk(a: &serde_yaml::Value, b: &serde_yaml::Value, at: &str, out: &mut Vec<(String, String, String)>) {
        use serde_yaml::Value;
        let short = |v: &Value| {
            let t = serde_yaml::to_string(v).unwrap_or_default().trim().replace('\n', " ");
            if t.chars().count() > 60 { format!("{}...", t.chars().take(60).collect::<String>()) } else { t }
        };
        match (a, b) {
            (Value::Mapping(x), Value::Mapping(y)) => {
                let mut keys: Vec<&Value> = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))).collect();
                keys.sort_by_key(|k| k.as_str().map(String::from));
                for k in keys {
                    let name = k.as_str().map_or_else(|| short(k), String::from);
                    let path = if at.is_empty() { name } else { format!("{at}.{name}") };
                    walk(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &path, out);
                }
            }
            _ if a != b => out.push((at.to_string(), short(a), short(b))),
            _ => {}
        }
    }
    let mut changes = Vec::new();
    walk(before, now, "", &mut changes);
    changes.retain(|(k, _, _)| k != "vars" && !k.starts_with("vars."));
    let may = |k: &str| RESUMABLE.iter().any(|r| k == *r || k.starts_with(&format!("{r}.")));
    let refused: Vec<String> = changes.iter().filter(|(k, _, _)| !may(k)).map(|(k, was, now)| format!("{k} {was} -> {now}")).collect();
    ensure!(
        refused.is_empty(),
        "--resume: the recipe changed since the run started ({}); a resumed run may change only training.steps, eval, logging, checkpointing, export_to and device: start a new output_dir",
        refused.join("; ")
    );
    Ok(changes)
}

/// `prepare_run_dir` by rank 0 of a multi-process run while the others wait for it (they
/// neither lock nor write the directory).
fn prepare_shared_run_dir(dir: &Path, recipe: &Recipe, resume: bool, dist: Option<&Dist>) -> Result<Option<crate::atomic::RunLock>> {
    if let Some(d) = dist {
        // Hand-launched ranks may have been given other recipes or overrides.
        let h = pipeline::fnv1a(recipe.to_yaml()?.as_bytes(), 0xcbf2_9ce4_8422_2325);
        let mine = [(h >> 32) as f64, (h & 0xffff_ffff) as f64];
        let differs = (d.broadcast(&mine, "comparing the ranks' recipes")? != mine) as u8 as f64;
        let n = d.sum(&[differs], "comparing the ranks' recipes")?[0];
        ensure!(n == 0.0, "rank {} of {}: {n} of {} ranks resolved another recipe than rank 0's (launch every rank with the same recipe file and overrides)", d.rank, d.world, d.world);
    }
    let lock = match dist {
        Some(d) if !d.is_main() => None,
        _ => Some(prepare_run_dir(dir, recipe, resume)?),
    };
    if let Some(d) = dist {
        d.barrier("waiting for rank 0 to prepare the run directory")?;
    }
    Ok(lock)
}

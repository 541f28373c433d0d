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
use anyhow::{bail, Context, Result};
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
    if !resume && crate::train::checkpoint::latest(dir)?.is_some() {
        bail!("output_dir {} already holds a run with checkpoints; pass --resume to continue it, or choose another output_dir", dir.display());
    }
    crate::atomic::write(&dir.join("recipe.yaml"), recipe.to_yaml()?)?;
    Ok(lock)
}

/// `prepare_run_dir` by rank 0 of a multi-process run while the others wait for it (they
/// neither lock nor write the directory).
fn prepare_shared_run_dir(dir: &Path, recipe: &Recipe, resume: bool, dist: Option<&Dist>) -> Result<Option<crate::atomic::RunLock>> {
    let lock = match dist {
        Some(d) if !d.is_main() => None,
        _ => Some(prepare_run_dir(dir, recipe, resume)?),
    };
    if let Some(d) = dist {
        d.barrier("waiting for rank 0 to prepare the run directory")?;
    }
    Ok(lock)
}

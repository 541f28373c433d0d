//! The `pipeline` recipe: ordinary recipe files run in order as stages. A stage is reused when
//! its resolved recipe, and those of every stage before it, match what was recorded when it
//! last finished and no stage before it ran again (so a changed or redone stage reruns
//! everything after it); `--fresh` redoes all. A stage interrupted in the same context (same
//! recipe, same upstream) resumes: training from its checkpoint, teacher answers from the
//! answers written; a stage rerun for any other reason starts from an empty directory. The
//! pipeline's `vars` reach every stage as `vars.NAME=VALUE` overrides, so one override
//! retargets the whole pipeline; a stage written `{recipe, name, overrides}` adds its own after
//! them (a nested pipeline at another seed and root). A nested pipeline or sweep does its own
//! reuse of its stages.
use super::Plan;
use crate::train::run::RunOptions;
use crate::recipes::recipe::Recipe;
use crate::train::dist::Dist;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::PathBuf;

/// `recipe: pipeline`: recipe files run in order, each stage reused when it already finished
/// with the same resolved recipe. `vars` are passed to every stage as `vars.NAME=VALUE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    /// Stage bookkeeping (`stages/NAME.done`, timings) lives here.
    pub output_dir: PathBuf,
    pub stages: Vec<Stage>,
}

/// A pipeline stage: a recipe file, or `{recipe: FILE, name: NAME, overrides: [KEY=VALUE]}`,
/// whose overrides come after the pipeline's vars (the same file run twice, say the whole demo
/// at another seed in another root, needs its own name).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Stage {
    File(PathBuf),
    With {
        recipe: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        overrides: Vec<String>,
    },
}

// By hand rather than `untagged`, so a wrong key in a stage's mapping is named in the error.
impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct With {
            recipe: PathBuf,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            overrides: Vec<String>,
        }
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Stage::File(s.into())),
            v => {
                let w: With = serde_yaml::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(Stage::With { recipe: w.recipe, name: w.name, overrides: w.overrides })
            }
        }
    }
}

impl Stage {
    pub fn file(&self) -> &Path {
        match self {
            Stage::File(p) | Stage::With { recipe: p, .. } => p,
        }
    }

    /// The name of its bookkeeping files: `name`, else the file's stem.
    pub fn name(&self) -> String {
        match self {
            Stage::With { name: Some(n), .. } => n.clone(),
            _ => self.file().file_stem().map_or_else(|| self.file().display().to_string(), |s| s.to_string_lossy().into_owned()),
        }
    }

    /// The stage's own overrides (after the pipeline's vars).
    pub fn overrides(&self) -> &[String] {
        match self {
            Stage::With { overrides, .. } => overrides,
            Stage::File(_) => &[],
        }
    }
}

impl crate::spec::Schema for Pipeline {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.stages.is_empty(), "stages must not be empty");
        for (i, st) in self.stages.iter().enumerate() {
            let name = st.name();
            ensure!(!self.stages[..i].iter().any(|o| o.name() == name), "stages: two stages are named {name:?} (give one `name:`)");
        }
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// FNV-1a, 64 bit: a hash that is stable across builds, for the record of upstream stages.
pub(crate) fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The directory a stage writes, if it is a run directory this pipeline may clear.
fn run_dir(r: &Recipe) -> Option<&Path> {
    match r {
        Recipe::Sft(x) => Some(&x.output_dir),
        Recipe::Opd(x) => Some(&x.output_dir),
        Recipe::Eval(x) => Some(&x.output_dir),
        Recipe::TeacherResponses(x) => Some(&x.output_dir),
        _ => None,
    }
}

/// Runs the stages in order. Over several ranks, rank 0 decides which stages run and which
/// resume (and clears what reruns), and every rank runs them (`super::run_in` shards the ones
/// that train or generate).
pub fn run(r: &Pipeline, opts: &RunOptions, dist: Option<&Dist>) -> Result<()> {
    let main = dist.is_none_or(Dist::is_main);
    let marks = r.output_dir.join("stages");
    if main {
        std::fs::create_dir_all(&marks).with_context(|| format!("creating {}", marks.display()))?;
    }
    let overrides: Vec<String> = crate::recipes::recipe::var_overrides(&r.vars);
    let started = Instant::now();
    let n = r.stages.len();
    let mut upstream = 0xcbf2_9ce4_8422_2325u64;
    let mut ran = false;
    for (i, st) in r.stages.iter().enumerate() {
        let path = st.file();
        let stage = Recipe::load(path, &[&overrides[..], st.overrides()].concat()).with_context(|| format!("pipeline stage {}", path.display()))?;
        let name = st.name();
        // A nested pipeline or sweep hands its vars on to its own stages: they are its content.
        let resolved = match stage {
            Recipe::Pipeline(_) | Recipe::Sweep(_) => stage.to_yaml()?,
            _ => without_vars(&stage.to_yaml()?)?,
        };
        let record = format!("{resolved}# upstream stages: {upstream:016x}\n");
        upstream = fnv1a(resolved.as_bytes(), upstream);
        let (mark, started) = (marks.join(format!("{name}.done")), marks.join(format!("{name}.started")));
        let plan = Plan::by_main(dist, "following rank 0's plan of the pipeline", || prepare(&stage, &record, &mark, &started, opts.fresh, ran))?;
        if plan == Plan::Reuse {
            if main {
                crate::info!("[{}/{n}] {name}: finished before, reused", i + 1);
            }
            continue;
        }
        ran = true;
        let resume = plan == Plan::Resume;
        if main {
            crate::info!("[{}/{n}] {name}{}", i + 1, if resume { " (resuming)" } else { "" });
        }
        let t0 = Instant::now();
        let nested = matches!(stage, Recipe::Pipeline(_) | Recipe::Sweep(_)).then(|| Nesting::enter(path)).transpose().with_context(|| format!("pipeline stage {}", path.display()))?;
        let result = super::run_in(&stage, &RunOptions { resume, fresh: opts.fresh, stop_after: None }, dist);
        drop(nested);
        result.with_context(|| format!("pipeline stage {}", path.display()))?;
        if main {
            let secs = t0.elapsed().as_secs_f64();
            std::fs::write(marks.join(format!("{name}.json")), serde_json::json!({ "seconds": secs }).to_string())?;
            crate::atomic::write(&mark, &record)?;
            let _ = std::fs::remove_file(&started);
            crate::info!("[{}/{n}] {name}: {secs:.1} s", i + 1);
        }
    }
    if main {
        crate::info!("pipeline {}: {:.1} s", r.output_dir.display(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Pipelines and sweeps that run pipelines: how deep they may nest.
const MAX_NESTING: usize = 8;

thread_local! {
    /// The pipeline and sweep files being run, outermost first.
    static RUNNING: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A nested pipeline or sweep on the stack of those running: a file that is already running
/// (a cycle, however its output folder is varied) or a stack deeper than `MAX_NESTING` is
/// refused. Leaves the stack when dropped.
pub struct Nesting;

impl Nesting {
    pub fn enter(path: &Path) -> Result<Nesting> {
        let canonical = std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
        RUNNING.with(|stack| {
            let mut stack = stack.borrow_mut();
            let chain = || stack.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" → ");
            anyhow::ensure!(!stack.contains(&canonical), "{} runs itself (through {} → {}): a pipeline cannot contain itself", path.display(), chain(), path.display());
            anyhow::ensure!(stack.len() < MAX_NESTING, "pipelines nest deeper than {MAX_NESTING} levels ({})", chain());
            stack.push(canonical);
            Ok(Nesting)
        })
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        RUNNING.with(|stack| stack.borrow_mut().pop());
    }
}

/// Whether a stage is reused, runs afresh or resumes, given its `record`, `--fresh` and whether
/// a stage before it ran; readies its directory and its `started` mark for a run.
fn prepare(stage: &Recipe, record: &str, mark: &Path, started: &Path, fresh: bool, upstream_ran: bool) -> Result<Plan> {
    let same = |p: &Path| std::fs::read_to_string(p).ok().as_deref() == Some(record);
    if !fresh && !upstream_ran && same(mark) {
        return Ok(Plan::Reuse);
    }
    let _ = std::fs::remove_file(mark);
    // Interrupted in this very context: resume. Anything else starts clean.
    let interrupted = !fresh && same(started);
    let mut resume = false;
    if let Some(dir) = run_dir(stage) {
        let has_checkpoint = crate::train::checkpoint::latest(dir)?.is_some();
        if interrupted && (has_checkpoint || matches!(stage, Recipe::TeacherResponses(_))) {
            resume = true;
        } else if dir.join("recipe.yaml").exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    crate::atomic::write(started, record)?;
    Ok(if resume { Plan::Resume } else { Plan::Run })
}

/// A resolved recipe without its `vars`: their values are already substituted where they are
/// used, so a variable a stage does not use (the pipeline passes every one to every stage)
/// must not make it look changed.
fn without_vars(resolved: &str) -> Result<String> {
    let mut v: serde_yaml::Value = serde_yaml::from_str(resolved)?;
    if let Some(m) = v.as_mapping_mut() {
        m.remove("vars");
    }
    Ok(serde_yaml::to_string(&v)?)
}


//! The `sweep` recipe: one training recipe run over a small grid of settings, each run
//! evaluated on a validation split, and the setting with the best value of a named metric
//! chosen. Writes `sweep.json` (every run's overrides and value, and the choice) and
//! `sweep.md` (the table), and prints the choice. This is how a fair comparison picks each
//! method's learning rate: on data that is not the test split, from a grid declared up front.
//!
//! Runs are `run-NN/` under the sweep's directory; a finished run (`run-NN/sweep.done`) is
//! reused when the sweep is run again with the same overrides, an unfinished one resumes from
//! its checkpoint. Ties go to the first setting in grid order.
use super::Plan;
use crate::train::run::RunOptions;
use crate::recipes::recipe::Recipe;
use crate::train::dist::Dist;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `recipe: sweep`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "crate::spec::Vars::is_empty")]
    pub vars: crate::spec::Vars,
    pub output_dir: PathBuf,
    /// The recipe file every run starts from (`sft` or `opd`); the sweep's `vars` reach it.
    pub base: PathBuf,
    /// Overrides for every run (`key=value`), e.g. the validation split as `data.eval`.
    #[serde(default)]
    pub fixed: Vec<String>,
    /// Keys and the values to try; runs are the product, in the order written.
    pub grid: Vec<BTreeMap<String, Vec<serde_yaml::Value>>>,
    /// The metric of the run's last evaluation that chooses (e.g. `eval/exact_match`).
    pub metric: String,
    /// `max` (default) or `min`.
    #[serde(default = "d_goal")]
    pub goal: String,
}

fn d_goal() -> String {
    "max".into()
}

/// The most runs one sweep may hold.
pub const MAX_SETTINGS: usize = 1000;

impl crate::spec::Schema for Sweep {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.grid.is_empty() && self.grid.iter().all(|g| g.len() == 1 && g.values().all(|v| !v.is_empty())), "grid must be a list of `key: [values]` entries, each with at least one value");
        ensure!(self.goal == "max" || self.goal == "min", "goal must be max or min");
        // Counted before any setting is built: the grid's product can be astronomically large.
        let sizes: Vec<usize> = self.grid.iter().flat_map(|g| g.values().map(Vec::len)).collect();
        let total = sizes.iter().try_fold(1usize, |n, &k| n.checked_mul(k).filter(|&n| n <= MAX_SETTINGS));
        ensure!(total.is_some(), "grid: {} settings is more than a sweep runs (at most {MAX_SETTINGS})", sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(" × "));
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

impl Sweep {

    /// Every run's overrides from the grid, in order (the last key varies fastest).
    pub fn settings(&self) -> Vec<Vec<(String, String)>> {
        let mut out: Vec<Vec<(String, String)>> = vec![vec![]];
        for entry in &self.grid {
            let (key, values) = entry.iter().next().expect("validated");
            out = out.into_iter().flat_map(|prev| values.iter().map(move |v| [prev.clone(), vec![(key.clone(), crate::recipes::recipe::scalar(v))]].concat())).collect();
        }
        out
    }
}


/// One run of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRun {
    pub dir: PathBuf,
    pub settings: BTreeMap<String, String>,
    pub value: f64,
}

/// The last logged value of `metric` in a run directory's metrics.jsonl.
fn last_value(dir: &Path, metric: &str) -> Result<f64> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut last = None;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        if let Some(x) = v.get(metric).and_then(serde_json::Value::as_f64) {
            last = Some(x);
        }
    }
    last.with_context(|| format!("{}: no `{metric}` logged (does the base recipe evaluate it?)", path.display()))
}

/// Runs the grid and chooses. Over several ranks, rank 0 decides which runs are reused or
/// resume (and clears what reruns), every rank trains, and rank 0 reads the values and writes
/// the tables.
pub fn run(r: &Sweep, opts: &RunOptions, dist: Option<&Dist>) -> Result<()> {
    let main = dist.is_none_or(Dist::is_main);
    if main {
        std::fs::create_dir_all(&r.output_dir).with_context(|| format!("creating {}", r.output_dir.display()))?;
    }
    let vars: Vec<String> = crate::recipes::recipe::var_overrides(&r.vars);
    let mut runs = Vec::new();
    let settings = r.settings();
    for (i, s) in settings.iter().enumerate() {
        let dir = r.output_dir.join(format!("run-{i:02}"));
        let mut over = vars.clone();
        over.extend(r.fixed.iter().cloned());
        over.extend(s.iter().map(|(k, v)| format!("{k}={v}")));
        over.push(format!("output_dir={}", dir.display()));
        let recipe = Recipe::load(&r.base, &over).with_context(|| format!("sweep run {i} ({})", r.base.display()))?;
        if !matches!(recipe, Recipe::Sft(_) | Recipe::Opd(_)) {
            bail!("{}: a sweep runs sft or opd recipes", r.base.display());
        }
        let record = recipe.to_yaml()?;
        let done = dir.join("sweep.done");
        let label: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let plan = Plan::by_main(dist, "following rank 0's plan of the sweep", || prepare(&dir, &record, opts.fresh))?;
        if plan == Plan::Reuse {
            if main {
                crate::info!("[sweep {}/{}] {}: finished before, reused", i + 1, settings.len(), label.join(" "));
            }
        } else {
            if main {
                crate::info!("[sweep {}/{}] {}", i + 1, settings.len(), label.join(" "));
            }
            super::run_in(&recipe, &RunOptions { resume: plan == Plan::Resume, fresh: false, stop_after: None }, dist).with_context(|| format!("sweep run {} ({})", i, label.join(" ")))?;
            if main {
                std::fs::write(&done, &record).with_context(|| format!("writing {}", done.display()))?;
            }
        }
        if main {
            runs.push(SweepRun { value: last_value(&dir, &r.metric)?, dir, settings: s.iter().cloned().collect() });
        }
    }
    if !main {
        return Ok(());
    }
    let better = |a: f64, b: f64| if r.goal == "max" { a > b } else { a < b };
    let best = (0..runs.len()).fold(0, |b, i| if better(runs[i].value, runs[b].value) { i } else { b });
    let json = serde_json::json!({ "metric": r.metric, "goal": r.goal, "runs": runs, "best": runs[best] });
    std::fs::write(r.output_dir.join("sweep.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(r.output_dir.join("sweep.md"), table(r, &runs, best))?;
    crate::info!("{}", table(r, &runs, best));
    Ok(())
}

/// Whether the run in `dir` is reused (finished with this `record`), runs afresh (its directory
/// cleared) or resumes (interrupted with the same recipe, with a checkpoint).
fn prepare(dir: &Path, record: &str, fresh: bool) -> Result<Plan> {
    let done = dir.join("sweep.done");
    if !fresh && std::fs::read_to_string(&done).ok().as_deref() == Some(record) {
        return Ok(Plan::Reuse);
    }
    let resume = !fresh && std::fs::read_to_string(dir.join("recipe.yaml")).ok().as_deref() == Some(record) && crate::train::checkpoint::latest(dir)?.is_some();
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(if resume { Plan::Resume } else { Plan::Run })
}

/// The markdown table of a sweep: one row per setting, the chosen one marked.
pub fn table(r: &Sweep, runs: &[SweepRun], best: usize) -> String {
    let keys: Vec<&String> = runs.first().map(|x| x.settings.keys().collect()).unwrap_or_default();
    let mut t = format!("Base `{}`, chosen by the last `{}` ({}):\n\n| {} | {} | |\n|{}---|---|\n", r.base.display(), r.metric, r.goal, keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" | "), r.metric, "---|".repeat(keys.len()));
    for (i, x) in runs.iter().enumerate() {
        let cells: Vec<&str> = keys.iter().map(|k| x.settings[*k].as_str()).collect();
        t.push_str(&format!("| {} | {:.4} | {} |\n", cells.join(" | "), x.value, if i == best { "chosen" } else { "" }));
    }
    t
}

/// The table a finished sweep wrote (`sweep.md`), if it has run.
pub fn read_table(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("sweep.md")).ok()
}

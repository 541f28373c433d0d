//! Comparing runs: `report.md` with the final table (accuracy, avg@k, budgets, wall time) and
//! plots of held-out accuracy against optimizer steps, wall time and teacher tokens, as PNG and
//! SVG (plotters, with the DejaVu Sans font embedded so no system fonts are needed).
//!
//! Declared contrasts (`contrasts`: one run minus another, e.g. a method against SFT with and
//! without a control's change) get their own table, from the same final numbers. Repeats (the
//! same recipe re-read with other vars, e.g. each seed's root) add every run's final accuracy
//! and every contrast per repeat, with their means.
//!
//! Beside accuracy the table shows the held-out teacher-minus-student log-prob gap where a run
//! measured it (OPD always does; other recipes with `eval.teacher`), and the report puts a few
//! held-out generations of every run side by side, at its first and last evaluation.
//!
//! Budgets: OPD runs count teacher forward tokens as they go; SFT on teacher answers pays the
//! teacher's generated tokens and generation time up front (from its `teacher_responses`
//! output), so its curves start there.
use crate::recipes::recipe::Recipe;
use crate::recipes::eval::{read_generations, Generated};
use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;
use crate::spec::*;
use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One entry of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRun {
    pub name: String,
    /// A training run directory (metrics.jsonl) or an eval output directory (eval.json).
    pub dir: PathBuf,
    /// The teacher_responses outputs (one or a list) whose generation cost this run used (SFT
    /// on teacher answers; a run that continued from one adds both).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many::paths")]
    pub teacher_responses: Vec<PathBuf>,
}

/// `recipe: compare`: report.md with the final table and plots of several runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub output_dir: PathBuf,
    pub runs: Vec<CompareRun>,
    #[serde(default)]
    pub title: Option<String>,
    /// Sweeps whose tables (`sweep.md`) the report shows.
    #[serde(default)]
    pub sweeps: Vec<CompareSweep>,
    /// Differences between two runs' final results that the report shows together (a method
    /// against its baseline, with and without a control's change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contrasts: Vec<CompareContrast>,
    /// The same runs made again under other `vars` (another seed, in another root): the report
    /// adds every run's final accuracy and every contrast in each repeat, and their means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<CompareRepeat>,
    /// This comparison's column in the repeats' tables (default `here`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The recipe's text and overrides before its vars were substituted (what a repeat
    /// re-reads with its own vars).
    #[serde(skip)]
    pub source: Option<(String, Vec<String>)>,
}

/// One repeat of a comparison: its label in the report and the vars that differ.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRepeat {
    pub name: String,
    pub vars: Vars,
}

impl Compare {
    /// This comparison with a repeat's vars: the same runs, found where the repeat put them.
    pub fn repeat(&self, rep: &CompareRepeat) -> Result<Compare> {
        let (text, overrides) = self.source.as_ref().context("a comparison built in code has no recipe text to repeat")?;
        let mut over = overrides.clone();
        over.extend(super::recipe::var_overrides(&rep.vars));
        match Recipe::parse(text, &over).with_context(|| format!("repeats: {:?}", rep.name))? {
            Recipe::Compare(c) => Ok(c),
            _ => bail!("repeats: {:?} is not a comparison", rep.name),
        }
    }
}

/// One run's final results minus another's (both named as in `runs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareContrast {
    pub name: String,
    pub run: String,
    pub against: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSweep {
    pub name: String,
    pub dir: PathBuf,
    /// The committed table (a copy of `sweep.md`) of the sweep run that chose the values the
    /// recipes ship, shown when `dir` has none.
    #[serde(default)]
    pub shipped: Option<PathBuf>,
}

impl crate::spec::Schema for Compare {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.runs.is_empty(), "runs must not be empty");
        for s in &self.sweeps {
            if let Some(t) = &s.shipped {
                ensure!(t.is_file(), "sweeps: shipped table {} of {:?} is not a file", t.display(), s.name);
            }
        }
        for c in &self.contrasts {
            for (key, name) in [("run", &c.run), ("against", &c.against)] {
                ensure!(self.runs.iter().any(|run| &run.name == name), "contrasts: {key} {name:?} of {:?} is not the name of one of the runs", c.name);
            }
        }
        for (i, rep) in self.repeats.iter().enumerate() {
            ensure!(!rep.vars.is_empty(), "repeats: {:?} sets no vars (it would be this comparison again)", rep.name);
            ensure!(!self.repeats[..i].iter().any(|o| o.name == rep.name), "repeats: the name {:?} is used twice", rep.name);
        }
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// One evaluation point of a run.
#[derive(Debug, Clone, Default)]
pub struct Point {
    pub step: f64,
    pub time_s: f64,
    pub teacher_tokens: f64,
    pub accuracy: Option<f64>,
    /// Share of greedy responses equal to the reference with numbers masked.
    pub words: Option<f64>,
    pub avg_k: Option<f64>,
    /// Held-out mean `log q − log p` per token of the student's samples.
    pub gap: Option<f64>,
    /// How spread the samples of avg@k are: (k, distinct correct responses per prompt,
    /// entropy per sampled token in nats).
    pub spread: Option<(usize, f64, f64)>,
}

/// What the report shows of one run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub name: String,
    pub dir: std::path::PathBuf,
    pub points: Vec<Point>,
    pub optimizer_steps: f64,
    pub prompts: f64,
    pub teacher_forward_tokens: f64,
    pub teacher_generated_tokens: f64,
    pub time_s: f64,
    /// An evaluation-only entry (teacher, warm start): drawn as a reference line.
    pub reference: bool,
    /// Seconds the teacher spent per token: scoring (OPD's forward passes) or generating (the
    /// answers an SFT run trained on), when the run measured it.
    pub teacher_s_per_scored: Option<f64>,
    pub teacher_s_per_generated: Option<f64>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn avg_key(obj: &serde_json::Map<String, Value>) -> Option<f64> {
    obj.iter().find(|(k, _)| k.starts_with("eval/avg@")).and_then(|(_, v)| v.as_f64())
}

fn spread(obj: &serde_json::Map<String, Value>) -> Option<(usize, f64, f64)> {
    let (key, distinct) = obj.iter().find(|(k, _)| k.starts_with("eval/distinct_correct@"))?;
    Some((key.rsplit('@').next()?.parse().ok()?, distinct.as_f64()?, obj.get("eval/sample_entropy")?.as_f64()?))
}

/// Reads a run directory (metrics.jsonl) or an eval output (eval.json).
pub fn summarize(run: &CompareRun) -> Result<Summary> {
    let mut s = Summary { name: run.name.clone(), dir: run.dir.clone(), ..Default::default() };
    let (mut gen_tokens, mut gen_time) = (0.0, 0.0);
    for tr in &run.teacher_responses {
        let stats = read_json(&tr.join("stats.json"))?;
        gen_tokens += stats["generated_tokens"].as_f64().unwrap_or(0.0);
        gen_time += stats["time_s"].as_f64().unwrap_or(0.0);
    }
    s.teacher_s_per_generated = (gen_tokens > 0.0).then(|| gen_time / gen_tokens);
    s.teacher_generated_tokens = gen_tokens;
    let eval_json = run.dir.join("eval.json");
    let metrics = run.dir.join("metrics.jsonl");
    if !metrics.exists() && eval_json.exists() {
        let v = read_json(&eval_json)?;
        let obj = v.as_object().context("eval.json is not an object")?;
        s.reference = true;
        s.points.push(Point { accuracy: obj.get("eval/exact_match").and_then(Value::as_f64), words: obj.get("eval/words_match").and_then(Value::as_f64), avg_k: avg_key(obj), gap: obj.get("eval/logq_minus_logp").and_then(Value::as_f64), spread: spread(obj), ..Default::default() });
        return Ok(s);
    }
    let text = std::fs::read_to_string(&metrics).with_context(|| format!("reading {}", metrics.display()))?;
    let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", metrics.display(), i + 1))?;
        rows.push(v.as_object().cloned().unwrap_or_default());
    }
    // Budgets at each step, from the training lines (the last line of a step wins on resume).
    let mut at: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    let (mut scoring_s, mut scored) = (0.0, 0.0);
    for r in rows.iter().filter(|r| r.contains_key("train/loss")) {
        scoring_s += r.get("time/teacher_s").and_then(Value::as_f64).unwrap_or(0.0) + r.get("time/candidates_s").and_then(Value::as_f64).unwrap_or(0.0);
        let step = r["step"].as_u64().unwrap_or(0);
        let time = r.get("time_s").and_then(Value::as_f64).unwrap_or(0.0);
        let tokens = r.get("budget/teacher_forward_tokens").and_then(Value::as_f64).unwrap_or(0.0);
        scored = tokens;
        at.insert(step, (time, tokens));
        s.optimizer_steps = r.get("budget/optimizer_steps").and_then(Value::as_f64).unwrap_or(step as f64);
        s.prompts = r.get("budget/prompts").and_then(Value::as_f64).unwrap_or(0.0);
        s.teacher_forward_tokens = tokens;
        s.time_s = time + gen_time;
    }
    s.teacher_s_per_scored = (scored > 0.0).then(|| scoring_s / scored);
    let mut seen = std::collections::BTreeMap::new();
    for r in rows.iter().filter(|r| r.contains_key("eval/exact_match") || avg_key(r).is_some() || r.contains_key("eval/logq_minus_logp")) {
        let step = r["step"].as_u64().unwrap_or(0);
        let (time, tokens) = at.get(&step).copied().unwrap_or((0.0, 0.0));
        seen.insert(step, Point {
            step: step as f64,
            time_s: time + gen_time,
            teacher_tokens: tokens + gen_tokens,
            accuracy: r.get("eval/exact_match").and_then(Value::as_f64),
            words: r.get("eval/words_match").and_then(Value::as_f64),
            avg_k: avg_key(r),
            gap: r.get("eval/logq_minus_logp").and_then(Value::as_f64),
            spread: spread(r),
        });
    }
    s.points = seen.into_values().collect();
    Ok(s)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The markdown table of final results.
pub fn table(runs: &[Summary]) -> String {
    let mut t = String::from("| run | accuracy (greedy) | words match | avg@k | held-out log q − log p | optimizer steps | prompts | teacher forward tokens | teacher generated tokens |\n|---|---|---|---|---|---|---|---|---|\n");
    for s in runs {
        let last = s.points.last().cloned().unwrap_or_default();
        let gaps: Vec<f64> = s.points.iter().filter_map(|p| p.gap).collect();
        let gap = match gaps.as_slice() {
            [] => "–".to_string(),
            [one] => format!("{one:.3}"),
            [first, .., last] => format!("{first:.3} → {last:.3}"),
        };
        if s.reference {
            t.push_str(&format!("| {} | {} | {} | {} | {gap} | – | – | – | – |\n", s.name, pct(last.accuracy), pct(last.words), pct(last.avg_k)));
        } else {
            t.push_str(&format!(
                "| {} | {} | {} | {} | {gap} | {:.0} | {} | {} | {} |\n",
                s.name, pct(last.accuracy), pct(last.words), pct(last.avg_k), s.optimizer_steps, count(s.prompts), count(s.teacher_forward_tokens), count(s.teacher_generated_tokens)
            ));
        }
    }
    t
}

/// The contrasts' table: one run's final accuracy, words match and held-out gap minus
/// another's (points, and nats per aligned token), from the same numbers as the main table.
pub fn contrasts(runs: &[Summary], contrasts: &[CompareContrast]) -> Result<String> {
    let diff = |a: Option<f64>, b: Option<f64>, scale: f64, digits: usize| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.*}", digits, scale * (a - b)),
        _ => "–".into(),
    };
    let mut t = String::from("| contrast | run | against | accuracy (points) | avg@k (points) | words match (points) | held-out log q − log p | accuracy at matched teacher tokens (points) |\n|---|---|---|---|---|---|---|---|\n");
    for c in contrasts {
        let (ra, rb) = (find(runs, &c.run).context("contrasts")?, find(runs, &c.against).context("contrasts")?);
        let (a, b) = (ra.points.last().cloned().unwrap_or_default(), rb.points.last().cloned().unwrap_or_default());
        // Both runs at the smaller of their two teacher budgets.
        let cost = a.teacher_tokens.min(b.teacher_tokens);
        let matched = match (at_cost(ra, cost), at_cost(rb, cost)) {
            (Some(x), Some(y)) => format!("{:+.1} (at {})", 100.0 * (x - y), count(cost)),
            _ => "–".into(),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {matched} |\n",
            c.name,
            c.run,
            c.against,
            diff(a.accuracy, b.accuracy, 100.0, 1),
            diff(a.avg_k, b.avg_k, 100.0, 1),
            diff(a.words, b.words, 100.0, 1),
            diff(a.gap, b.gap, 1.0, 3)
        ));
    }
    Ok(t)
}

/// The greedy accuracy of `run` once the teacher has processed `cost` tokens (generated and
/// scored; one forward each, so in proportion to the teacher's forward FLOPs): its last
/// evaluation made within that budget, none before the first (an SFT run pays its teacher's
/// answers before its first step). Not interpolated: between two evaluations far apart (a run
/// evaluated only at its start and end) a line would report an accuracy no evaluation measured.
pub fn at_cost(run: &Summary, cost: f64) -> Option<f64> {
    run.points.iter().filter_map(|p| Some((p.teacher_tokens, p.accuracy?))).take_while(|&(c, _)| c <= cost).last().map(|(_, a)| a)
}

/// How spread each run's samples are at its last evaluation (runs that sampled for avg@k): the
/// distinct correct solutions per prompt among its k samples and the entropy per sampled token.
pub fn spread_section(runs: &[Summary]) -> String {
    let rows: Vec<String> = runs
        .iter()
        .filter_map(|s| {
            let (k, distinct, entropy) = s.points.last()?.spread?;
            Some(format!("| {} | {distinct:.2} of {k} | {entropy:.3} |\n", s.name))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "## Spread of the sampled solutions\n\nAt temperature 1, at the last evaluation: how many different correct solutions each model writes among its k samples of one held-out problem (mean over problems), and the entropy of its next-token distribution where each sampled token was drawn (nats per token). A model spread over many valid paths scores high on both; a nearly one-hot one near 1 and 0.\n\n| run | distinct correct solutions | entropy per sampled token |\n|---|---|---|\n{}\n",
        rows.concat()
    )
}

/// The run named `name`.
fn find<'a>(runs: &'a [Summary], name: &str) -> Result<&'a Summary> {
    runs.iter().find(|s| s.name == name).with_context(|| format!("no run named {name:?}"))
}

/// The final evaluation of the run named `name`.
fn last_point(runs: &[Summary], name: &str) -> Result<Point> {
    Ok(find(runs, name)?.points.last().cloned().unwrap_or_default())
}

/// The repeats' tables: every run's final accuracy and every contrast's accuracy difference
/// (points) in this comparison (`label`) and in each repeat, with the mean over them.
pub fn repeats_section(runs: &[Summary], label: &str, repeats: &[(String, Vec<Summary>)], declared: &[CompareContrast]) -> Result<String> {
    let all: Vec<(&str, &[Summary])> = std::iter::once((label, runs)).chain(repeats.iter().map(|(n, r)| (n.as_str(), r.as_slice()))).collect();
    let header = |first: &str| format!("| {first} | {} | mean |\n|---|{}---|\n", all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" | "), "---|".repeat(all.len()));
    let row = |name: &str, values: &[Option<f64>], signed: bool| {
        let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| if signed { format!("{v:+.1}") } else { format!("{v:.1}") });
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let mean = (present.len() == values.len() && !present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64);
        format!("| {name} | {} | {} |\n", values.iter().map(|&v| cell(v)).collect::<Vec<_>>().join(" | "), cell(mean))
    };
    let mut md = format!("Final greedy accuracy (%) of every run in each repeat:\n\n{}", header("run"));
    for s in runs {
        let values = all.iter().map(|(n, r)| Ok(last_point(r, &s.name).with_context(|| format!("repeat {n:?}"))?.accuracy.map(|a| 100.0 * a))).collect::<Result<Vec<_>>>()?;
        md.push_str(&row(&s.name, &values, false));
    }
    if !declared.is_empty() {
        md.push_str(&format!("\nThe contrasts' accuracy (points) in each repeat:\n\n{}", header("contrast")));
        for c in declared {
            let values = all
                .iter()
                .map(|(n, r)| {
                    let (a, b) = (last_point(r, &c.run), last_point(r, &c.against));
                    let (a, b) = (a.with_context(|| format!("repeat {n:?}"))?, b.with_context(|| format!("repeat {n:?}"))?);
                    Ok(a.accuracy.zip(b.accuracy).map(|(a, b)| 100.0 * (a - b)))
                })
                .collect::<Result<Vec<_>>>()?;
            md.push_str(&row(&c.name, &values, true));
        }
    }
    Ok(md)
}

/// Wall times and the measured cost of a generated teacher token against a scored one: the
/// part of the report that differs from run to run (the table above does not).
pub fn timing(runs: &[Summary]) -> String {
    let mut t = String::from("| run | training wall time |\n|---|---|\n");
    for s in runs.iter().filter(|s| !s.reference) {
        t.push_str(&format!("| {} | {:.0} s |\n", s.name, s.time_s));
    }
    let mean = |f: fn(&Summary) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(g), Some(sc)) = (mean(|s| s.teacher_s_per_generated), mean(|s| s.teacher_s_per_scored)) {
        t.push_str(&format!(
            "\nOn this machine one teacher token generated (for SFT's answers) cost {:.2} ms and one scored (OPD's forward passes) {:.3} ms: a generated token costs about {:.0} scored ones. The plots count both kinds one to one.\n",
            g * 1e3,
            sc * 1e3,
            g / sc
        ));
    }
    t
}

/// Held-out prompts shown side by side in the report.
const SHOWN_PROMPTS: usize = 3;

/// `SHOWN_PROMPTS` held-out prompts (those the runs disagree on first) with what every run
/// wrote for them at its first and last evaluation (from `generations/step-NNNNNN.jsonl`); runs without generations are
/// left out.
pub fn generations_section(runs: &[Summary]) -> Result<String> {
    let mut rows: Vec<(String, Vec<Generated>)> = Vec::new();
    for s in runs {
        let steps: Vec<usize> = if s.reference { vec![0] } else { s.points.iter().map(|p| p.step as usize).collect() };
        let mut seen = Vec::new();
        for step in [steps.first(), steps.last()].into_iter().flatten() {
            if seen.contains(step) {
                continue;
            }
            seen.push(*step);
            if let Some(g) = read_generations(&s.dir, *step)? {
                let label = if s.reference { s.name.clone() } else { format!("{} (step {step})", s.name) };
                rows.push((label, g));
            }
        }
    }
    let Some((_, first)) = rows.first() else { return Ok(String::new()) };
    // The prompts the runs disagree on say the most; the first ones fill up the rest.
    let disagree = |i: usize| rows.iter().filter_map(|(_, g)| g.get(i).map(|x| x.correct)).collect::<std::collections::BTreeSet<_>>().len() > 1;
    let mut shown: Vec<usize> = (0..first.len()).filter(|&i| disagree(i)).take(SHOWN_PROMPTS).collect();
    let fill: Vec<usize> = (0..first.len()).filter(|i| !shown.contains(i)).take(SHOWN_PROMPTS.saturating_sub(shown.len())).collect();
    shown.extend(fill);
    shown.sort_unstable();
    let mut md = String::from("## Held-out generations\n\nGreedy responses to the first held-out prompts on which the runs disagree (or the first prompts, where they all agree), each run at its first and last evaluation (✓ correct final answer, ✗ wrong).\n\n");
    let quote = |t: &str| t.trim().lines().map(|l| format!("> {l}")).collect::<Vec<_>>().join("\n");
    for i in shown {
        md.push_str(&format!("### Held-out prompt {}\n\n{}\n\n", i + 1, quote(&first[i].prompt)));
        if let Some(r) = &first[i].reference {
            md.push_str(&format!("Reference:\n\n{}\n\n", quote(r)));
        }
        for (label, g) in &rows {
            if let Some(x) = g.get(i) {
                md.push_str(&format!("**{label}** {}\n\n{}\n\n", if x.correct { "✓" } else { "✗" }, quote(&x.response)));
            }
        }
    }
    Ok(md)
}

fn register_font() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLORS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(255, 127, 14), RGBColor(140, 86, 75)];

/// One accuracy plot: a line per training run, dashed reference lines for eval-only entries.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[Summary], x: fn(&Point) -> f64, x_label: &str, title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing {title}: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let xmax = runs.iter().flat_map(|s| s.points.iter().map(x)).fold(0.0, f64::max).max(1.0) * 1.02;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("held-out accuracy (greedy)")
        .x_label_formatter(&|v| count(*v))
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        if s.reference {
            let Some(acc) = s.points.first().and_then(|p| p.accuracy) else { continue };
            let dashes: Vec<f64> = (0..40).map(|k| k as f64 * xmax / 40.0).collect();
            let series = dashes.chunks(2).filter(|c| c.len() == 2).map(|c| PathElement::new(vec![(c[0], acc), (c[1], acc)], style));
            chart.draw_series(series).map_err(err)?.label(format!("{} ({:.0}%)", s.name, acc * 100.0)).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            let pts: Vec<(f64, f64)> = s.points.iter().filter_map(|p| p.accuracy.map(|a| (x(p), a))).collect();
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(err)?.label(s.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).label_font(("sans-serif", 14)).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes report.md and the plots (PNG and SVG) into `out`.
pub fn report(runs: &[Summary], sweeps: &[CompareSweep], declared: &[CompareContrast], repeats: &[(String, Vec<Summary>)], label: &str, out: &Path, title: &str) -> Result<()> {
    register_font();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // (file name, x of a point, x axis label, caption)
    type Plot = (&'static str, fn(&Point) -> f64, &'static str, &'static str);
    let plots: [Plot; 3] = [
        ("accuracy_vs_steps", |p| p.step, "optimizer steps", "Accuracy against optimizer steps"),
        ("accuracy_vs_time", |p| p.time_s, "wall time (s)", "Accuracy against wall time"),
        ("accuracy_vs_teacher_tokens", |p| p.teacher_tokens, "teacher tokens (forward + generated)", "Accuracy against teacher tokens"),
    ];
    for (name, x, label, caption) in plots {
        let png = out.join(format!("{name}.png"));
        draw(&BitMapBackend::new(&png, (900, 560)).into_drawing_area(), runs, x, label, caption)?;
        let svg = out.join(format!("{name}.svg"));
        draw(&SVGBackend::new(&svg, (900, 560)).into_drawing_area(), runs, x, label, caption)?;
    }
    let mut md = format!("# {title}\n\n{}\n", table(runs));
    md.push_str("\nAccuracy is greedy exact match of the final `#### answer` on the held-out split; words match is the share of greedy responses equal to the reference with numbers masked (it follows the format and copies the prompt's names and objects); avg@k is the mean accuracy of k samples per prompt; held-out log q − log p is the teacher-minus-student log-prob per aligned token of the student's samples at the first and last evaluation. SFT on teacher answers pays the teacher's generation (tokens and time) before training, so its curves start there; OPD pays teacher forward tokens as it trains.\n\n");
    if !declared.is_empty() {
        md.push_str(&format!("## Contrasts\n\nEach row is the first run's final result minus the second's (accuracy, avg@k and words match in percentage points, the held-out gap in nats per aligned token; positive: the run is ahead). The last column compares both at the smaller of their two teacher budgets, counted in teacher tokens (generated and scored alike: one forward each, so in proportion to the teacher's forward FLOPs), each run's greedy accuracy at its last evaluation within that budget (not interpolated: a run evaluated only at its start and end shows its start until its whole budget; an SFT run pays its teacher's answers before its first step). Two rows that differ in one change (a control) show what that change accounts for. A few points at one seed can be a single run's noise: read them across seeds.\n\n{}\n", contrasts(runs, declared)?));
    }
    md.push_str(&spread_section(runs));
    if !repeats.is_empty() {
        md.push_str(&format!("## Repeats\n\nThe same runs made again under other settings (another seed, in another root), each from its own final evaluation; the mean is over the columns. A difference that changes sign between repeats is within the runs' noise.\n\n{}\n", repeats_section(runs, label, repeats, declared)?));
    }
    for sweep in sweeps {
        md.push_str(&format!("## Settings chosen on the validation split: {}\n\n", sweep.name));
        match (crate::recipes::sweep::read_table(&sweep.dir), &sweep.shipped) {
            (Some(t), _) => md.push_str(&t),
            (None, Some(shipped)) => {
                let t = std::fs::read_to_string(shipped).with_context(|| format!("reading the shipped sweep table {}", shipped.display()))?;
                md.push_str(&format!("(Not run in `{}`: the sweep that chose the values the recipes ship, as committed in `{}`.)\n\n{t}", sweep.dir.display(), shipped.display()));
            }
            (None, None) => md.push_str(&format!("(`{}` has no sweep.md: the sweep has not been run here; the recipes carry the values it chose, see RESULTS.md.)\n", sweep.dir.display())),
        }
        md.push('\n');
    }
    for (name, _, _, caption) in plots {
        md.push_str(&format!("## {caption}\n\n![{caption}]({name}.png)\n\n"));
    }
    md.push_str(&generations_section(runs)?);
    md.push_str(&format!("## Timing\n\n{}", timing(runs)));
    std::fs::write(out.join("report.md"), md).with_context(|| format!("writing {}", out.join("report.md").display()))?;
    Ok(())
}

/// The `compare` recipe.
pub fn run(r: &Compare) -> Result<()> {
    let runs: Vec<Summary> = r.runs.iter().map(summarize).collect::<Result<_>>()?;
    let mut repeats = Vec::with_capacity(r.repeats.len());
    for rep in &r.repeats {
        let other = r.repeat(rep)?;
        let summaries = other.runs.iter().map(summarize).collect::<Result<Vec<_>>>().with_context(|| format!("repeats: {:?}", rep.name))?;
        repeats.push((rep.name.clone(), summaries));
    }
    let label = r.label.as_deref().unwrap_or("here");
    let title = r.title.as_deref().unwrap_or("tokbridge comparison");
    crate::atomic::publish_new(&r.output_dir, |dir| report(&runs, &r.sweeps, &r.contrasts, &repeats, label, dir, title))
        .with_context(|| format!("compare: output_dir {}", r.output_dir.display()))?;
    eprintln!("{}", table(&runs));
    eprintln!("report: {}", r.output_dir.join("report.md").display());
    Ok(())
}

/// `tokbridge compare RUN_DIR... --out DIR`: names are the directory names; an SFT run whose
/// training data is a `teacher_responses` output is charged that output's cost.
pub fn from_dirs(dirs: &[std::path::PathBuf], out: &Path) -> Result<()> {
    let runs = dirs
        .iter()
        .map(|d| {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| d.display().to_string());
            let mut teacher_responses = vec![];
            if let Ok(Recipe::Sft(s)) = Recipe::load(&d.join("recipe.yaml"), &[]) {
                teacher_responses.extend(s.data.train.local_file().and_then(Path::parent).filter(|p| p.join("stats.json").exists()).map(Path::to_path_buf));
            }
            CompareRun { name, dir: d.clone(), teacher_responses }
        })
        .collect();
    run(&Compare { recipe: "compare".into(), vars: Default::default(), output_dir: out.to_path_buf(), runs, title: None, sweeps: vec![], contrasts: vec![], repeats: vec![], label: None, source: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, accuracy: f64, words: f64, gap: Option<f64>) -> Summary {
        Summary { name: name.into(), points: vec![Point { accuracy: Some(accuracy), words: Some(words), gap, ..Default::default() }], ..Default::default() }
    }

    #[test]
    fn contrasts_are_final_differences_in_points_and_nats() {
        let runs = [run("sft", 0.845, 0.995, Some(-0.404)), run("opd", 0.77, 0.99, Some(-0.293)), run("warm", 0.775, 0.995, None)];
        let c = |name: &str, run: &str, against: &str| CompareContrast { name: name.into(), run: run.into(), against: against.into() };
        let t = contrasts(&runs, &[c("opd over sft", "opd", "sft"), c("sft over warm", "sft", "warm")]).unwrap();
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows, ["| opd over sft | opd | sft | -7.5 | – | -0.5 | +0.111 | -7.5 (at 0) |", "| sft over warm | sft | warm | +7.0 | – | +0.0 | – | +7.0 (at 0) |"]);
        // At matched teacher tokens: SFT paid 100k generated tokens before its first step; OPD
        // had evaluated last at 50k when its teacher reached 100k (its next evaluation, 0.8 at
        // 150k, is not yet paid for, and nothing between is measured).
        let pt = |tokens: f64, acc: f64| Point { teacher_tokens: tokens, accuracy: Some(acc), avg_k: Some(acc / 2.0), ..Default::default() };
        let sft = Summary { name: "sft".into(), points: vec![pt(1e5, 0.5), pt(1e5, 0.65)], ..Default::default() };
        let opd = Summary { name: "opd".into(), points: vec![pt(0.0, 0.5), pt(5e4, 0.6), pt(1.5e5, 0.8), pt(4e5, 0.9)], ..Default::default() };
        assert_eq!(at_cost(&opd, 1e5), Some(0.6));
        assert_eq!(at_cost(&opd, 1.5e5), Some(0.8));
        assert_eq!(at_cost(&opd, 1e9), Some(0.9));
        assert_eq!(at_cost(&sft, 5e4), None, "SFT has nothing before its teacher's answers");
        let t = contrasts(&[sft, opd], &[c("opd − sft", "opd", "sft"), c("sft − opd", "sft", "opd")]).unwrap();
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows, ["| opd − sft | opd | sft | +25.0 | +12.5 | – | – | -5.0 (at 100.0k) |", "| sft − opd | sft | opd | -25.0 | -12.5 | – | – | +5.0 (at 100.0k) |"]);
        let e = contrasts(&runs, &[c("x", "opd", "nope")]).unwrap_err();
        assert!(format!("{e:#}").contains("contrasts: no run named \"nope\""), "{e:#}");
    }

    #[test]
    fn spread_is_read_from_the_metrics_and_tabulated() {
        let obj: serde_json::Map<String, Value> = serde_json::from_str(r#"{"eval/avg@8": 0.9, "eval/distinct_correct@8": 5.25, "eval/sample_entropy": 0.31}"#).unwrap();
        let teacher = Summary { name: "teacher".into(), points: vec![Point { spread: spread(&obj), ..Default::default() }], ..Default::default() };
        let md = spread_section(&[teacher, run("sft", 0.8, 1.0, None)]);
        assert!(md.lines().any(|l| l == "| teacher | 5.25 of 8 | 0.310 |") && !md.contains("| sft |"), "{md}");
        assert_eq!(spread_section(&[run("sft", 0.8, 1.0, None)]), "");
    }

    /// The demo's three seeds (RESULTS.md): each column is a repeat's final accuracy, the mean
    /// theirs; a run missing from a repeat is an error naming the repeat.
    #[test]
    fn repeats_tabulate_each_seed_and_the_mean() {
        let seed = |sft: f64, opd: f64| vec![run("sft", sft, 0.99, None), run("opd", opd, 0.99, None)];
        let repeats = [("seed 1".to_string(), seed(0.87, 0.86)), ("seed 2".to_string(), seed(0.815, 0.805))];
        let c = CompareContrast { name: "opd − sft".into(), run: "opd".into(), against: "sft".into() };
        let md = repeats_section(&seed(0.845, 0.77), "seed 0", &repeats, std::slice::from_ref(&c)).unwrap();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows,
            [
                "| run | seed 0 | seed 1 | seed 2 | mean |",
                "| sft | 84.5 | 87.0 | 81.5 | 84.3 |",
                "| opd | 77.0 | 86.0 | 80.5 | 81.2 |",
                "| contrast | seed 0 | seed 1 | seed 2 | mean |",
                "| opd − sft | -7.5 | -1.0 | -1.0 | -3.2 |",
            ]
        );
        let short = [("seed 1".to_string(), vec![run("sft", 0.87, 0.99, None)])];
        let e = repeats_section(&seed(0.845, 0.77), "seed 0", &short, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("repeat \"seed 1\": no run named \"opd\""), "{e:#}");
    }
}

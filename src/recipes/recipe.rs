//! Recipes: YAML files that name a recipe module and give it typed sections.
//!
//! Shaped like torchtune's configs (one file per run, `recipe:` picks the module) with TRL's
//! knob names where they exist. Each recipe's schema lives beside its runner and implements
//! `Schema`; the sections several share are in `crate::spec`. Every struct denies unknown
//! keys; serde_yaml reports the key path with its line and column. `key.path=value` overrides
//! are applied to the YAML tree before it is typed; the resolved recipe is what a run
//! directory keeps.
use super::compare::Compare;
use super::eval::Eval;
use super::init::InitModel;
use super::opd::config::Opd;
use super::pipeline::Pipeline;
use super::sft::Sft;
use super::sweep::Sweep;
use super::task::MakeTask;
use super::teacher_responses::TeacherResponses;
use super::tokenizer::TrainTokenizer;
use crate::spec::{Schema, Vars};
use anyhow::{bail, ensure, Context, Result};
use serde_yaml::Value;
use std::path::Path;



/// A YAML value as the text of an override (`key=TEXT`): strings as they are.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// `vars` as the overrides that hand them to another recipe (`vars.NAME=VALUE`).
pub fn var_overrides(vars: &Vars) -> Vec<String> {
    vars.iter().map(|(k, v)| format!("vars.{k}={}", scalar(v))).collect()
}

// One value per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Recipe {
    Sft(Sft),
    TeacherResponses(TeacherResponses),
    Eval(Eval),
    Opd(Opd),
    MakeTask(MakeTask),
    TrainTokenizer(TrainTokenizer),
    InitModel(InitModel),
    Pipeline(Pipeline),
    Compare(Compare),
    Sweep(Sweep),
}

pub const RECIPES: [&str; 10] = ["sft", "teacher_responses", "eval", "opd", "make_task", "train_tokenizer", "init_model", "pipeline", "compare", "sweep"];

impl Recipe {
    /// Reads `path`, applies `overrides` (`a.b.c=value`, value parsed as YAML) and types it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::parse(&read(path)?, overrides).with_context(|| format!("recipe {}", path.display()))
    }

    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let original = text;
        let substituted = substitute_vars(text, overrides)?;
        let text = substituted.as_str();
        let mut tree: Value = serde_yaml::from_str(text)?;
        ensure!(tree.is_mapping(), "the recipe must be a YAML mapping");
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        // Without overrides, type the original text so errors carry its line numbers.
        let resolved;
        let text = if overrides.is_empty() {
            text
        } else {
            resolved = serde_yaml::to_string(&tree)?;
            &resolved
        };
        let name = tree.get("recipe").and_then(Value::as_str).with_context(|| format!("missing key `recipe` (one of {})", RECIPES.join(", ")))?;
        let recipe = match name {
            "sft" => Recipe::Sft(serde_yaml::from_str(text)?),
            "teacher_responses" => Recipe::TeacherResponses(serde_yaml::from_str(text)?),
            "eval" => Recipe::Eval(serde_yaml::from_str(text)?),
            "opd" => Recipe::Opd(serde_yaml::from_str(text)?),
            "make_task" => Recipe::MakeTask(serde_yaml::from_str(text)?),
            "train_tokenizer" => Recipe::TrainTokenizer(serde_yaml::from_str(text)?),
            "init_model" => Recipe::InitModel(serde_yaml::from_str(text)?),
            "pipeline" => Recipe::Pipeline(serde_yaml::from_str(text)?),
            "compare" => {
                let mut c: Compare = serde_yaml::from_str(text)?;
                c.source = Some((original.to_string(), overrides.to_vec()));
                Recipe::Compare(c)
            }
            "sweep" => Recipe::Sweep(serde_yaml::from_str(text)?),
            other => bail!("recipe: unknown recipe {other:?} (known: {})", RECIPES.join(", ")),
        };
        recipe.validate()?;
        Ok(recipe)
    }

    /// The recipe's schema, through which the rest is dispatched.
    fn schema(&self) -> &dyn Schema {
        match self {
            Recipe::Sft(r) => r,
            Recipe::TeacherResponses(r) => r,
            Recipe::Eval(r) => r,
            Recipe::Opd(r) => r,
            Recipe::MakeTask(r) => r,
            Recipe::TrainTokenizer(r) => r,
            Recipe::InitModel(r) => r,
            Recipe::Pipeline(r) => r,
            Recipe::Compare(r) => r,
            Recipe::Sweep(r) => r,
        }
    }

    /// The directory the recipe writes.
    pub fn output_dir(&self) -> &Path {
        self.schema().output_dir()
    }

    /// Checks the values serde cannot: ranges and consistency. Errors name the key.
    pub fn validate(&self) -> Result<()> {
        crate::atomic::check_output_dir(self.output_dir(), "output_dir")?;
        self.schema().validate()
    }

    /// The resolved recipe as YAML, for the run directory.
    pub fn to_yaml(&self) -> Result<String> {
        self.schema().to_yaml()
    }
}

/// A recipe file's text. A recipe is a page of YAML; a bound keeps `/dev/zero` or a wrong file
/// from being read whole.
fn read(path: &Path) -> Result<String> {
    const MAX: u64 = 1 << 20;
    let file = std::fs::File::open(path).with_context(|| format!("reading recipe {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX + 1), &mut text).with_context(|| format!("reading recipe {}", path.display()))?;
    ensure!(text.len() as u64 <= MAX, "recipe {}: larger than 1 MiB; a recipe is a YAML file of settings", path.display());
    Ok(text)
}

/// Refuses a `vars.NAME=VALUE` override of `path` that no file it runs declares or uses (a
/// pipeline hands its vars to every stage, so a stage cannot tell a misspelt var from one meant
/// for another stage; the command line can).
pub fn check_var_overrides(path: &Path, overrides: &[String]) -> Result<()> {
    let given: Vec<&str> = overrides.iter().filter_map(|o| o.strip_prefix("vars.")?.split_once('=').map(|(k, _)| k)).collect();
    if given.is_empty() {
        return Ok(());
    }
    let mut known = std::collections::BTreeSet::new();
    var_names(path, 0, &mut known)?;
    for name in given {
        ensure!(known.contains(name), "vars.{name}: no recipe that {} runs declares or uses it (its vars: {})", path.display(), known.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

/// Adds the vars `path` declares or uses (`${name}`) to `names`, with those of the files it runs:
/// a pipeline's stages, a sweep's base (nesting as deep as a run may).
fn var_names(path: &Path, depth: usize, names: &mut std::collections::BTreeSet<String>) -> Result<()> {
    let text = read(path)?;
    let mut rest = text.as_str();
    while let Some((name, after)) = rest.split_once("${").and_then(|(_, r)| r.split_once('}')) {
        names.insert(name.to_string());
        rest = after;
    }
    let tree: Value = serde_yaml::from_str(&masked(&text)).with_context(|| format!("recipe {}", path.display()))?;
    names.extend(tree.get("vars").and_then(Value::as_mapping).into_iter().flatten().filter_map(|(k, _)| k.as_str().map(String::from)));
    if depth >= 8 {
        return Ok(());
    }
    let files: Vec<&Value> = match tree.get("recipe").and_then(Value::as_str) {
        Some("pipeline") => tree.get("stages").and_then(Value::as_sequence).into_iter().flatten().map(|s| s.get("recipe").unwrap_or(s)).collect(),
        Some("sweep") => tree.get("base").into_iter().collect(),
        _ => vec![],
    };
    for file in files.into_iter().filter_map(Value::as_str).filter(|f| !f.contains(MASK)) {
        var_names(Path::new(file), depth + 1, names)?;
    }
    Ok(())
}

/// What a `${name}` reads as while `vars` itself is parsed.
const MASK: &str = "_tokbridge_var_";

/// `text` with every `${...}` replaced by a plain scalar, since a placeholder inside a flow
/// collection (`{path: ${root}/x}`) is not YAML yet.
fn masked(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        masked.push_str(&rest[..i]);
        masked.push_str(MASK);
        rest = rest[i..].find('}').map_or("", |e| &rest[i + e + 1..]);
    }
    masked.push_str(rest);
    masked
}

/// Replaces `${name}` in `text` with the recipe's `vars` (after `vars.name=...` overrides).
/// Only scalars can be substituted; an unknown name is an error.
fn substitute_vars(text: &str, overrides: &[String]) -> Result<String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut tree: Value = serde_yaml::from_str(&masked(text))?;
    for o in overrides.iter().filter(|o| o.starts_with("vars.")) {
        apply_override(&mut tree, o)?;
    }
    let vars = tree.get("vars").and_then(Value::as_mapping).cloned().unwrap_or_default();
    for (name, value) in &vars {
        let name = name.as_str().unwrap_or("?");
        if let Value::String(v) = value {
            // One level of substitution: a var made of vars would leave a placeholder behind.
            ensure!(!v.contains(MASK), "vars.{name} uses ${{...}}: a var cannot refer to vars (write its value out)");
            // A line break would write new keys into the recipe.
            ensure!(!v.contains(['\n', '\r']), "vars.{name} contains a line break");
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        // The excerpt is cut by characters: a byte cut could split one (found by tests/fuzz.rs).
        let end = rest[i..].find('}').with_context(|| format!("unclosed ${{ in {:?}", rest[i..].chars().take(20).collect::<String>()))? + i;
        let name = &rest[i + 2..end];
        let value = vars.get(name).with_context(|| format!("${{{name}}} is used but vars.{name} is not set"))?;
        out.push_str(match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => bail!("vars.{name} must be a string, number or bool"),
        }.as_str());
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Sets `a.b.c` in `tree` to the YAML value after `=`. Intermediate mappings are created.
fn apply_override(tree: &mut Value, spec: &str) -> Result<()> {
    let (key, value) = spec.split_once('=').with_context(|| format!("override {spec:?} is not key.path=value"))?;
    ensure!(!key.is_empty(), "override {spec:?} has an empty key");
    let value: Value = serde_yaml::from_str(value).with_context(|| format!("override {key}: value is not YAML"))?;
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node.as_mapping_mut().with_context(|| format!("override {key}: {} is not a mapping", parts[..i].join(".")))?;
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert_with(|| Value::Mapping(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Decay, Scorer};

    const SFT: &str = "recipe: sft\noutput_dir: runs/x\nmodel:\n  path: m\ndata:\n  train: t.jsonl\noptimizer:\n  lr: 1.0e-4\ntraining:\n  steps: 3\n  batch_size: 2\n";

    /// #36 item 20: a var made of vars, or one with a line break, is refused by name; before,
    /// the first left a placeholder in output_dir and the second wrote new keys.
    #[test]
    fn vars_substitute_one_level_and_one_line() {
        let text = "recipe: make_task\nvars: {root: runs/x, sub: ${root}/y}\noutput_dir: ${sub}\ntrain_size: 1\ntest_size: 1\n";
        let e = format!("{:#}", Recipe::parse(text, &[]).unwrap_err());
        assert!(e.contains("vars.sub uses ${...}: a var cannot refer to vars"), "{e}");
        let e = format!("{:#}", Recipe::parse(&text.replace("${root}/y", "${sub}"), &[]).unwrap_err());
        assert!(e.contains("vars.sub uses ${...}"), "{e}");
        let plain = text.replace("${root}/y", "runs/y");
        assert_eq!(Recipe::parse(&plain, &[]).unwrap().output_dir(), Path::new("runs/y"));
        let e = format!("{:#}", Recipe::parse(&plain, &["vars.sub=\"a\\ntrain_size: 9\"".into()]).unwrap_err());
        assert!(e.contains("vars.sub contains a line break"), "{e}");
    }

    /// #36 item 12: a grid of 10^12 settings is refused by its count, before any is built.
    #[test]
    fn a_sweep_grid_is_counted_before_it_is_built() {
        let values = format!("[{}]", (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
        let grid: String = ["a", "b", "c", "d"].iter().map(|k| format!("  - {{training.{k}: {values}}}\n")).collect();
        let text = format!("recipe: sweep\noutput_dir: out\nbase: recipes/sft/tiny.yaml\nmetric: eval/exact_match\ngrid:\n{grid}");
        let e = format!("{:#}", Recipe::parse(&text, &[]).and_then(|r| r.validate()).unwrap_err());
        assert!(e.contains("grid: 1000 × 1000 × 1000 × 1000 settings is more than a sweep runs (at most 1000)"), "{e}");
        let small = text.replace(&values, "[1, 2]");
        Recipe::parse(&small, &[]).and_then(|r| r.validate()).unwrap();
    }

    #[test]
    fn a_compare_recipe_names_a_missing_shipped_sweep_table() {
        let text = "recipe: compare\noutput_dir: out\nruns: [{name: a, dir: runs/a}]\nsweeps: [{name: SFT lr, dir: runs/sweep, shipped: recipes/demo/sweeps/nothing.md}]\n";
        let e = format!("{:#}", Recipe::parse(text, &[]).and_then(|r| r.validate()).unwrap_err());
        assert!(e.contains("sweeps: shipped table recipes/demo/sweeps/nothing.md of \"SFT lr\" is not a file"), "{e}");
        let shipped = text.replace("nothing.md", "sft.md");
        Recipe::parse(&shipped, &[]).and_then(|r| r.validate()).unwrap();
    }

    #[test]
    fn a_compare_recipe_repeats_itself_under_other_vars() {
        let text = "recipe: compare\nvars: {root: runs/demo}\noutput_dir: ${root}/report\nruns: [{name: a, dir: '${root}/a'}]\nrepeats: [{name: seed 1, vars: {root: runs/demo-seed1}}]\n";
        let Recipe::Compare(c) = Recipe::parse(text, &["vars.root=/r".into()]).unwrap() else { panic!() };
        assert_eq!(c.runs[0].dir, Path::new("/r/a"));
        // The repeat's vars come after the command line's.
        let again = c.repeat(&c.repeats[0]).unwrap();
        assert_eq!((again.runs[0].dir.as_path(), again.output_dir.as_path()), (Path::new("runs/demo-seed1/a"), Path::new("runs/demo-seed1/report")));
        let e = format!("{:#}", Recipe::parse(&text.replace("vars: {root: runs/demo-seed1}", "vars: {}"), &[]).unwrap_err());
        assert!(e.contains("repeats: \"seed 1\" sets no vars"), "{e}");
    }

    #[test]
    fn a_pipeline_stage_adds_its_own_overrides_under_its_own_name() {
        let text = "recipe: pipeline\noutput_dir: out\nstages: [recipes/demo.yaml, {recipe: recipes/demo.yaml, name: seed1, overrides: [vars.seed=1]}]\n";
        let Recipe::Pipeline(p) = Recipe::parse(text, &[]).unwrap() else { panic!() };
        assert_eq!((p.stages[0].name(), p.stages[1].name()), ("demo".to_string(), "seed1".to_string()));
        assert_eq!((p.stages[0].overrides(), p.stages[1].overrides()), (&[][..], &["vars.seed=1".to_string()][..]));
        let e = format!("{:#}", Recipe::parse(&text.replace("name: seed1", "name: demo"), &[]).unwrap_err());
        assert!(e.contains("stages: two stages are named \"demo\""), "{e}");
        let e = format!("{:#}", Recipe::parse(&text.replace("overrides:", "overides:"), &[]).unwrap_err());
        assert!(e.contains("unknown field `overides`, expected one of `recipe`, `name`, `overrides`"), "{e}");
    }

    #[test]
    fn a_compare_recipe_names_a_contrast_with_an_unknown_run() {
        let text = "recipe: compare\noutput_dir: out\nruns: [{name: a, dir: runs/a}, {name: b, dir: runs/b}]\ncontrasts: [{name: a over b, run: a, against: c}]\n";
        let e = format!("{:#}", Recipe::parse(text, &[]).and_then(|r| r.validate()).unwrap_err());
        assert!(e.contains("contrasts: against \"c\" of \"a over b\" is not the name of one of the runs"), "{e}");
        Recipe::parse(&text.replace("against: c", "against: b"), &[]).and_then(|r| r.validate()).unwrap();
    }

    #[test]
    fn parses_with_defaults() {
        let Recipe::Sft(r) = Recipe::parse(SFT, &[]).unwrap() else { panic!("not sft") };
        assert_eq!(r.training.grad_accum, 1);
        assert_eq!(r.optimizer.grad_clip, Some(1.0));
        assert_eq!(r.schedule.decay, Decay::Cosine);
        assert_eq!(r.data.max_length, 1024);
    }

    #[test]
    fn an_unclosed_placeholder_before_multibyte_text_is_an_error() {
        // Found by tests/fuzz.rs: the excerpt in the message was cut inside a character.
        let text = format!("{SFT}note: ${{ab\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\n");
        let err = Recipe::parse(&text, &[]).expect_err("an error").to_string();
        assert!(err.contains("unclosed"), "{err}");
    }

    #[test]
    fn a_served_teacher_takes_a_tokenizer_and_no_weights() {
        let opd = |student: &str, teacher: &str, extra: &str| {
            let text = format!("recipe: opd\noutput_dir: runs/x\nstudent: {student}\nteacher: {teacher}\ndata: {{train: t.jsonl}}\noptimizer: {{lr: 1.0e-6}}\ntraining: {{steps: 2, prompts_per_step: 4}}\n{extra}");
            Recipe::parse(&text, &[]).and_then(|r| r.validate()).map_err(|e| format!("{e:#}"))
        };
        let served = "{tokenizer: Qwen/Qwen3-8B, server: {url: http://localhost:8000, api: vllm}}";
        assert_eq!(opd("{path: s}", served, ""), Ok(()));
        let err = |s: &str, t: &str, x: &str| opd(s, t, x).expect_err("refused");
        assert_eq!(err("{path: s}", "{path: t, server: {url: http://h:1}}", ""), "teacher.path: a served teacher has no weights here; name its tokenizer with teacher.tokenizer");
        assert_eq!(err("{path: s}", "{server: {url: http://h:1}}", ""), "teacher.tokenizer: a served teacher needs its tokenizer (a directory or hub id with tokenizer.json)");
        assert_eq!(err("{path: s, server: {url: http://h:1}}", served, ""), "student.server: only a teacher can be served (the student trains here)");
        assert_eq!(err("{path: s}", "{path: t, tokenizer: x}", ""), "teacher.tokenizer: only for a served teacher (teacher.server); the tokenizer comes from teacher.path");
        assert_eq!(err("{path: s}", "{tokenizer: x, server: {url: localhost:8000}}", ""), "teacher.server.url: \"localhost:8000\" is not an http:// or https:// address");
        assert!(err("{path: s}", served, "loss: gold_hybrid\n").starts_with("teacher.server: a served teacher gives the log-prob of each token"));
        assert!(err("{path: s}", "{tokenizer: x, server: {url: http://h:1, api: tgi}}", "").contains("unknown variant `tgi`"));
        assert_eq!(err("{dtype: f32}", "{path: t}", ""), "student.path: missing (a model directory or hub id)");
    }

    #[test]
    fn unknown_key_is_named_with_line_and_column() {
        let text = SFT.replace("  steps: 3", "  steps: 3\n  stepz: 4");
        let e = format!("{:#}", Recipe::parse(&text, &[]).unwrap_err());
        assert!(e.contains("unknown field `stepz`"), "{e}");
        assert!(e.contains("line 11 column 3"), "{e}");
    }

    #[test]
    fn wrong_type_and_missing_field_are_named() {
        let e = format!("{:#}", Recipe::parse(&SFT.replace("steps: 3", "steps: many"), &[]).unwrap_err());
        assert!(e.contains("training.steps") && e.contains("line 10"), "{e}");
        let e = format!("{:#}", Recipe::parse(&SFT.replace("  lr: 1.0e-4\n", "  weight_decay: 0.1\n"), &[]).unwrap_err());
        assert!(e.contains("missing field `lr`"), "{e}");
        let e = format!("{:#}", Recipe::parse(&SFT.replace("recipe: sft", "recipe: ppo"), &[]).unwrap_err());
        assert!(e.contains("unknown recipe \"ppo\""), "{e}");
    }

    #[test]
    fn overrides_set_nested_keys_and_are_validated() {
        let r = Recipe::parse(SFT, &["training.steps=7".into(), "optimizer.betas=[0.8, 0.9]".into()]).unwrap();
        let Recipe::Sft(r) = r else { panic!() };
        assert_eq!(r.training.steps, 7);
        assert_eq!(r.optimizer.betas, [0.8, 0.9]);
        let e = format!("{:#}", Recipe::parse(SFT, &["training.steps=0".into()]).unwrap_err());
        assert!(e.contains("training.steps must be positive"), "{e}");
        let e = format!("{:#}", Recipe::parse(SFT, &["training.stepz=1".into()]).unwrap_err());
        assert!(e.contains("unknown field `stepz`"), "{e}");
    }

    #[test]
    fn opd_knobs_are_validated() {
        let opd = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/opd/tiny.yaml")).unwrap();
        let e = |over: &[&str]| format!("{:#}", Recipe::parse(&opd, &over.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err());
        assert!(e(&["dpca.baseline=group_mean"]).contains("needs rollout.samples_per_prompt > 1"));
        assert!(e(&["loss=jsd", "distill.beta=1.5"]).contains("distill.beta must be in [0, 1]"));
        assert!(e(&["distill.top_k=0"]).contains("distill.top_k must be positive"));
        let Recipe::Opd(r) = Recipe::parse(&opd, &["loss=forward_kl".into(), "distill={top_k: 64}".into()]).unwrap() else { panic!() };
        assert_eq!((r.loss.divergence_beta(&r.distill), r.distill.top_k, r.distill.temperature), (Some(0.0), Some(64), 1.0));
    }

    #[test]
    fn targets_and_timeouts_out_of_range_are_refused() {
        // #36 items 7 and 23: a NaN stop target never stops; a huge timeout panicked later.
        let text = format!("{SFT}eval: {{every: 1}}\n").replace("  train: t.jsonl", "  train: t.jsonl\n  eval: e.jsonl");
        let e = format!("{:#}", Recipe::parse(&text, &["training.stop_at={metric: eval/exact_match, at_most: .nan}".into()]).unwrap_err());
        assert!(e.contains("training.stop_at: the target of eval/exact_match must be a finite number"), "{e}");
        Recipe::parse(&text, &["training.stop_at={metric: eval/exact_match, at_least: 0.7}".into()]).unwrap();
        let opd = |timeout: &str| {
            let text = format!("recipe: opd\noutput_dir: runs/x\nstudent: {{path: s}}\nteacher: {{tokenizer: t, server: {{url: http://h:1, timeout_s: {timeout}}}}}\ndata: {{train: t.jsonl}}\noptimizer: {{lr: 1.0e-6}}\ntraining: {{steps: 2, prompts_per_step: 4}}\n");
            Recipe::parse(&text, &[]).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        assert!(opd("1e300").unwrap_err().contains("teacher.server.timeout_s: must be a positive number of seconds, at most 86400"));
        opd("600").unwrap();
    }

    #[test]
    fn scorers_parse_in_both_forms() {
        let text = format!("{SFT}eval:\n  scorers:\n    - exact_match\n    - avg_at_k: {{k: 4, temperature: 0.6, top_p: 0.95, top_k: 20}}\n    - nll\n");
        let text = text.replace("  train: t.jsonl", "  train: t.jsonl\n  eval: e.jsonl");
        let Recipe::Sft(r) = Recipe::parse(&text, &[]).unwrap() else { panic!() };
        let scorers = r.eval.unwrap().scorers;
        assert!(matches!(&scorers[1], Scorer::AvgAtK(a) if a.k == 4 && a.top_k == 20 && a.temperature == 0.6));
        // words_match reads exact_match's greedy responses: alone it is refused.
        let with = |scorers: &str| Recipe::parse(&text, &[format!("eval.scorers={scorers}")]).map_err(|e| format!("{e:#}"));
        with("[exact_match, words_match]").unwrap();
        assert!(with("[words_match]").unwrap_err().contains("eval.scorers: words_match reads exact_match's greedy responses; list exact_match too"));
    }
}


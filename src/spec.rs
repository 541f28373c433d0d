//! The specs several recipes share: the model, data, optimizer, schedule, training loop,
//! sampling, evaluation and logging sections of a recipe file, with their validation. Every
//! struct denies unknown keys; serde_yaml reports the key path with its line and column.
use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What every recipe's schema gives the runner: where it writes, the checks serde cannot make
/// (ranges, consistency; errors name the key), and itself as YAML for the run directory.
pub trait Schema {
    fn output_dir(&self) -> &Path;
    fn validate(&self) -> Result<()>;
    fn to_yaml(&self) -> Result<String>;
}

/// A recipe's `vars`: values that `${name}` in its text takes.
pub type Vars = std::collections::BTreeMap<String, serde_yaml::Value>;

/// A dataset: JSONL, JSON or Parquet files, local or on the hub as
/// `hf://datasets/ORG/NAME[@REVISION]/PATH` (the Hugging Face file-system URL; from the hub
/// cache, downloaded into it unless `HF_HUB_OFFLINE` is set), where `*` in the file name
/// matches shards. Written as that string, or as `{path, prompt, response, messages,
/// prompt_suffix}` naming the fields that hold the conversation when they are not the
/// defaults (`prompt` and `response` or TRL's `completion`, or `messages`), and text appended
/// to the last user turn before the response (an instruction such as verl's for GSM8K).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub path: String,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub messages: Option<String>,
    pub prompt_suffix: Option<String>,
}

impl Dataset {
    /// The file itself when the dataset is one local file (not a hub URL, not a pattern).
    pub fn local_file(&self) -> Option<&Path> {
        (!self.path.starts_with("hf://") && !self.path.contains('*')).then(|| Path::new(&self.path))
    }

    fn mapped(&self) -> bool {
        self.prompt.is_some() || self.response.is_some() || self.messages.is_some() || self.prompt_suffix.is_some()
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

impl From<&str> for Dataset {
    fn from(path: &str) -> Self {
        Dataset { path: path.into(), ..Default::default() }
    }
}

impl From<PathBuf> for Dataset {
    fn from(path: PathBuf) -> Self {
        Dataset { path: path.display().to_string(), ..Default::default() }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetMap {
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_suffix: Option<String>,
}

impl Serialize for Dataset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !self.mapped() {
            return s.serialize_str(&self.path);
        }
        let Dataset { path, prompt, response, messages, prompt_suffix } = self.clone();
        DatasetMap { path, prompt, response, messages, prompt_suffix }.serialize(s)
    }
}

// By hand rather than `untagged`, so a wrong key in the mapping is named in the error.
impl<'de> Deserialize<'de> for Dataset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let m: DatasetMap = match Value::deserialize(d)? {
            Value::String(path) => return Ok(Dataset { path, ..Default::default() }),
            v @ Value::Mapping(_) => serde_yaml::from_value(v).map_err(D::Error::custom)?,
            _ => return Err(D::Error::custom("expected a dataset path or {path, prompt, response, messages, prompt_suffix}")),
        };
        if m.messages.is_some() && (m.prompt.is_some() || m.response.is_some()) {
            return Err(D::Error::custom("a dataset's conversation is in `messages` or in `prompt` and `response`, not both"));
        }
        Ok(Dataset { path: m.path, prompt: m.prompt, response: m.response, messages: m.messages, prompt_suffix: m.prompt_suffix })
    }
}

/// A model a recipe uses: a directory or hub id, its dtype and optionally its own device. A
/// teacher may instead be served by an inference engine (`server`), with only its tokenizer
/// and chat template here (`tokenizer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A served teacher's tokenizer.json, tokenizer_config.json and config.json: a directory or hub id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The server that scores (and, for teacher_responses, generates) for this teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSpec>,
    #[serde(default = "f32")]
    pub dtype: String,
    /// Overrides the recipe's `device` for this model.
    #[serde(default)]
    pub device: Option<String>,
    /// A PEFT adapter directory applied on top of `path` (and trained further with `lora`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Train LoRA adapters instead of the full model (sft, and opd's student).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::nn::lora::LoraSpec>,
    /// Extra variables for the model's chat template, as transformers'
    /// `apply_chat_template(..., **kwargs)` takes them: `{enable_thinking: false}` for Qwen3.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chat_template_kwargs: std::collections::BTreeMap<String, serde_json::Value>,
}

impl ModelSpec {
    /// What names the model in messages: its path, or its server's address.
    pub fn name(&self) -> &str {
        match &self.server {
            Some(s) => &s.url,
            None => &self.path,
        }
    }

    /// Checks the keys that go together; `servable` says whether this model may be a server.
    pub fn validate(&self, key: &str, servable: bool) -> Result<()> {
        match &self.server {
            Some(server) => {
                ensure!(servable, "{key}.server: only a teacher can be served (the student trains here)");
                ensure!(self.path.is_empty(), "{key}.path: a served teacher has no weights here; name its tokenizer with {key}.tokenizer");
                ensure!(self.tokenizer.is_some(), "{key}.tokenizer: a served teacher needs its tokenizer (a directory or hub id with tokenizer.json)");
                ensure!(self.adapter.is_none() && self.lora.is_none(), "{key}.adapter: a served teacher's adapters are the server's to load");
                server.check(&format!("{key}.server"))
            }
            None => {
                ensure!(!self.path.is_empty(), "{key}.path: missing (a model directory or hub id)");
                ensure!(self.tokenizer.is_none(), "{key}.tokenizer: only for a served teacher ({key}.server); the tokenizer comes from {key}.path");
                Ok(())
            }
        }
    }

    /// Refuses an `output_dir` that is this model's own folder (`key.path`, or its adapter):
    /// the run would write its checkpoints and metrics among the weights it trains from.
    pub fn not_written_by(&self, key: &str, output_dir: &Path) -> Result<()> {
        let out = crate::atomic::resolve(output_dir);
        for (what, path) in [("path", Some(&self.path)), ("adapter", self.adapter.as_ref())] {
            if let Some(p) = path.filter(|p| !p.is_empty()) {
                ensure!(crate::atomic::resolve(Path::new(p)) != out, "output_dir {} is {key}.{what}, the model the run trains; choose another folder for the run", output_dir.display());
            }
        }
        Ok(())
    }
}

pub(crate) fn f32() -> String {
    "f32".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// The training set: `{"prompt", "response"}` or `{"messages": [...]}` records.
    pub train: Dataset,
    /// The held-out set for evaluation.
    #[serde(default)]
    pub eval: Option<Dataset>,
    /// Sequences longer than this (prompt + response tokens) are truncated, with a count.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// Pack each micro-batch's sequences into rows of at most `max_length` tokens (TRL's
    /// `packing`, torchtune's `packed`): the same examples and loss, without the padding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Use only the first N examples.
    #[serde(default)]
    pub max_examples: Option<usize>,
}

pub(crate) fn d_max_length() -> usize {
    1024
}

pub(crate) fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this; null disables clipping (the norm is still logged).
    #[serde(default = "d_clip")]
    pub grad_clip: Option<f64>,
}

fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn d_eps() -> f64 {
    1e-8
}

fn d_clip() -> Option<f64> {
    Some(1.0)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSpec {
    pub warmup_steps: usize,
    pub decay: Decay,
    /// The learning rate at the end of the decay, as a fraction of `optimizer.lr`.
    pub min_lr_ratio: f64,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self { warmup_steps: 0, decay: Decay::Cosine, min_lr_ratio: 0.0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the loss is normalised by the real token count of the window.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Save a checkpoint every N steps (and always at the end).
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// Keep only the newest N checkpoints (all when null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last_checkpoints: Option<usize>,
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (torchtune's enable_activation_checkpointing, TRL's gradient_checkpointing).
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Stop at the first evaluation where every listed metric reaches its value (then `steps`
    /// is the most it may take): a warm-up that stops inside an accuracy band on the validation
    /// split rather than after a step count that lands differently at every seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub stop_at: Vec<StopAt>,
    /// ZeRO stage over several ranks: 0 keeps the whole optimizer state on every rank, 1
    /// shards it (DeepSpeed's stage 1), 2 shards the summed gradients too.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero: usize,
}

/// `training.zero` is a stage this build runs.
pub fn validate_zero(zero: usize) -> Result<()> {
    ensure!(zero <= 2, "training.zero: {zero} is not a stage tokbridge runs (0: replicated; 1: the optimizer state sharded over the ranks; 2: the gradients too; stage 3, the parameters, is not implemented)");
    Ok(())
}

/// One value or a list of them: `stop_at: {...}` for one condition, `stop_at: [{...}, ...]` for
/// several (all must hold); a compare run's `teacher_responses: DIR` or `[DIR, DIR]`.
pub(crate) mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr<T> {
        One(T),
        Many(Vec<T>),
    }

    pub fn serialize<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    /// One `T` or a list of them; `what` says what was expected when it is neither.
    pub fn read<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D, what: &str) -> Result<Vec<T>, D::Error> {
        Ok(match Repr::deserialize(d).map_err(|_| serde::de::Error::custom(what))? {
            Repr::One(x) => vec![x],
            Repr::Many(v) => v,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::StopAt>, D::Error> {
        read(d, "training.stop_at: expected {metric, at_least | at_most} or a list of them")
    }

    /// `teacher_responses` of a compare run.
    pub mod paths {
        pub use super::serialize;
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::path::PathBuf>, D::Error> {
            super::read(d, "runs: teacher_responses: expected a directory or a list of them")
        }
    }
}

/// A condition of `stop_at: {metric: eval/exact_match, at_least: 0.7}` (or `at_most:` for a
/// loss); `stop_at` may list several.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopAt {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
}

impl StopAt {
    /// Whether `values` (one evaluation's metrics) meet the target; an error names the metric
    /// when the evaluation does not report it.
    pub fn reached(&self, values: &[(String, f64)]) -> Result<bool> {
        let Some((_, v)) = values.iter().find(|(k, _)| *k == self.metric) else {
            let known: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
            bail!("training.stop_at.metric: the evaluation reports no {:?} (it reports {})", self.metric, known.join(", "));
        };
        Ok(self.at_least.is_some_and(|t| *v >= t) || self.at_most.is_some_and(|t| *v <= t))
    }
}

pub(crate) fn one() -> usize {
    1
}

/// Sampling settings for generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingSpec {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub max_new_tokens: usize,
}

pub(crate) fn d_temperature() -> f64 {
    1.0
}

pub(crate) fn d_top_p() -> f64 {
    1.0
}

pub(crate) fn d_max_new() -> usize {
    256
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 256 }
    }
}

/// One evaluation measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scorer {
    /// Greedy decoding; the final answer (`#### x` or `\boxed{x}`) must equal the reference's.
    ExactMatch,
    /// With `exact_match`: the share of its greedy responses that say what the reference says
    /// except for the numbers (`eval/words_match`). It measures copying where a task has one
    /// canonical answer (the demo's); where valid answers vary it reads 0 and means nothing.
    WordsMatch,
    /// Mean accuracy of k samples per prompt at the given sampling settings (avg@k).
    AvgAtK(AvgAtK),
    /// Mean negative log-likelihood per reference response token, and its perplexity.
    Nll,
}

/// avg@k settings: k samples per prompt with these sampling settings (the paper: k = 4,
/// temperature 0.6, top-p 0.95, top-k 20).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgAtK {
    pub k: usize,
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: i64,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
}

impl AvgAtK {
    pub fn sampling(&self) -> SamplingSpec {
        SamplingSpec { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, max_new_tokens: self.max_new_tokens }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate every N optimizer steps (and at the start and end); in an `eval` recipe, ignored.
    #[serde(default)]
    pub every: Option<usize>,
    /// `- exact_match`, `- nll`, `- avg_at_k: {k: 4, temperature: 0.6, ...}`.
    #[serde(default = "d_scorers", with = "serde_yaml::with::singleton_map_recursive")]
    pub scorers: Vec<Scorer>,
    #[serde(default)]
    pub max_examples: Option<usize>,
    #[serde(default = "d_eval_batch")]
    pub batch_size: usize,
    /// Greedy generation length for exact_match.
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
    /// A teacher that scores the student's held-out samples at every evaluation (the
    /// teacher-minus-student log-prob gap OPD optimises), so runs of any recipe can be compared
    /// on it. `opd` always uses its own teacher.
    #[serde(default)]
    pub teacher: Option<ModelSpec>,
    /// Samples scored for that gap (the first N held-out prompts; default: all evaluated).
    #[serde(default)]
    pub gap_examples: Option<usize>,
}

fn d_scorers() -> Vec<Scorer> {
    vec![Scorer::ExactMatch, Scorer::Nll]
}

pub(crate) fn d_eval_batch() -> usize {
    16
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSpec {
    pub tensorboard: bool,
    /// Show progress bars (off when stderr is not a terminal anyway).
    pub progress: bool,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self { tensorboard: true, progress: true }
    }
}

pub(crate) fn d_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsSpec {
    /// Records with `prompt` or `messages` (a `response`, if present, is ignored).
    pub prompts: Dataset,
    /// Leave out the first N prompts (answer a later slice: prompts another run did not see).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: usize,
    /// Answer at most N prompts (after `skip`).
    #[serde(default)]
    pub max_examples: Option<usize>,
}

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub fn validate_optimizer(o: &OptimizerSpec) -> Result<()> {
    ensure!(o.lr > 0.0 && o.lr.is_finite(), "optimizer.lr must be positive");
    ensure!(o.weight_decay >= 0.0 && o.weight_decay.is_finite(), "optimizer.weight_decay must be a finite number >= 0");
    ensure!(o.betas.iter().all(|b| (0.0..1.0).contains(b)), "optimizer.betas must be in [0, 1)");
    ensure!(o.eps > 0.0 && o.eps.is_finite(), "optimizer.eps must be a finite positive number");
    ensure!(o.grad_clip.is_none_or(|c| c > 0.0), "optimizer.grad_clip must be positive or null");
    Ok(())
}

pub fn validate_training(t: &TrainingSpec) -> Result<()> {
    ensure!(t.steps > 0, "training.steps must be positive");
    ensure!(t.batch_size > 0, "training.batch_size must be positive");
    ensure!(t.grad_accum > 0, "training.grad_accum must be positive");
    ensure!(t.checkpoint_every != Some(0), "training.checkpoint_every must be positive");
    ensure!(t.keep_last_checkpoints != Some(0), "training.keep_last_checkpoints must be positive");
    validate_zero(t.zero)
}

pub fn validate_sampling(s: &SamplingSpec, key: &str) -> Result<()> {
    ensure!(s.temperature >= 0.0 && s.temperature.is_finite(), "{key}.temperature must be a finite number >= 0");
    ensure!(s.top_p > 0.0 && s.top_p <= 1.0, "{key}.top_p must be in (0, 1]");
    ensure!(s.top_k >= 0, "{key}.top_k must be >= 0");
    ensure!(s.max_new_tokens > 0, "{key}.max_new_tokens must be positive");
    Ok(())
}

/// A training recipe's `eval` section, if set, with the held-out set it reads (`data.eval`).
pub fn validate_training_eval(eval: Option<&EvalSpec>, held_out: Option<&Dataset>, scored: bool) -> Result<()> {
    if let Some(e) = eval {
        ensure!(held_out.is_some(), "eval is set but data.eval (the held-out set) is not");
        validate_eval(e, scored)?;
    }
    Ok(())
}

/// `scored`: the recipe measures nothing but its scorers (opd also measures the held-out
/// teacher-student gap, so it may have none).
pub fn validate_eval(e: &EvalSpec, scored: bool) -> Result<()> {
    ensure!(e.every != Some(0), "eval.every must be positive");
    ensure!(e.batch_size > 0, "eval.batch_size must be positive");
    ensure!(!scored || !e.scorers.is_empty(), "eval.scorers must not be empty");
    ensure!(
        !e.scorers.iter().any(|s| matches!(s, Scorer::WordsMatch)) || e.scorers.iter().any(|s| matches!(s, Scorer::ExactMatch)),
        "eval.scorers: words_match reads exact_match's greedy responses; list exact_match too"
    );
    for s in &e.scorers {
        if let Scorer::AvgAtK(a) = s {
            ensure!(a.k > 0, "eval.scorers.avg_at_k.k must be positive");
            validate_sampling(&a.sampling(), "eval.scorers.avg_at_k")?;
        }
    }
    Ok(())
}

/// `teacher.server` in a recipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// The server's base address, e.g. `http://localhost:8000` (a trailing `/v1` is accepted).
    pub url: String,
    /// The served model's name (`--served-model-name`); left out of requests when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default = "d_api")]
    pub api: Api,
    /// Seconds one request may take before it counts as failed (and is retried).
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Requests in flight at once.
    #[serde(default = "d_concurrency")]
    pub max_concurrency: usize,
    /// Further tries of a failed request, with backoff 0.5 s, 1 s, 2 s, … (at most 8 s).
    #[serde(default = "d_retries")]
    pub retries: usize,
}

fn d_api() -> Api {
    Api::OpenaiCompletions
}
fn d_timeout() -> f64 {
    300.0
}
fn d_concurrency() -> usize {
    8
}
fn d_retries() -> usize {
    3
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    OpenaiCompletions,
    Vllm,
    Sglang,
    /// llama-cpp-python's server: `openai_completions` with the prompt as text (it refuses
    /// ids), whose echo leaves out BOS tokens and is one token off unless the sequence starts
    /// with the model's BOS (checked on every answer).
    LlamaCppPython,
}

impl ServerSpec {
    pub fn check(&self, key: &str) -> Result<()> {
        let u = self.url.trim();
        ensure!(u.starts_with("http://") || u.starts_with("https://"), "{key}.url: {u:?} is not an http:// or https:// address");
        ensure!(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0, "{key}.timeout_s: must be a positive number of seconds, at most 86400 (a day)");
        ensure!(self.max_concurrency >= 1, "{key}.max_concurrency: must be at least 1");
        Ok(())
    }

    /// The address of the scoring (and generation) endpoint.
    pub fn endpoint(&self) -> String {
        let base = self.url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        match self.api {
            Api::Sglang => format!("{base}/generate"),
            Api::OpenaiCompletions | Api::Vllm | Api::LlamaCppPython => format!("{base}/v1/completions"),
        }
    }
}

//! Recipes: YAML files that name a recipe module and give it typed sections.
//!
//! Shaped like torchtune's configs (one file per run, `recipe:` picks the module) with TRL's
//! knob names where they exist. Every struct denies unknown keys; serde_yaml reports the key
//! path with its line and column. `key.path=value` overrides are applied to the YAML tree
//! before it is typed; the resolved recipe is what a run directory keeps.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

pub type Vars = std::collections::BTreeMap<String, Value>;

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
    pub server: Option<crate::served::ServerSpec>,
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
}

fn f32() -> String {
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

fn d_max_length() -> usize {
    1024
}

fn yes() -> bool {
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
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "d_decay")]
    pub decay: Decay,
    /// The learning rate at the end of the decay, as a fraction of `optimizer.lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
}

fn d_decay() -> Decay {
    Decay::Cosine
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
}

/// One value or a list of them: `stop_at: {...}` for one condition, `stop_at: [{...}, ...]` for
/// several (all must hold); a compare run's `teacher_responses: DIR` or `[DIR, DIR]`.
mod one_or_many {
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

fn one() -> usize {
    1
}

/// Sampling settings for generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: i64,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
}

fn d_temperature() -> f64 {
    1.0
}

fn d_top_p() -> f64 {
    1.0
}

fn d_max_new() -> usize {
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

fn d_eval_batch() -> usize {
    16
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSpec {
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Show progress bars (off when stderr is not a terminal anyway).
    #[serde(default = "yes")]
    pub progress: bool,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self { tensorboard: true, progress: true }
    }
}

fn d_device() -> String {
    "cpu".into()
}

/// `recipe: sft`: cross-entropy fine-tuning on response tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sft {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub model: ModelSpec,
    pub data: DataSpec,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub eval: Option<EvalSpec>,
    #[serde(default)]
    pub logging: LoggingSpec,
    /// After training, export the final model here as a Hugging Face directory (float32).
    #[serde(default)]
    pub export_to: Option<PathBuf>,
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

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `recipe: teacher_responses`: the teacher answers every prompt; the result is an SFT dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherResponses {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    /// Where the JSONL dataset goes (and its progress, for resuming).
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub teacher: ModelSpec,
    pub data: PromptsSpec,
    #[serde(default)]
    pub sampling: SamplingSpec,
    #[serde(default = "d_eval_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub logging: LoggingSpec,
}

/// `recipe: eval`: held-out evaluation of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub model: ModelSpec,
    /// Prompts and reference responses.
    pub data: Dataset,
    pub eval: EvalSpec,
    #[serde(default)]
    pub logging: LoggingSpec,
}

/// The training signal of the `opd` recipe.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum OpdLoss {
    /// DPCA chunk alignment with chunk-level credit assignment and the PPO-clip surrogate (the paper).
    Dpca,
    /// ULD: sorted-probability L1 between positionally truncated distributions.
    Uld,
    /// GOLD: merged aligned groups, JSD on exact vocabulary matches, sorted L1 on the rest.
    GoldHybrid,
    /// ALM: binary cross-entropy between aligned chunk likelihoods at a temperature.
    Alm,
    /// Same vocabulary only (GKD): KL(teacher ‖ student) over the full next-token distribution
    /// at every response position; `distill.beta` is ignored (it is 0).
    ForwardKl,
    /// Same vocabulary only: KL(student ‖ teacher) over the full distribution (`beta` = 1).
    ReverseKl,
    /// Same vocabulary only: the generalized Jensen-Shannon divergence with `distill.beta`,
    /// as TRL's `GKDTrainer.generalized_jsd_loss`.
    Jsd,
}

impl OpdLoss {
    /// The full-distribution losses of same-vocabulary distillation, with their `beta`.
    pub fn divergence_beta(self, distill: &DistillSpec) -> Option<f64> {
        match self {
            OpdLoss::ForwardKl => Some(0.0),
            OpdLoss::ReverseKl => Some(1.0),
            OpdLoss::Jsd => Some(distill.beta),
            OpdLoss::Dpca | OpdLoss::Uld | OpdLoss::GoldHybrid | OpdLoss::Alm => None,
        }
    }
}

/// Settings of the full-distribution losses (`forward_kl`, `reverse_kl`, `jsd`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// The generalized JSD's interpolation (TRL's `beta`): 0 is forward KL, 1 reverse KL.
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// Both distributions at this temperature (TRL GKD's `temperature`; 1 leaves them as they are).
    #[serde(default = "d_one_f")]
    pub temperature: f64,
    /// Only the teacher's top-k tokens of each position plus one tail bucket for the rest of
    /// the mass, on both sides (verl's `forward_kl_topk`, NeMo RL's top-k); null: the whole vocabulary.
    #[serde(default)]
    pub top_k: Option<usize>,
}

fn d_one_f() -> f64 {
    1.0
}

impl Default for DistillSpec {
    fn default() -> Self {
        Self { beta: 0.5, temperature: 1.0, top_k: None }
    }
}

/// Where candidate scoring runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum CandidatePositions {
    /// At the start of every unmasked chunk.
    All,
    /// Only at chunks whose DPCA advantage (L_T − L_S) is below `threshold`: where the student
    /// is likely wrong, bounding the teacher's cost.
    Disagree,
}

/// The teacher's distribution over the student's own candidate tokens (DPCA + candidates): at
/// a chunk start the teacher scores each of the student's top-k next tokens by the probability
/// that it writes that token's text next, and the student's distribution over the candidates
/// is trained toward it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateSpec {
    /// Candidates per position: the student's top-k tokens (and its sampled token).
    #[serde(default = "d_cand_k")]
    pub k: usize,
    /// Weight of the candidate term beside DPCA's surrogate (mean over scored positions).
    #[serde(default = "d_one_f")]
    pub weight: f64,
    /// `forward_kl` (teacher ‖ student, GKD's choice on math), `reverse_kl`, or `jsd` with `beta`.
    #[serde(default = "d_cand_div")]
    pub divergence: OpdLoss,
    #[serde(default = "d_beta")]
    pub beta: f64,
    #[serde(default = "d_cand_positions")]
    pub positions: CandidatePositions,
    /// `positions: disagree` scores chunks with L_T − L_S below this (nats).
    #[serde(default = "d_cand_threshold")]
    pub threshold: f64,
}

fn d_cand_k() -> usize {
    16
}

fn d_cand_div() -> OpdLoss {
    OpdLoss::ForwardKl
}

fn d_cand_positions() -> CandidatePositions {
    CandidatePositions::All
}

fn d_cand_threshold() -> f64 {
    -1.0
}

impl CandidateSpec {
    /// The generalized JSD's beta of the candidate divergence.
    pub fn beta(&self) -> f64 {
        match self.divergence {
            OpdLoss::ReverseKl => 1.0,
            OpdLoss::Jsd => self.beta,
            _ => 0.0,
        }
    }
}

/// What DPCA subtracts from each token's advantage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageBaseline {
    /// Nothing (the paper, tinker's OPD recipe).
    #[default]
    None,
    /// The mean advantage per unmasked token over the samples of the same prompt
    /// (`rollout.samples_per_prompt` > 1), as GRPO centres rewards within a group.
    GroupMean,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpdData {
    /// Prompts (`prompt` or `messages`); responses, if present, feed the off-policy fraction.
    pub train: Dataset,
    /// The held-out set for evaluation (scorers, and the teacher-student log-prob gap).
    #[serde(default)]
    pub eval: Option<Dataset>,
    #[serde(default)]
    pub max_examples: Option<usize>,
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Prompts longer than this (student tokens) are skipped, with a count.
    #[serde(default = "d_max_length")]
    pub max_prompt_length: usize,
}

/// How the student samples its rollouts (paper defaults: temperature 1, top-p 1, one sample).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: i64,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
    #[serde(default = "one")]
    pub samples_per_prompt: usize,
    /// Keep sampling past end tokens to exactly max_new_tokens (benchmarks of long responses).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 256, samples_per_prompt: 1, ignore_eos: false }
    }
}

/// DPCA and PPO settings (paper defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpcaSpec {
    /// K: chunks with more tokens than this on either side are masked.
    #[serde(default = "d_k")]
    pub max_chunk_tokens: usize,
    #[serde(default = "d_clamp")]
    pub adv_clamp: f64,
    #[serde(default = "d_clip_low")]
    pub clip_low: f64,
    #[serde(default = "d_clip_high")]
    pub clip_high: f64,
    #[serde(default = "d_clamp")]
    pub dual_clip: f64,
    #[serde(default)]
    pub baseline: AdvantageBaseline,
    /// The teacher's distribution over the student's candidate tokens, added to DPCA (off: null).
    #[serde(default)]
    pub candidates: Option<CandidateSpec>,
}

fn d_k() -> usize {
    6
}

fn d_clamp() -> f64 {
    10.0
}

fn d_clip_low() -> f64 {
    0.2
}

fn d_clip_high() -> f64 {
    0.28
}

impl Default for DpcaSpec {
    fn default() -> Self {
        Self { max_chunk_tokens: 6, adv_clamp: 10.0, clip_low: 0.2, clip_high: 0.28, dual_clip: 10.0, baseline: AdvantageBaseline::None, candidates: None }
    }
}

/// Settings of the baseline losses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// ALM's binarization temperature.
    #[serde(default = "d_alm_tau")]
    pub alm_temperature: f64,
    /// GOLD's JSD interpolation on matched tokens (TRL's `beta`).
    #[serde(default = "d_beta")]
    pub gold_beta: f64,
    /// GOLD's matched / unmatched weights; both null means the adaptive matched fraction.
    #[serde(default)]
    pub gold_matched_weight: Option<f64>,
    #[serde(default)]
    pub gold_unmatched_weight: Option<f64>,
}

fn d_alm_tau() -> f64 {
    100.0
}

fn d_beta() -> f64 {
    0.5
}

impl Default for BaselineSpec {
    fn default() -> Self {
        Self { alm_temperature: 100.0, gold_beta: 0.5, gold_matched_weight: None, gold_unmatched_weight: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpdTraining {
    /// Rollout steps (each takes `ppo_epochs` optimizer steps).
    pub steps: usize,
    /// Prompts per rollout step.
    pub prompts_per_step: usize,
    #[serde(default = "one")]
    pub ppo_epochs: usize,
    /// Sequences per forward/backward pass.
    #[serde(default = "d_micro")]
    pub micro_batch_size: usize,
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// Keep only the newest N checkpoints (all when null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last_checkpoints: Option<usize>,
    /// Recompute each student block's activations in the backward pass instead of keeping them.
    #[serde(default)]
    pub activation_checkpointing: bool,
}

fn d_micro() -> usize {
    8
}

/// `recipe: opd`: on-policy distillation from a teacher of any tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opd {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub student: ModelSpec,
    pub teacher: ModelSpec,
    pub data: OpdData,
    #[serde(default = "d_opd_loss")]
    pub loss: OpdLoss,
    /// Fraction of steps trained on the student's own samples (GKD's `lmbda`); the rest use the
    /// dataset's responses.
    #[serde(default = "d_lmbda")]
    pub lmbda: f64,
    #[serde(default)]
    pub rollout: RolloutSpec,
    #[serde(default)]
    pub dpca: DpcaSpec,
    #[serde(default)]
    pub baselines: BaselineSpec,
    #[serde(default)]
    pub distill: DistillSpec,
    /// Teacher sequences longer than this are truncated and their rollout masked entirely.
    #[serde(default = "d_teacher_max")]
    pub teacher_max_length: usize,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    pub training: OpdTraining,
    #[serde(default)]
    pub eval: Option<EvalSpec>,
    #[serde(default)]
    pub logging: LoggingSpec,
    /// After training, export the final model here as a Hugging Face directory (float32).
    #[serde(default)]
    pub export_to: Option<PathBuf>,
}

fn d_opd_loss() -> OpdLoss {
    OpdLoss::Dpca
}

fn d_lmbda() -> f64 {
    1.0
}

fn d_teacher_max() -> usize {
    4096
}

/// `recipe: make_task`: the demo's seeded arithmetic word-problem task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakeTask {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    #[serde(default)]
    pub seed: u64,
    /// Writes train.jsonl and test.jsonl here.
    pub output_dir: PathBuf,
    pub train_size: usize,
    pub test_size: usize,
    /// A validation split (`val.jsonl`), disjoint from both, for choosing settings.
    #[serde(default)]
    pub val_size: usize,
    #[serde(default = "d_min_digits")]
    pub min_digits: usize,
    #[serde(default = "d_max_digits")]
    pub max_digits: usize,
    /// Whether steps may carry or borrow (false: each step changes exactly one digit).
    #[serde(default = "yes")]
    pub carries: bool,
}

fn d_min_digits() -> usize {
    3
}

fn d_max_digits() -> usize {
    5
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SpaceStyle {
    ByteLevel,
    Metaspace,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DigitStyle {
    Split,
    Group3,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ChatStyle {
    Chatml,
    Llama3,
}

/// `recipe: train_tokenizer`: a BPE tokenizer trained on JSONL text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTokenizer {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub output_dir: PathBuf,
    pub data: Vec<Dataset>,
    pub vocab_size: usize,
    pub spaces: SpaceStyle,
    pub digits: DigitStyle,
    pub chat: ChatStyle,
    /// Characters kept in the initial alphabet of metaspace vocabularies (the rest fall back to bytes).
    #[serde(default = "d_alphabet")]
    pub limit_alphabet: usize,
}

fn d_alphabet() -> usize {
    100
}

/// `recipe: init_model`: a randomly initialised model of a Llama-style family, saved in
/// Hugging Face layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitModel {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    /// llama, mistral, qwen2 or qwen3.
    pub model_type: String,
    /// A directory with tokenizer.json and tokenizer_config.json.
    pub tokenizer: PathBuf,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Embedding rows; default the tokenizer's vocabulary (real models often pad it, e.g. to a
    /// multiple of 64 or to 128256).
    #[serde(default)]
    pub vocab_size: Option<i64>,
    /// dtype of the written weights.
    #[serde(default = "f32")]
    pub dtype: String,
}

fn d_max_pos() -> i64 {
    2048
}

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
        over.extend(var_overrides(&rep.vars));
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
    Sweep(crate::recipes::sweep::Sweep),
}

pub const RECIPES: [&str; 10] = ["sft", "teacher_responses", "eval", "opd", "make_task", "train_tokenizer", "init_model", "pipeline", "compare", "sweep"];

impl Recipe {
    /// Reads `path`, applies `overrides` (`a.b.c=value`, value parsed as YAML) and types it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        Self::parse(&text, overrides).with_context(|| format!("recipe {}", path.display()))
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

    /// The directory the recipe writes.
    pub fn output_dir(&self) -> &Path {
        match self {
            Recipe::Sft(r) => &r.output_dir,
            Recipe::TeacherResponses(r) => &r.output_dir,
            Recipe::Eval(r) => &r.output_dir,
            Recipe::Opd(r) => &r.output_dir,
            Recipe::MakeTask(r) => &r.output_dir,
            Recipe::TrainTokenizer(r) => &r.output_dir,
            Recipe::InitModel(r) => &r.output_dir,
            Recipe::Pipeline(r) => &r.output_dir,
            Recipe::Compare(r) => &r.output_dir,
            Recipe::Sweep(r) => &r.output_dir,
        }
    }

    /// Checks the values serde cannot: ranges and consistency. Errors name the key.
    pub fn validate(&self) -> Result<()> {
        crate::atomic::check_output_dir(self.output_dir(), "output_dir")?;
        match self {
            Recipe::Sft(r) => {
                r.model.validate("model", false)?;
                if let Some(t) = r.eval.as_ref().and_then(|e| e.teacher.as_ref()) {
                    t.validate("eval.teacher", true)?;
                }
                validate_optimizer(&r.optimizer)?;
                validate_training(&r.training)?;
                if let Some(l) = &r.model.lora {
                    l.validate("model.lora")?;
                    ensure!(l.dropout == 0.0 || !r.training.activation_checkpointing, "model.lora.dropout: not with training.activation_checkpointing (the recomputed blocks would draw other dropout masks)");
                }
                for s in &r.training.stop_at {
                    ensure!(s.at_least.is_some() != s.at_most.is_some(), "training.stop_at: {} needs exactly one of at_least and at_most", s.metric);
                    ensure!(r.eval.as_ref().is_some_and(|e| e.every.is_some()), "training.stop_at needs eval.every (it is checked at each evaluation)");
                }
                ensure!(r.data.max_length >= 2, "data.max_length must be at least 2");
                ensure!(r.schedule.min_lr_ratio >= 0.0 && r.schedule.min_lr_ratio <= 1.0, "schedule.min_lr_ratio must be in [0, 1]");
                if let Some(e) = &r.eval {
                    ensure!(r.data.eval.is_some(), "eval is set but data.eval (the held-out set) is not");
                    validate_eval(e, true)?;
                }
            }
            Recipe::TeacherResponses(r) => {
                r.teacher.validate("teacher", true)?;
                validate_sampling(&r.sampling, "sampling")?;
                ensure!(r.batch_size > 0, "batch_size must be positive");
            }
            Recipe::Eval(r) => {
                r.model.validate("model", false)?;
                if let Some(t) = &r.eval.teacher {
                    t.validate("eval.teacher", true)?;
                }
                validate_eval(&r.eval, true)?
            }
            Recipe::Opd(r) => {
                r.student.validate("student", false)?;
                r.teacher.validate("teacher", true)?;
                if r.teacher.server.is_some() {
                    ensure!(
                        matches!(r.loss, OpdLoss::Dpca | OpdLoss::Alm) && r.dpca.candidates.is_none(),
                        "teacher.server: a served teacher gives the log-prob of each token, which loss: dpca and alm use; {} and dpca.candidates need its distributions in this process",
                        serde_yaml::to_string(&r.loss).unwrap_or_default().trim()
                    );
                }
                validate_optimizer(&r.optimizer)?;
                if let Some(l) = &r.student.lora {
                    l.validate("student.lora")?;
                    ensure!(l.dropout == 0.0 || !r.training.activation_checkpointing, "student.lora.dropout: not with training.activation_checkpointing (the recomputed blocks would draw other dropout masks)");
                }
                ensure!(r.teacher.lora.is_none(), "teacher.lora: the teacher is not trained (an adapter on it is teacher.adapter)");
                ensure!(r.training.steps > 0, "training.steps must be positive");
                ensure!(r.training.prompts_per_step > 0, "training.prompts_per_step must be positive");
                ensure!(r.training.ppo_epochs > 0, "training.ppo_epochs must be positive");
                ensure!(r.training.micro_batch_size > 0, "training.micro_batch_size must be positive");
                ensure!(r.training.checkpoint_every != Some(0), "training.checkpoint_every must be positive");
                ensure!(r.training.keep_last_checkpoints != Some(0), "training.keep_last_checkpoints must be positive");
                ensure!((0.0..=1.0).contains(&r.lmbda), "lmbda must be in [0, 1]");
                ensure!(r.rollout.samples_per_prompt > 0, "rollout.samples_per_prompt must be positive");
                let s = SamplingSpec { temperature: r.rollout.temperature, top_p: r.rollout.top_p, top_k: r.rollout.top_k, max_new_tokens: r.rollout.max_new_tokens };
                validate_sampling(&s, "rollout")?;
                ensure!(r.dpca.max_chunk_tokens > 0, "dpca.max_chunk_tokens must be positive");
                ensure!(r.dpca.clip_low > 0.0 && r.dpca.clip_low < 1.0 && r.dpca.clip_high > 0.0, "dpca.clip_low must be in (0, 1) and dpca.clip_high positive");
                ensure!(r.dpca.dual_clip > 1.0, "dpca.dual_clip must be greater than 1");
                ensure!(r.baselines.alm_temperature > 0.0, "baselines.alm_temperature must be positive");
                ensure!((0.0..=1.0).contains(&r.baselines.gold_beta), "baselines.gold_beta must be in [0, 1]");
                ensure!((0.0..=1.0).contains(&r.distill.beta), "distill.beta must be in [0, 1]");
                ensure!(r.distill.temperature > 0.0, "distill.temperature must be positive");
                ensure!(r.distill.top_k != Some(0), "distill.top_k must be positive or null");
                if let Some(c) = &r.dpca.candidates {
                    ensure!(r.loss == OpdLoss::Dpca, "dpca.candidates works with loss: dpca");
                    ensure!(c.k >= 2, "dpca.candidates.k must be at least 2");
                    ensure!(c.weight > 0.0, "dpca.candidates.weight must be positive");
                    ensure!(matches!(c.divergence, OpdLoss::ForwardKl | OpdLoss::ReverseKl | OpdLoss::Jsd), "dpca.candidates.divergence must be forward_kl, reverse_kl or jsd");
                    ensure!((0.0..=1.0).contains(&c.beta), "dpca.candidates.beta must be in [0, 1]");
                }
                ensure!(
                    r.dpca.baseline == AdvantageBaseline::None || r.rollout.samples_per_prompt > 1,
                    "dpca.baseline: group_mean needs rollout.samples_per_prompt > 1"
                );
                ensure!(
                    r.baselines.gold_matched_weight.is_some() == r.baselines.gold_unmatched_weight.is_some(),
                    "baselines.gold_matched_weight and gold_unmatched_weight must both be set or both be null"
                );
                if let Some(e) = &r.eval {
                    ensure!(r.data.eval.is_some(), "eval is set but data.eval (the held-out set) is not");
                    validate_eval(e, false)?;
                }
            }
            Recipe::MakeTask(r) => {
                ensure!(r.train_size > 0 && r.test_size > 0, "train_size and test_size must be positive");
                ensure!(r.min_digits >= 1 && r.min_digits <= r.max_digits && r.max_digits <= 12, "need 1 <= min_digits <= max_digits <= 12");
            }
            Recipe::TrainTokenizer(r) => {
                ensure!(!r.data.is_empty(), "data must list at least one dataset");
                ensure!(r.vocab_size >= 300, "vocab_size must be at least 300 (specials and 256 bytes come first)");
            }
            Recipe::InitModel(r) => {
                ensure!(r.hidden_size > 0 && r.num_hidden_layers > 0 && r.intermediate_size > 0, "sizes must be positive");
                ensure!(r.num_attention_heads > 0 && r.num_key_value_heads > 0 && r.num_attention_heads % r.num_key_value_heads == 0, "num_attention_heads must be a positive multiple of num_key_value_heads");
                ensure!(r.head_dim.is_some() || r.hidden_size % r.num_attention_heads == 0, "hidden_size must divide by num_attention_heads (or set head_dim)");
            }
            Recipe::Pipeline(r) => {
                ensure!(!r.stages.is_empty(), "stages must not be empty");
                for (i, st) in r.stages.iter().enumerate() {
                    let name = st.name();
                    ensure!(!r.stages[..i].iter().any(|o| o.name() == name), "stages: two stages are named {name:?} (give one `name:`)");
                }
            }
            Recipe::Compare(r) => {
                ensure!(!r.runs.is_empty(), "runs must not be empty");
                for s in &r.sweeps {
                    if let Some(t) = &s.shipped {
                        ensure!(t.is_file(), "sweeps: shipped table {} of {:?} is not a file", t.display(), s.name);
                    }
                }
                for c in &r.contrasts {
                    for (key, name) in [("run", &c.run), ("against", &c.against)] {
                        ensure!(r.runs.iter().any(|run| &run.name == name), "contrasts: {key} {name:?} of {:?} is not the name of one of the runs", c.name);
                    }
                }
                for (i, rep) in r.repeats.iter().enumerate() {
                    ensure!(!rep.vars.is_empty(), "repeats: {:?} sets no vars (it would be this comparison again)", rep.name);
                    ensure!(!r.repeats[..i].iter().any(|o| o.name == rep.name), "repeats: the name {:?} is used twice", rep.name);
                }
            }
            Recipe::Sweep(r) => r.validate()?,
        }
        Ok(())
    }

    /// The resolved recipe as YAML, for the run directory.
    pub fn to_yaml(&self) -> Result<String> {
        Ok(match self {
            Recipe::Sft(r) => serde_yaml::to_string(r)?,
            Recipe::TeacherResponses(r) => serde_yaml::to_string(r)?,
            Recipe::Eval(r) => serde_yaml::to_string(r)?,
            Recipe::Opd(r) => serde_yaml::to_string(r)?,
            Recipe::MakeTask(r) => serde_yaml::to_string(r)?,
            Recipe::TrainTokenizer(r) => serde_yaml::to_string(r)?,
            Recipe::InitModel(r) => serde_yaml::to_string(r)?,
            Recipe::Pipeline(r) => serde_yaml::to_string(r)?,
            Recipe::Compare(r) => serde_yaml::to_string(r)?,
            Recipe::Sweep(r) => serde_yaml::to_string(r)?,
        })
    }
}

fn validate_optimizer(o: &OptimizerSpec) -> Result<()> {
    ensure!(o.lr > 0.0 && o.lr.is_finite(), "optimizer.lr must be positive");
    ensure!(o.weight_decay >= 0.0 && o.weight_decay.is_finite(), "optimizer.weight_decay must be a finite number >= 0");
    ensure!(o.betas.iter().all(|b| (0.0..1.0).contains(b)), "optimizer.betas must be in [0, 1)");
    ensure!(o.eps > 0.0 && o.eps.is_finite(), "optimizer.eps must be a finite positive number");
    ensure!(o.grad_clip.is_none_or(|c| c > 0.0), "optimizer.grad_clip must be positive or null");
    Ok(())
}

fn validate_training(t: &TrainingSpec) -> Result<()> {
    ensure!(t.steps > 0, "training.steps must be positive");
    ensure!(t.batch_size > 0, "training.batch_size must be positive");
    ensure!(t.grad_accum > 0, "training.grad_accum must be positive");
    ensure!(t.checkpoint_every != Some(0), "training.checkpoint_every must be positive");
    ensure!(t.keep_last_checkpoints != Some(0), "training.keep_last_checkpoints must be positive");
    Ok(())
}

fn validate_sampling(s: &SamplingSpec, key: &str) -> Result<()> {
    ensure!(s.temperature >= 0.0 && s.temperature.is_finite(), "{key}.temperature must be a finite number >= 0");
    ensure!(s.top_p > 0.0 && s.top_p <= 1.0, "{key}.top_p must be in (0, 1]");
    ensure!(s.top_k >= 0, "{key}.top_k must be >= 0");
    ensure!(s.max_new_tokens > 0, "{key}.max_new_tokens must be positive");
    Ok(())
}

/// `scored`: the recipe measures nothing but its scorers (opd also measures the held-out
/// teacher-student gap, so it may have none).
fn validate_eval(e: &EvalSpec, scored: bool) -> Result<()> {
    ensure!(e.every != Some(0), "eval.every must be positive");
    ensure!(e.batch_size > 0, "eval.batch_size must be positive");
    ensure!(!scored || !e.scorers.is_empty(), "eval.scorers must not be empty");
    for s in &e.scorers {
        if let Scorer::AvgAtK(a) = s {
            ensure!(a.k > 0, "eval.scorers.avg_at_k.k must be positive");
            validate_sampling(&a.sampling(), "eval.scorers.avg_at_k")?;
        }
    }
    Ok(())
}

/// Replaces `${name}` in `text` with the recipe's `vars` (after `vars.name=...` overrides).
/// Only scalars can be substituted; an unknown name is an error.
fn substitute_vars(text: &str, overrides: &[String]) -> Result<String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    // Read `vars` from the text with every placeholder masked by a plain scalar, since a
    // placeholder inside a flow collection (`{path: ${root}/x}`) is not YAML yet.
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        masked.push_str(&rest[..i]);
        masked.push_str("_var_");
        rest = rest[i..].find('}').map_or("", |e| &rest[i + e + 1..]);
    }
    masked.push_str(rest);
    let mut tree: Value = serde_yaml::from_str(&masked)?;
    for o in overrides.iter().filter(|o| o.starts_with("vars.")) {
        apply_override(&mut tree, o)?;
    }
    let vars = tree.get("vars").and_then(Value::as_mapping).cloned().unwrap_or_default();
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

    const SFT: &str = "recipe: sft\noutput_dir: runs/x\nmodel:\n  path: m\ndata:\n  train: t.jsonl\noptimizer:\n  lr: 1.0e-4\ntraining:\n  steps: 3\n  batch_size: 2\n";

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
    fn scorers_parse_in_both_forms() {
        let text = format!("{SFT}eval:\n  scorers:\n    - exact_match\n    - avg_at_k: {{k: 4, temperature: 0.6, top_p: 0.95, top_k: 20}}\n    - nll\n");
        let text = text.replace("  train: t.jsonl", "  train: t.jsonl\n  eval: e.jsonl");
        let Recipe::Sft(r) = Recipe::parse(&text, &[]).unwrap() else { panic!() };
        let scorers = r.eval.unwrap().scorers;
        assert!(matches!(&scorers[1], Scorer::AvgAtK(a) if a.k == 4 && a.top_k == 20 && a.temperature == 0.6));
    }
}

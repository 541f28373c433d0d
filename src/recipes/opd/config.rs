//! The `opd` recipe's schema: the loss, the rollout, DPCA's and the baselines' settings, and
//! their validation. Each default is written once.
use crate::spec::*;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
#[serde(default, deny_unknown_fields)]
pub struct DistillSpec {
    /// The generalized JSD's interpolation (TRL's `beta`): 0 is forward KL, 1 reverse KL.
    pub beta: f64,
    /// Both distributions at this temperature (TRL GKD's `temperature`; 1 leaves them as they are).
    pub temperature: f64,
    /// Only the teacher's top-k tokens of each position plus one tail bucket for the rest of
    /// the mass, on both sides (verl's `forward_kl_topk`, NeMo RL's top-k); null: the whole vocabulary.
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
#[serde(default, deny_unknown_fields)]
pub struct RolloutSpec {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub max_new_tokens: usize,
    pub samples_per_prompt: usize,
    /// Keep sampling past end tokens to exactly max_new_tokens (benchmarks of long responses).
    pub ignore_eos: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 256, samples_per_prompt: 1, ignore_eos: false }
    }
}

/// DPCA and PPO settings (paper defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpcaSpec {
    /// K: chunks with more tokens than this on either side are masked.
    pub max_chunk_tokens: usize,
    pub adv_clamp: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub dual_clip: f64,
    pub baseline: AdvantageBaseline,
    /// The teacher's distribution over the student's candidate tokens, added to DPCA (off: null).
    pub candidates: Option<CandidateSpec>,
}

impl Default for DpcaSpec {
    fn default() -> Self {
        Self { max_chunk_tokens: 6, adv_clamp: 10.0, clip_low: 0.2, clip_high: 0.28, dual_clip: 10.0, baseline: AdvantageBaseline::None, candidates: None }
    }
}

/// Settings of the baseline losses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineSpec {
    /// ALM's binarization temperature.
    pub alm_temperature: f64,
    /// GOLD's JSD interpolation on matched tokens (TRL's `beta`).
    pub gold_beta: f64,
    /// GOLD's matched / unmatched weights; both null means the adaptive matched fraction.
    pub gold_matched_weight: Option<f64>,
    pub gold_unmatched_weight: Option<f64>,
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
    /// ZeRO stage over several ranks (`training.zero` of `sft`).
    #[serde(default, skip_serializing_if = "crate::spec::is_zero")]
    pub zero: usize,
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

impl crate::spec::Schema for Opd {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        self.student.validate("student", false)?;
        self.student.not_written_by("student", &self.output_dir)?;
        self.teacher.validate("teacher", true)?;
        if self.teacher.server.is_some() {
            ensure!(
                matches!(self.loss, OpdLoss::Dpca | OpdLoss::Alm) && self.dpca.candidates.is_none(),
                "teacher.server: a served teacher gives the log-prob of each token, which loss: dpca and alm use; {} and dpca.candidates need its distributions in this process",
                serde_yaml::to_string(&self.loss).unwrap_or_default().trim()
            );
        }
        validate_optimizer(&self.optimizer)?;
        crate::spec::validate_zero(self.training.zero)?;
        if let Some(l) = &self.student.lora {
            l.validate("student.lora")?;
            ensure!(l.dropout == 0.0 || !self.training.activation_checkpointing, "student.lora.dropout: not with training.activation_checkpointing (the recomputed blocks would draw other dropout masks)");
        }
        ensure!(self.teacher.lora.is_none(), "teacher.lora: the teacher is not trained (an adapter on it is teacher.adapter)");
        ensure!(self.training.steps > 0, "training.steps must be positive");
        ensure!(self.training.prompts_per_step > 0, "training.prompts_per_step must be positive");
        ensure!(self.training.ppo_epochs > 0, "training.ppo_epochs must be positive");
        ensure!(self.training.micro_batch_size > 0, "training.micro_batch_size must be positive");
        ensure!(self.training.checkpoint_every != Some(0), "training.checkpoint_every must be positive");
        ensure!(self.training.keep_last_checkpoints != Some(0), "training.keep_last_checkpoints must be positive");
        ensure!((0.0..=1.0).contains(&self.lmbda), "lmbda must be in [0, 1]");
        ensure!(self.rollout.samples_per_prompt > 0, "rollout.samples_per_prompt must be positive");
        let s = SamplingSpec { temperature: self.rollout.temperature, top_p: self.rollout.top_p, top_k: self.rollout.top_k, max_new_tokens: self.rollout.max_new_tokens };
        validate_sampling(&s, "rollout")?;
        ensure!(self.dpca.max_chunk_tokens > 0, "dpca.max_chunk_tokens must be positive");
        ensure!(self.dpca.clip_low > 0.0 && self.dpca.clip_low < 1.0 && self.dpca.clip_high > 0.0, "dpca.clip_low must be in (0, 1) and dpca.clip_high positive");
        ensure!(self.dpca.dual_clip > 1.0, "dpca.dual_clip must be greater than 1");
        ensure!(self.baselines.alm_temperature > 0.0, "baselines.alm_temperature must be positive");
        ensure!((0.0..=1.0).contains(&self.baselines.gold_beta), "baselines.gold_beta must be in [0, 1]");
        ensure!((0.0..=1.0).contains(&self.distill.beta), "distill.beta must be in [0, 1]");
        ensure!(self.distill.temperature > 0.0, "distill.temperature must be positive");
        ensure!(self.distill.top_k != Some(0), "distill.top_k must be positive or null");
        if let Some(c) = &self.dpca.candidates {
            ensure!(self.loss == OpdLoss::Dpca, "dpca.candidates works with loss: dpca");
            ensure!(c.k >= 2, "dpca.candidates.k must be at least 2");
            ensure!(c.weight > 0.0, "dpca.candidates.weight must be positive");
            ensure!(matches!(c.divergence, OpdLoss::ForwardKl | OpdLoss::ReverseKl | OpdLoss::Jsd), "dpca.candidates.divergence must be forward_kl, reverse_kl or jsd");
            ensure!((0.0..=1.0).contains(&c.beta), "dpca.candidates.beta must be in [0, 1]");
        }
        ensure!(
            self.dpca.baseline == AdvantageBaseline::None || self.rollout.samples_per_prompt > 1,
            "dpca.baseline: group_mean needs rollout.samples_per_prompt > 1"
        );
        ensure!(
            self.baselines.gold_matched_weight.is_some() == self.baselines.gold_unmatched_weight.is_some(),
            "baselines.gold_matched_weight and gold_unmatched_weight must both be set or both be null"
        );
        validate_training_eval(self.eval.as_ref(), self.data.eval.as_ref(), false)
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

//! The skeleton every training recipe's loop shares (`sft`, `opd`): resuming the optimizer,
//! the sampler's position and the counters from a checkpoint; the gradient sync over ranks;
//! the metrics rank 0 writes; and after each step the checkpoint schedule (with the replicas
//! check over ranks) and `--stop-after`. What a step does, and when it evaluates, stays in the
//! recipe, which still reads top to bottom as nanoGPT's loop does.
use super::checkpoint::{self, TrainState};
use super::dist::{Dist, GradSync};
use super::metrics::Metrics;
use super::optim::AdamW;
use crate::data::Sampler;
use crate::models::Model;
use crate::spec::OptimizerSpec;
use anyhow::Result;
use std::path::Path;
use tch::Tensor;

/// Where a run starts: its directory, the checkpoint it resumes from, and what the optimizer,
/// the sampler and the metrics are made from.
pub struct Start<'a> {
    pub run_dir: &'a Path,
    pub resume_from: Option<&'a Path>,
    pub optimizer: &'a OptimizerSpec,
    /// The number of examples (or prompts) the sampler draws from, and how.
    pub examples: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub tensorboard: bool,
    /// ZeRO stage (`training.zero`): 1 shards the optimizer state over the ranks, 2 the
    /// gradients too.
    pub zero: usize,
}

/// A training run's state between steps.
pub struct Run<'d> {
    pub opt: AdamW<'d>,
    /// Over several ranks: the gradients' all-reduce, hooked to the parameters' accumulation.
    pub sync: Option<GradSync<'d>>,
    pub state: TrainState,
    pub sampler: Sampler,
    /// Rank 0's metrics (None on the other ranks).
    pub metrics: Option<Metrics>,
    /// Steps this process has taken, for `--stop-after`.
    steps_this_run: usize,
    /// MiB of optimizer state this rank holds, and the most any rank holds.
    state_mib: (f64, f64),
}

impl<'d> Run<'d> {
    /// AdamW over `trainable`, restored with the sampler's position and the counters when
    /// resuming; `optimizer_steps` reads from a resumed state how many optimizer steps it took.
    pub fn start(trainable: Vec<(String, Tensor)>, s: Start, dist: Option<&'d Dist>, optimizer_steps: impl Fn(&TrainState) -> i64) -> Result<Self> {
        let (world, main) = dist.map_or((1, true), |d| (d.world, d.is_main()));
        let mut opt = match dist {
            Some(d) if s.zero >= 1 && d.world > 1 => AdamW::sharded(trainable, s.optimizer, d, super::dist::bucket_mib()? * 1048576.0, s.zero)?,
            _ => AdamW::new(trainable, s.optimizer),
        };
        let sync = dist.map(|d| d.grad_sync(&opt.vars(), super::dist::bucket_mib()?, opt.owned_grads())).transpose()?;
        let mut state = TrainState { step: 0, epoch: 0, index: 0, counters: Default::default() };
        if let Some(dir) = s.resume_from {
            state = checkpoint::read_state(dir)?;
            // The state is whole in the checkpoint at any world size and ZeRO stage, and each
            // rank's share of a step is drawn from the same global batch, so a run resumes under
            // another world size with its state re-sharded (only sampled rollouts, drawn per
            // rank, then differ from the uninterrupted run's).
            let saved = state.counters.get("world_size").copied().unwrap_or(1.0) as usize;
            if saved != world && main {
                crate::info!("the checkpoint was written by {saved} process(es); resuming with {world}, its optimizer state re-sharded");
            }
            let ckpt = crate::hf::safetensors::Checkpoint::open_file(&dir.join("optimizer.safetensors"))?;
            opt.load_state(&ckpt, optimizer_steps(&state))?;
            crate::info!("resuming {} from step {}", s.run_dir.display(), state.step);
        }
        anyhow::ensure!(
            state.index <= s.examples,
            "resuming {}: the checkpoint is at example {} of an epoch, but the data now has {} examples; the dataset changed since the run started (resume with the same data, or start a new output_dir)",
            s.run_dir.display(),
            state.index,
            s.examples
        );
        let sampler = Sampler::at(s.examples, s.shuffle, s.seed, state.epoch, state.index);
        let metrics = if main { Some(Metrics::open(s.run_dir, s.tensorboard, s.resume_from.map(|_| state.step))?) } else { None };
        if world > 1 {
            state.counters.insert("world_size".into(), world as f64);
        } else {
            state.counters.remove("world_size");
        }
        let mine = opt.state_bytes() as f64 / 1048576.0;
        let state_mib = (mine, dist.map_or(Ok(mine), |d| d.max(mine, "comparing the ranks' optimizer state"))?);
        Ok(Self { opt, sync, state, sampler, metrics, steps_this_run: 0, state_mib })
    }

    /// The memory metrics: this process's peak (`memory/peak_gib`; over several ranks also the
    /// most any rank reached, `memory/peak_gib_max_rank`, which every rank must ask for at the
    /// same step), the optimizer state this rank holds (rank 0 writes them) and the most any
    /// rank holds (1/N of the whole under ZeRO), and under stage 2 this rank's shard of the
    /// summed gradients.
    pub fn memory_values(&self, device: tch::Device, dist: Option<&Dist>) -> Result<Vec<(&'static str, f64)>> {
        let mut values = vec![];
        if let Some(gib) = crate::device::peak_memory_gib(device) {
            values.push(("memory/peak_gib", gib));
            if let Some(d) = dist {
                values.push(("memory/peak_gib_max_rank", d.max(gib, "comparing the ranks' peak memory")?));
            }
        }
        values.extend([
            ("memory/optimizer_state_mib", self.state_mib.0),
            ("memory/optimizer_state_mib_max_rank", self.state_mib.1),
            ("memory/owned_gradient_mib", self.opt.owned_grad_bytes() as f64 / 1048576.0),
        ]);
        Ok(values)
    }

    /// After a step (`state.step` already counts it): the replicas check and rank 0's
    /// checkpoint (keeping the last `keep_last`) when one is due: at the `last` step and every
    /// `every` steps. Returns whether this process stops here (`--stop-after`, before the last step).
    #[allow(clippy::too_many_arguments)]
    pub fn end_step(&mut self, last: bool, every: Option<usize>, keep_last: Option<usize>, model: &Model, source_dir: &Path, run_dir: &Path, dist: Option<&Dist>, stop_after: Option<usize>) -> Result<bool> {
        self.steps_this_run += 1;
        let due = last || every.is_some_and(|n| self.state.step.is_multiple_of(n));
        if due {
            if let Some(d) = dist {
                d.check_replicas(&self.opt.vars())?;
            }
        }
        if due {
            // Under ZeRO every rank sends its shard of the state to rank 0.
            let optimizer = self.opt.state_tensors()?;
            if dist.is_none_or(|d| d.is_main()) {
                checkpoint::save(run_dir, model, source_dir, &optimizer, &self.state, keep_last)?;
            }
        }
        Ok(stop_after == Some(self.steps_this_run) && !last)
    }
}

/// How a run is started from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Pipelines: redo finished stages.
    pub fresh: bool,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Stop after this many optimizer steps of this invocation, as an interruption would
    /// (checkpoints written so far stay; `--resume` continues).
    pub stop_after: Option<usize>,
}

/// LoRA dropout draws from torch's generator: seeded from the run's seed and the step, so a
/// resumed run draws the masks the uninterrupted one drew.
pub fn reseed_dropout(model: &crate::models::Model, seed: u64, step: usize) {
    if model.adapters.as_ref().is_some_and(|a| a.spec.dropout > 0.0) {
        tch::manual_seed((seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64 & i64::MAX);
    }
}

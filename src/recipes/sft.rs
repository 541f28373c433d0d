//! The `sft` recipe: supervised fine-tuning with cross-entropy on response tokens. With a
//! dataset of teacher-written answers (the `teacher_responses` recipe) it is the paper's main
//! baseline, SFT on teacher responses.
//!
//! One optimizer step: `grad_accum` micro-batches drawn by the seeded sampler; the loss of
//! each is its summed token NLL divided by the response-token count of the whole window (so
//! accumulation equals one big batch, TRL #4719); global-norm clipping; AdamW; metrics;
//! checkpoint and evaluation when due. With several processes (`train::dist`) each rank
//! takes every `world`-th example of each micro-batch and the gradients are summed over the
//! ranks before clipping, so every rank takes the step one process would take on the whole
//! batch; rank 0 evaluates, logs and checkpoints.
use crate::train::run::RunOptions;
use crate::data;
use crate::recipes::eval::{evaluate_run, gap_plan, load_eval_teacher};
use crate::recipes::side::{end_of_turn, load_model, Side};
use crate::train::checkpoint;
use crate::train::dist::Dist;
use crate::train::metrics::{progress, Metrics};
use crate::train::run::{Run, Start};
use crate::train::schedule::lr_at;
use crate::train::Batch;
use anyhow::{Context, Result};
use std::time::Instant;
use tch::{Kind, Tensor};
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

impl crate::spec::Schema for Sft {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        self.model.validate("model", false)?;
        self.model.not_written_by("model", &self.output_dir)?;
        if let Some(t) = self.eval.as_ref().and_then(|e| e.teacher.as_ref()) {
            t.validate("eval.teacher", true)?;
        }
        validate_optimizer(&self.optimizer)?;
        validate_training(&self.training)?;
        if let Some(l) = &self.model.lora {
            l.validate("model.lora")?;
            ensure!(l.dropout == 0.0 || !self.training.activation_checkpointing, "model.lora.dropout: not with training.activation_checkpointing (the recomputed blocks would draw other dropout masks)");
        }
        for s in &self.training.stop_at {
            ensure!(s.at_least.is_some() != s.at_most.is_some(), "training.stop_at: {} needs exactly one of at_least and at_most", s.metric);
            ensure!(s.at_least.or(s.at_most).is_some_and(f64::is_finite), "training.stop_at: the target of {} must be a finite number", s.metric);
            ensure!(self.eval.as_ref().is_some_and(|e| e.every.is_some()), "training.stop_at needs eval.every (it is checked at each evaluation)");
        }
        ensure!(self.data.max_length >= 2, "data.max_length must be at least 2");
        ensure!(self.schedule.min_lr_ratio >= 0.0 && self.schedule.min_lr_ratio <= 1.0, "schedule.min_lr_ratio must be in [0, 1]");
        validate_training_eval(self.eval.as_ref(), self.data.eval.as_ref(), true)
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

pub fn run(r: &Sft, opts: &RunOptions, dist: Option<&Dist>) -> Result<()> {
    let (rank, world, main) = dist.map_or((0, 1, true), |d| (d.rank, d.world, d.is_main()));
    let run_dir = &r.output_dir;
    let device = crate::recipes::side::device_of(&r.model, &r.device)?;
    tch::manual_seed(r.seed as i64);

    // Model: the latest checkpoint when resuming, else the recipe's model.
    let resume_from = if opts.resume { checkpoint::latest(run_dir)? } else { None };
    let mut spec = r.model.clone();
    if let Some(dir) = &resume_from {
        spec = checkpoint::resume_spec(&spec, dir);
    }
    let (model, tok, chat) = load_model(&spec, device)?;
    let source_dir = model.dir.clone();
    // A Side: the model with its text tools, as `eval.teacher` samples and scores it.
    let eot = if r.eval.as_ref().is_some_and(|e| e.teacher.is_some()) { end_of_turn(&tok, &chat).with_context(|| format!("model {}", spec.path))? } else { tok.pad_id };
    let student = Side { model, tok, chat, eot, same_vocab: false };
    let (model, tok, chat) = (&student.model, &student.tok, &student.chat);
    let teacher = load_eval_teacher(r.eval.as_ref(), &r.device, &student)?;
    let plan = r.eval.as_ref().map(gap_plan);

    // Data: encode once, count truncations, drop examples left without response tokens.
    let examples = data::read(&r.data.train, r.data.max_examples)?;
    let mut encoded = Vec::with_capacity(examples.len());
    let (mut truncated, mut empty) = (0usize, 0usize);
    for (i, ex) in examples.iter().enumerate() {
        let e = data::encode(tok, chat, ex, r.data.max_length).with_context(|| format!("{} example {}", r.data.train, i + 1))?;
        truncated += usize::from(e.truncated);
        if e.n_targets() == 0 {
            empty += 1;
        } else {
            encoded.push(e);
        }
    }
    if truncated > 0 {
        crate::info!("warning: {truncated} of {} examples were longer than data.max_length = {} and were truncated", examples.len(), r.data.max_length);
    }
    if empty > 0 {
        crate::info!("warning: {empty} examples have no response tokens (after truncation) and are skipped");
    }
    // An empty answer still trains its end-of-turn token: the model learns to say nothing.
    let blank = examples.iter().filter(|e| e.response().is_some_and(|r| r.trim().is_empty())).count();
    if blank > 0 {
        crate::info!("warning: {blank} of {} examples in {} have an empty response; they train the model to answer with nothing", examples.len(), r.data.train);
    }
    anyhow::ensure!(!encoded.is_empty(), "{}: no example has response tokens", r.data.train);
    let eval_examples = match (&r.eval, &r.data.eval) {
        (Some(_), Some(path)) => data::read(path, None)?,
        _ => vec![],
    };

    let start = Start { run_dir, resume_from: resume_from.as_deref(), optimizer: &r.optimizer, examples: encoded.len(), shuffle: r.data.shuffle, seed: r.seed, tensorboard: r.logging.tensorboard, zero: r.training.zero };
    let mut run = Run::start(model.trainable(), start, dist, |s| s.step as i64)?;
    let eval_due = |step: usize| r.eval.as_ref().and_then(|e| e.every).is_some_and(|n| step.is_multiple_of(n));
    // Evaluates (every rank its share; rank 0 logs) and says whether `training.stop_at` is
    // reached (rank 0 decides for every rank).
    let evaluate_now = |metrics: &mut Option<Metrics>, step: usize| -> Result<bool> {
        let Some(spec) = &r.eval else { return Ok(false) };
        let judge = teacher.as_ref().zip(plan.as_ref());
        let (values, _) = evaluate_run(&student, judge, &eval_examples, spec, r.seed, r.logging.progress, run_dir, step, dist)?;
        let Some(metrics) = metrics else {
            return Ok(dist.map(|d| d.broadcast(&[0.0], "waiting for rank 0's verdict")).transpose()?.is_some_and(|v| v[0] > 0.5));
        };
        let logged: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        metrics.log(step, &logged)?;
        let reached = !r.training.stop_at.is_empty() && r.training.stop_at.iter().try_fold(true, |all, s| Ok::<_, anyhow::Error>(all & s.reached(&values)?))?;
        if let Some(d) = dist {
            d.broadcast(&[f64::from(u8::from(reached))], "sending the evaluation's verdict")?;
        }
        Ok(reached)
    };
    // A run that stopped at its target is finished; resuming it trains no further.
    let mut stopped = run.state.counters.contains_key("stopped_at_target");
    if run.state.step == 0 && evaluate_now(&mut run.metrics, 0)? {
        stopped = true;
        run.state.counters.insert("stopped_at_target".into(), 0.0);
        let optimizer = run.opt.state_tensors()?;
        if main {
            checkpoint::save(run_dir, model, &source_dir, &optimizer, &run.state, r.training.keep_last_checkpoints)?;
        }
    }

    let total = r.training.steps;
    let bar = progress(total as u64, "sft", r.logging.progress && main);
    bar.set_position(run.state.step as u64);
    let mut elapsed = run.state.counters.get("time_s").copied().unwrap_or(0.0);
    let mut tokens_seen = run.state.counters.get("tokens").copied().unwrap_or(0.0);
    while run.state.step < total && !stopped {
        let started = Instant::now();
        let lr = lr_at(run.state.step, total, r.optimizer.lr, &r.schedule);
        crate::train::run::reseed_dropout(model, r.seed, run.state.step);
        let window: Vec<Vec<usize>> = (0..r.training.grad_accum).map(|_| run.sampler.next_batch(r.training.batch_size)).collect();
        let n_targets: usize = window.iter().flatten().map(|&i| encoded[i].n_targets()).sum();
        let (mut loss_sum, mut padding, mut laid_out) = (0.0, 0.0, 0.0);
        run.opt.zero_grad();
        // This rank's share of each micro-batch (all of it in one process).
        let shares: Vec<Vec<_>> = window.iter().map(|micro| micro.iter().skip(rank).step_by(world).map(|&i| &encoded[i]).collect()).filter(|refs: &Vec<_>| !refs.is_empty()).collect();
        for (k, refs) in shares.iter().enumerate() {
            if k + 1 == shares.len() {
                if let Some(sync) = &run.sync {
                    sync.arm();
                }
            }
            let mut b = if r.data.packing { Batch::packed(refs, r.data.max_length, tok.pad_id, device) } else { Batch::new(refs, tok.pad_id, device) };
            let ctx = b.ctx.take();
            (padding, laid_out) = (padding + b.pad_tokens as f64, laid_out + b.ids.numel() as f64);
            let loss_of = |lp: &Tensor, t0: i64| {
                let mask = b.target_mask.narrow(1, t0, lp.size()[1]);
                Ok(-(lp * mask).sum(Kind::Float) / n_targets as f64)
            };
            let recompute = r.training.activation_checkpointing;
            let loss = crate::nn::lora::training(|| match ctx {
                Some(ctx) => model.backward_tokens_in(&b.ids, ctx, b.first_target, recompute, loss_of),
                None => model.backward_tokens(&b.ids, b.first_target, recompute, loss_of),
            })?;
            loss_sum += loss * n_targets as f64;
        }
        if let (Some(d), Some(sync)) = (dist, &run.sync) {
            sync.finish()?;
            let sums = d.sum(&[loss_sum, padding, laid_out], "summing the loss")?;
            (loss_sum, padding, laid_out) = (sums[0], sums[1], sums[2]);
        }
        let loss = loss_sum / n_targets as f64;
        if !loss.is_finite() {
            return Err(checkpoint::non_finite_loss(run_dir, loss, run.state.step + 1));
        }
        let grad_norm = run.opt.clip_grad_norm(r.optimizer.grad_clip)?;
        run.opt.step(lr)?;
        run.state.step += 1;
        (run.state.epoch, run.state.index) = (run.sampler.epoch, run.sampler.index);
        let secs = started.elapsed().as_secs_f64();
        elapsed += secs;
        tokens_seen += n_targets as f64;
        let examples_seen = run.state.counters.get("examples").copied().unwrap_or(0.0) + window.iter().map(Vec::len).sum::<usize>() as f64;
        run.state.counters.insert("time_s".into(), elapsed);
        run.state.counters.insert("tokens".into(), tokens_seen);
        run.state.counters.insert("examples".into(), examples_seen);
        let mut values = vec![
            ("train/loss", loss),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("train/tokens", n_targets as f64),
            ("train/tokens_per_s", n_targets as f64 / secs),
            ("train/padding", padding / laid_out.max(1.0)),
            ("train/epoch", run.state.epoch as f64 + run.state.index as f64 / encoded.len() as f64),
            ("budget/prompts", examples_seen),
            ("budget/optimizer_steps", run.state.step as f64),
            ("time_s", elapsed),
        ];
        values.extend(run.memory_values(device, dist)?);
        if let Some(sync) = &run.sync {
            values.extend(sync.values());
        }
        if let Some(m) = &mut run.metrics {
            m.log(run.state.step, &values)?;
        }
        bar.set_message(format!("loss {loss:.4} {:.0} tok/s", n_targets as f64 / secs));
        bar.inc(1);
        if (run.state.step == total || eval_due(run.state.step)) && evaluate_now(&mut run.metrics, run.state.step)? {
            stopped = true;
            run.state.counters.insert("stopped_at_target".into(), run.state.step as f64);
            let names: Vec<&str> = r.training.stop_at.iter().map(|s| s.metric.as_str()).collect();
            crate::info!("{}: {} reached the targets at step {}; training stops", run_dir.display(), names.join(" and "), run.state.step);
        }
        let last = run.state.step == total || stopped;
        if run.end_step(last, r.training.checkpoint_every, r.training.keep_last_checkpoints, model, &source_dir, run_dir, dist, opts.stop_after)? {
            bar.abandon_with_message("stopped (--stop-after)");
            return Ok(());
        }
    }
    bar.finish_with_message("done");
    Ok(())
}

//! The `opd` recipe: on-policy distillation across tokenizers (arXiv 2606.09456; DESIGN.md §1).
//!
//! One step: draw prompts → the student renders them with its chat template and samples
//! (no grad) → the teacher view: the same conversation in the teacher's template, the
//! student's response text, and the teacher's end-of-turn token when the student ended its
//! turn → one no-grad teacher forward gives log q of every teacher response token → DPCA
//! aligns the two response token streams (the student's first end-of-turn token is its own
//! chunk, scored by the teacher's end-of-turn) → the loss (DPCA credit assignment with the
//! PPO-clip surrogate, or a baseline: ULD, GOLD hybrid, ALM) → backward → clip → AdamW →
//! diagnostics, checkpoints, evaluation.
//!
//! With identical tokenizers every chunk is 1:1 and the advantage is `log q_i − log p_i`:
//! same-tokenizer OPD.
//!
//! With several processes (`train::dist`) each rank samples and scores every `world`-th prompt
//! of a step, the normaliser is the count over all ranks, and gradients are summed over the
//! ranks (during the backward: `GradSync`) before clipping; rank 0 evaluates, logs and
//! checkpoints. The loss, clip fraction, budget counters, `opd/*` diagnostics and the candidate
//! term's `cand/*` statistics in the metrics are the whole step's.
pub mod candidates;
pub mod config;
pub mod diagnostics;
pub mod rollout;
pub mod teacher;
mod signal;

pub use diagnostics::{competence_warning, diagnose, dump_rollouts, held_out_gap, Diagnostics, DriftWatch};
pub use rollout::{make_rollouts, old_logprobs, rows, score_teacher, Plan, Rollout, TeacherKeeps};
pub use teacher::{load_teacher, teacher_encode, Engine, Teacher};
// The sides as the tests and benches name them from here.
pub use crate::recipes::side::{load as load_side, Side};
pub use signal::{assign_advantages, backward_batch, micro_loss, response_mask, Normaliser, DistInputs, DpcaInputs};

use crate::train::run::RunOptions;
use crate::data::{self, Rng};
use crate::loss::VocabMatch;
use crate::models::Model;
use crate::recipes::opd::config::{CandidatePositions, Opd, OpdLoss};
use crate::spec::Scorer;
use crate::recipes::eval::evaluate_run;
use crate::train::checkpoint::{self, TrainState};
use crate::train::dist::Dist;
use crate::train::metrics::{progress, Metrics};
use crate::train::run::{Run, Start};
use crate::train::schedule::lr_at;
use anyhow::{Context, Result};
use std::time::Instant;

/// Rollouts written in readable form at each evaluation (`rollouts/step-NNNNNN.md`).
const DUMPED_ROLLOUTS: usize = 3;

pub fn run(r: &Opd, opts: &RunOptions, dist: Option<&Dist>) -> Result<()> {
    let (rank, world, main) = dist.map_or((0, 1, true), |d| (d.rank, d.world, d.is_main()));
    let run_dir = &r.output_dir;
    tch::manual_seed(r.seed as i64);
    let resume_from = if opts.resume { checkpoint::latest(run_dir)? } else { None };
    let mut student_spec = r.student.clone();
    if let Some(dir) = &resume_from {
        student_spec = checkpoint::resume_spec(&student_spec, dir);
    }
    let student = crate::recipes::side::load(&student_spec, &r.device)?;
    let mut teacher = load_teacher(&r.teacher, &r.device)?;
    teacher.same_vocab = student.tok.inner.get_vocab(true) == teacher.tok.inner.get_vocab(true);
    if teacher.same_vocab {
        crate::info!("opd: student and teacher share a vocabulary: scoring the student's own tokens (same-tokenizer OPD)");
    }
    let divergence = r.loss.divergence_beta(&r.distill);
    anyhow::ensure!(
        divergence.is_none() || teacher.same_vocab,
        "loss: {} compares full next-token distributions and needs student and teacher to share a vocabulary ({} and {} do not); across tokenizers use loss: dpca",
        serde_yaml::to_string(&r.loss).unwrap_or_default().trim(),
        r.student.name(),
        r.teacher.name()
    );
    let plan = Plan::of(r);
    let source_dir = student.model.dir.clone();
    let matches = match r.loss {
        OpdLoss::GoldHybrid => {
            let (sv, tv) = (student.tok.inner.get_vocab(true), teacher.tok.inner.get_vocab(true));
            Some(VocabMatch::new(&sv, &tv, logits_width(&student.model), logits_width(teacher.model.local()?)).to_device(student.device()))
        }
        _ => None,
    };

    // Prompts, rendered once for the student; too-long prompts are skipped with a count.
    let all = data::read(&r.data.train, r.data.max_examples)?;
    let n_all = all.len();
    let mut examples = Vec::with_capacity(all.len());
    let mut prompts = Vec::with_capacity(all.len());
    for ex in all {
        let ids = data::prompt_ids(&student.tok, &student.chat, ex.prompt())?;
        if ids.len() <= r.data.max_prompt_length {
            prompts.push(ids);
            examples.push(ex);
        }
    }
    if examples.len() < n_all {
        crate::info!("warning: {} of {n_all} prompts are longer than data.max_prompt_length = {} and are skipped", n_all - examples.len(), r.data.max_prompt_length);
    }
    anyhow::ensure!(!examples.is_empty(), "{}: no prompt fits data.max_prompt_length = {}", r.data.train, r.data.max_prompt_length);
    let eval_examples = match (&r.eval, &r.data.eval) {
        (Some(_), Some(path)) => data::read(path, None)?,
        _ => vec![],
    };

    let start = Start { run_dir, resume_from: resume_from.as_deref(), optimizer: &r.optimizer, examples: examples.len(), shuffle: r.data.shuffle, seed: r.seed, tensorboard: r.logging.tensorboard, zero: r.training.zero };
    let mut run = Run::start(student.model.trainable(), start, dist, |s| s.counters.get("optimizer_steps").copied().unwrap_or(s.step as f64) as i64)?;
    // Each evaluation: the scorers and their generations, the held-out gap of the student's
    // samples under this run's rollout settings, and a readable dump of a few of them.
    let evaluate_now = |metrics: &mut Option<Metrics>, step: usize| -> Result<crate::train::metrics::Values> {
        let Some(spec) = &r.eval else { return Ok(vec![]) };
        let (values, mut rollouts) = evaluate_run(&student, Some((&teacher, &plan)), &eval_examples, spec, r.seed, r.logging.progress, run_dir, step, dist)?;
        let Some(metrics) = metrics else { return Ok(values) };
        assign_advantages(r, &mut rollouts);
        let dir = run_dir.join("rollouts");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("step-{step:06}.md"));
        let text = format!("# Held-out rollouts at step {step}\n\n{}", dump_rollouts(&student, &teacher, &rollouts, DUMPED_ROLLOUTS, r.dpca.max_chunk_tokens));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let v: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        metrics.log(step, &v)?;
        Ok(values)
    };
    if run.state.step == 0 {
        // The competence check: before any on-policy step, is the student close enough to the
        // teacher's support for on-policy training to help?
        let values = evaluate_now(&mut run.metrics, 0)?;
        let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        if let (Some(gap), true) = (get("eval/logq_minus_logp"), r.lmbda > 0.0) {
            let accuracy = r.eval.as_ref().filter(|e| e.scorers.iter().any(|s| matches!(s, Scorer::ExactMatch))).and_then(|_| get("eval/exact_match"));
            if let Some(w) = competence_warning(gap, accuracy, get("eval/teacher_logprob").unwrap_or(f64::NAN), get("eval/teacher_logprob_reference")) {
                crate::info!("{w}");
            }
        }
    }

    let total = r.training.steps;
    let bar = progress(total as u64, "opd", r.logging.progress && main);
    bar.set_position(run.state.step as u64);
    let counter = |state: &TrainState, k: &str| state.counters.get(k).copied().unwrap_or(0.0);
    let mut drift = DriftWatch::default();
    let mut path_cache = candidates::PathCache::default();
    while run.state.step < total {
        let started = Instant::now();
        let lr = lr_at(run.state.step, total, r.optimizer.lr, &r.schedule);
        let picks = run.sampler.next_batch(r.training.prompts_per_step);
        let mut coin = Rng(r.seed ^ (run.state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let on_policy = r.lmbda >= 1.0 || (coin.next_u64() as f64 / u64::MAX as f64) < r.lmbda;
        let seed = r.seed.wrapping_add(1 + run.state.step as u64);

        // Rollout, teacher view, teacher scoring, alignment, old log-probs.
        // This rank's share of the prompts (all of them in one process).
        let mine: Vec<usize> = picks.iter().skip(rank).step_by(world).copied().collect();
        let mut rollouts = make_rollouts(&plan, &student, &teacher, &examples, &prompts, &mine, on_policy, seed).map_err(|e| {
            // A diverged student cannot be sampled: the documented non-finite stop.
            if e.downcast_ref::<crate::generate::NonFiniteLogits>().is_some() { checkpoint::non_finite_loss(run_dir, f64::NAN, run.state.step + 1) } else { e }
        })?;
        let t_rollout = started.elapsed().as_secs_f64();
        let keeps = match r.loss {
            OpdLoss::Uld | OpdLoss::GoldHybrid | OpdLoss::ForwardKl | OpdLoss::ReverseKl | OpdLoss::Jsd => TeacherKeeps::Hidden,
            OpdLoss::Dpca | OpdLoss::Alm => TeacherKeeps::LogProbs,
        };
        // With candidates at every chunk, one tree pass scores the responses and the
        // candidates; at `disagree` positions the plain scoring comes first to find them.
        let cands = r.dpca.candidates.as_ref();
        let merged = cands.is_some_and(|c| c.positions == CandidatePositions::All);
        if !merged {
            score_teacher(&teacher, &mut rollouts, r.training.micro_batch_size, keeps)?;
        }
        let t_teacher = started.elapsed().as_secs_f64();
        old_logprobs(&student, &mut rollouts, r.training.micro_batch_size, cands.map_or(0, |c| c.k))?;
        let t_old = started.elapsed().as_secs_f64();
        let cand_stats = match cands {
            Some(spec) => Some(candidates::score_candidates(spec, &student, &teacher, &mut rollouts, r.training.micro_batch_size, r.dpca.max_chunk_tokens, merged, &mut path_cache)?),
            None => None,
        };
        assign_advantages(r, &mut rollouts);
        let t_cand = started.elapsed().as_secs_f64();
        let diag = diagnose(&rollouts);

        // Update: ppo_epochs optimizer steps over the whole rollout batch.
        crate::train::run::reseed_dropout(&student.model, r.seed, run.state.step);
        let norm = match dist {
            Some(d) => Normaliser::over_ranks(r.loss, &rollouts, d)?,
            None => Normaliser::of(r.loss, &rollouts),
        };
        let (mut loss_value, mut clipped, mut grad_norm) = (0.0, 0.0, 0.0);
        for epoch in 0..r.training.ppo_epochs {
            if epoch > 0 && r.loss == OpdLoss::GoldHybrid {
                // GOLD's merged rows use the current student's token probabilities (no PPO ratio
                // reads `old_logp` here), so each later epoch refreshes them.
                rollouts.iter_mut().for_each(|x| x.old_logp.clear());
                old_logprobs(&student, &mut rollouts, r.training.micro_batch_size, 0)?;
            }
            run.opt.zero_grad();
            let (mut epoch_loss, mut c) = crate::nn::lora::training(|| backward_batch(r, &student, &teacher, matches.as_ref(), &rollouts, norm, run.sync.as_ref()))?;
            if let (Some(d), Some(sync)) = (dist, &run.sync) {
                sync.finish()?;
                let sums = d.sum(&[epoch_loss, c], "summing the loss")?;
                (epoch_loss, c) = (sums[0], sums[1]);
            }
            clipped += c;
            loss_value = epoch_loss;
            if !loss_value.is_finite() {
                return Err(checkpoint::non_finite_loss(run_dir, loss_value, run.state.step + 1));
            }
            grad_norm = run.opt.clip_grad_norm(r.optimizer.grad_clip)?;
            run.opt.step(lr)?;
        }
        run.state.step += 1;
        (run.state.epoch, run.state.index) = (run.sampler.epoch, run.sampler.index);
        let secs = started.elapsed().as_secs_f64();
        let add = |state: &mut TrainState, k: &str, v: f64| {
            let prev = state.counters.get(k).copied().unwrap_or(0.0);
            state.counters.insert(k.into(), prev + v);
        };
        add(&mut run.state, "time_s", secs);
        add(&mut run.state, "prompts", picks.len() as f64);
        // The diagnostics of the whole step, not of this rank's share.
        let (diag, cand_stats) = match dist {
            Some(d) => (diag.over_ranks(d)?, cand_stats.map(|c| c.over_ranks(d)).transpose()?),
            None => (diag, cand_stats),
        };
        // Teacher tokens run this step: the scoring pass, and the candidate pass (which is the
        // scoring pass too when merged).
        let teacher_tokens = (if merged { 0 } else { diag.teacher_tokens } + cand_stats.as_ref().map_or(0, |c| c.teacher_tokens)) as f64;
        add(&mut run.state, "teacher_forward_tokens", teacher_tokens);
        add(&mut run.state, "optimizer_steps", r.training.ppo_epochs as f64);
        let mut values = vec![
            ("train/loss", loss_value),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("opd/on_policy", f64::from(u8::from(on_policy))),
            ("opd/clip_fraction", clipped / (norm.loss * r.training.ppo_epochs as f64)),
            ("budget/prompts", counter(&run.state, "prompts")),
            ("budget/teacher_forward_tokens", counter(&run.state, "teacher_forward_tokens")),
            ("budget/teacher_generated_tokens", 0.0),
            ("budget/optimizer_steps", counter(&run.state, "optimizer_steps")),
            ("time_s", counter(&run.state, "time_s")),
            // Where the step's time went: sampling + teacher view + alignment, the teacher's
            // forward, the student's old log-probs, and the update.
            ("time/rollout_s", t_rollout),
            ("time/teacher_s", t_teacher - t_rollout),
            ("time/old_logprobs_s", t_old - t_teacher),
            ("time/candidates_s", t_cand - t_old),
            ("time/update_s", secs - t_cand),
        ];
        if let Some(c) = &cand_stats {
            values.extend(c.values());
        }
        values.extend(diag.values());
        if let Some(w) = drift.push(run.state.step, diag.non_canonical_rate()) {
            crate::info!("{w}");
        }
        values.extend(run.memory_values(student.model.device(), dist)?);
        if let Some(sync) = &run.sync {
            values.extend(sync.values());
        }
        if let Some(m) = &mut run.metrics {
            m.log(run.state.step, &values)?;
        }
        bar.set_message(format!("loss {loss_value:.4} gap {:.3} masked {:.0}%", diag.gap_per_token(), 100.0 * diag.masked as f64 / diag.tokens.max(1) as f64));
        bar.inc(1);
        let last = run.state.step == total;
        // Evaluate before the checkpoint, so a checkpoint's step always has its evaluation.
        if last || r.eval.as_ref().and_then(|e| e.every).is_some_and(|n| run.state.step.is_multiple_of(n)) {
            evaluate_now(&mut run.metrics, run.state.step)?;
        }
        if run.end_step(last, r.training.checkpoint_every, r.training.keep_last_checkpoints, &student.model, &source_dir, run_dir, dist, opts.stop_after)? {
            bar.abandon_with_message("stopped (--stop-after)");
            return Ok(());
        }
    }
    bar.finish_with_message("done");
    Ok(())
}

/// The vocabulary size of a model's output layer (config.json's `vocab_size`).
fn logits_width(m: &Model) -> i64 {
    m.config["vocab_size"].as_i64().unwrap_or(0)
}

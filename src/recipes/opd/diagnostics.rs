//! What a user needs to see of on-policy distillation: per-step diagnostics of scored rollouts
//! (DESIGN.md §1 step 7, plus the student's entropy, the sign and concentration of the
//! advantages, and non-canonical token splits), the held-out teacher-minus-student gap that
//! any recipe can measure with `eval.teacher`, the competence check that warns before
//! on-policy training from a student too far from the teacher's support, and a readable dump
//! of rollouts with their alignment and credit.
use super::rollout::{make_rollouts, old_logprobs, score_teacher, Plan, Rollout, TeacherKeeps};
use super::teacher::Teacher;
use crate::recipes::side::Side;
use crate::align::{show_pieces, Masked};
use crate::data::Example;
use crate::train::dist::Dist;
use anyhow::Result;
use std::fmt::Write;

/// Per-step diagnostics of a set of scored rollouts.
#[derive(Default)]
pub struct Diagnostics {
    pub tokens: usize,
    pub masked: usize,
    one_to_one: usize,
    multi: usize,
    gap: f64,
    /// Teacher log-likelihood of the aligned response text, and its teacher token count.
    teacher_logq: f64,
    teacher_aligned: usize,
    finished: usize,
    pub teacher_tokens: usize,
    /// Rollouts whose alignment got stuck (texts diverged) or whose teacher view was truncated.
    stuck: usize,
    truncated: usize,
    /// Summed student entropy over unmasked response positions.
    entropy: f64,
    /// Unmasked tokens with a positive / negative advantage, and every unmasked |A|.
    positive: usize,
    negative: usize,
    abs_adv: Vec<f32>,
    /// Rollouts whose sampled ids are not the student tokenizer's own encoding of their text.
    non_canonical: usize,
    rollouts: usize,
}

pub fn diagnose(rollouts: &[Rollout]) -> Diagnostics {
    let mut d = Diagnostics { rollouts: rollouts.len(), ..Default::default() };
    for r in rollouts {
        d.tokens += r.response.len();
        d.finished += usize::from(r.finished);
        d.non_canonical += usize::from(!r.canonical);
        d.teacher_tokens += if r.truncated { 0 } else { r.teacher_ids.len() };
        if r.truncated {
            d.masked += r.response.len();
            d.truncated += 1;
            continue;
        }
        d.stuck += usize::from(r.chunks.iter().any(|c| c.masked == Masked::Stuck));
        for c in &r.chunks {
            if c.is_masked() {
                d.masked += c.student.len();
                continue;
            }
            if c.student.len() == 1 && c.teacher.len() == 1 {
                d.one_to_one += 1;
            } else {
                d.multi += 1;
            }
            let lt: f64 = r.logq[c.teacher.clone()].iter().map(|&x| x as f64).sum();
            let ls: f64 = r.old_logp[c.student.clone()].iter().map(|&x| x as f64).sum();
            d.gap += lt - ls;
            d.teacher_logq += lt;
            d.teacher_aligned += c.teacher.len();
            for i in c.student.clone() {
                d.entropy += r.entropy.get(i).copied().unwrap_or(0.0) as f64;
                let a = r.adv.get(i).copied().unwrap_or(0.0);
                d.positive += usize::from(a > 0.0);
                d.negative += usize::from(a < 0.0);
                d.abs_adv.push(a.abs());
            }
        }
    }
    d
}

impl Diagnostics {
    /// The diagnostics of every rank's rollouts together: the counts and sums added up, every
    /// rank's |A| gathered (rank 0 reports the top-1% mass; the others keep their own).
    pub fn over_ranks(mut self, dist: &Dist) -> Result<Self> {
        let counts = [&mut self.tokens, &mut self.masked, &mut self.one_to_one, &mut self.multi, &mut self.teacher_aligned, &mut self.finished, &mut self.teacher_tokens, &mut self.stuck, &mut self.truncated, &mut self.positive, &mut self.negative, &mut self.non_canonical, &mut self.rollouts];
        let sums = [&mut self.gap, &mut self.teacher_logq, &mut self.entropy];
        let local: Vec<f64> = counts.iter().map(|c| **c as f64).chain(sums.iter().map(|s| **s)).collect();
        let total = dist.sum(&local, "summing the OPD diagnostics")?;
        for (c, t) in counts.into_iter().zip(&total) {
            *c = *t as usize;
        }
        for (s, t) in sums.into_iter().zip(&total[local.len() - 3..]) {
            *s = *t;
        }
        let bytes: Vec<u8> = self.abs_adv.iter().flat_map(|a| a.to_le_bytes()).collect();
        if let Some(all) = dist.gather("advantages", &bytes)? {
            self.abs_adv = all.concat().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        }
        Ok(self)
    }

    fn unmasked(&self) -> usize {
        self.tokens - self.masked
    }

    /// Mean (log q − log p) per aligned student token: minus a sampled reverse-KL estimate.
    pub fn gap_per_token(&self) -> f64 {
        self.gap / self.unmasked().max(1) as f64
    }

    /// Mean teacher log-prob per aligned teacher token of the student's responses.
    pub fn teacher_logprob(&self) -> f64 {
        self.teacher_logq / self.teacher_aligned.max(1) as f64
    }

    /// The share of all |A| carried by the largest 1% of tokens (at least one): near 1 when a
    /// few tokens dominate the update, near 0.01 when credit is spread evenly.
    fn top_percent_mass(&self) -> f64 {
        let mut a = self.abs_adv.clone();
        let total: f64 = a.iter().map(|&x| x as f64).sum();
        if total == 0.0 {
            return 0.0;
        }
        a.sort_by(|x, y| y.total_cmp(x));
        let n = a.len().div_ceil(100);
        a[..n].iter().map(|&x| x as f64).sum::<f64>() / total
    }

    /// The share of rollouts whose sampled ids are not the student's encoding of their text.
    pub fn non_canonical_rate(&self) -> f64 {
        self.non_canonical as f64 / self.rollouts.max(1) as f64
    }

    /// The per-step metrics, under `opd/`.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let per_rollout = |x: usize| x as f64 / self.rollouts.max(1) as f64;
        let unmasked = self.unmasked().max(1) as f64;
        vec![
            ("opd/masked_fraction", self.masked as f64 / self.tokens.max(1) as f64),
            ("opd/chunks_one_to_one", self.one_to_one as f64),
            ("opd/chunks_multi_token", self.multi as f64),
            ("opd/logq_minus_logp", self.gap_per_token()),
            ("opd/teacher_logprob", self.teacher_logprob()),
            ("opd/response_length", per_rollout(self.tokens)),
            ("opd/eot_rate", per_rollout(self.finished)),
            ("opd/stuck_rate", per_rollout(self.stuck)),
            ("opd/truncated_rate", per_rollout(self.truncated)),
            ("opd/non_canonical_rate", self.non_canonical_rate()),
            ("opd/teacher_tokens", self.teacher_tokens as f64),
            ("opd/entropy", self.entropy / unmasked),
            ("opd/positive_advantage_fraction", self.positive as f64 / unmasked),
            ("opd/negative_advantage_fraction", self.negative as f64 / unmasked),
            ("opd/top1pct_advantage_mass", self.top_percent_mass()),
        ]
    }
}

/// The held-out quantities OPD optimises, for any recipe: the student samples the first `n`
/// prompts once each (the plan's sampling settings), the teacher scores them, and, where the data has
/// responses, the teacher also scores the dataset's responses in the same view. Returns
/// `eval/logq_minus_logp` (mean log q − log p per aligned student token), `eval/teacher_logprob`
/// (per aligned teacher token of the student's samples) and `eval/teacher_logprob_reference`
/// (the same for the dataset's responses), and the scored samples.
pub fn held_out_gap(plan: &Plan, student: &Side, teacher: &Teacher, examples: &[Example], prompts: &[Vec<i64>], n: usize, seed: u64) -> Result<(crate::train::metrics::Values, Vec<Rollout>)> {
    let picks: Vec<usize> = (0..n.min(examples.len())).collect();
    // One sample per prompt and a fixed batching (sampling draws depend on the batch), whatever
    // the training uses, so that every recipe scores the same samples of the same model.
    let plan = &Plan { rollout: crate::recipes::opd::config::RolloutSpec { samples_per_prompt: 1, ..plan.rollout.clone() }, micro: GAP_BATCH / 4, ..plan.clone() };
    let mut rollouts = make_rollouts(plan, student, teacher, examples, prompts, &picks, true, seed)?;
    score_teacher(teacher, &mut rollouts, plan.micro, TeacherKeeps::LogProbs)?;
    old_logprobs(student, &mut rollouts, plan.micro, 0)?;
    let d = diagnose(&rollouts);
    let mut values = vec![("eval/logq_minus_logp".to_string(), d.gap_per_token()), ("eval/teacher_logprob".to_string(), d.teacher_logprob())];
    let with_answers: Vec<usize> = picks.iter().copied().filter(|&i| examples[i].response().is_some()).collect();
    if !with_answers.is_empty() {
        let mut reference = make_rollouts(plan, student, teacher, examples, prompts, &with_answers, false, seed)?;
        score_teacher(teacher, &mut reference, plan.micro, TeacherKeeps::LogProbs)?;
        old_logprobs(student, &mut reference, plan.micro, 0)?;
        values.push(("eval/teacher_logprob_reference".to_string(), diagnose(&reference).teacher_logprob()));
    }
    Ok((values, rollouts))
}

/// Prompts sampled together for the held-out gap.
const GAP_BATCH: usize = 64;

/// Below this held-out `log q − log p` per token, on-policy training is likely to hurt. From
/// the controls in shared/research/opd-recipes-and-controls.md (same teacher and task):
/// students that OPD improved started with a gap of −0.20 to −0.25 nats per token (71–78%
/// greedy accuracy); students it made worse started at −1.28 to −2.27 (11–20%). The threshold
/// sits between the two groups. Greedy accuracy alone does not separate them: in regime B
/// (RESULTS.md, prediction 9) a student at 40% greedy with a gap of −0.08 to −0.10 gained
/// 1.9-8.0 points of sampled accuracy from DPCA over SFT (three seeds), so accuracy is reported,
/// not tested.
pub const MIN_GAP: f64 = -1.0;

/// A warning when the student looks too far from the teacher's support for on-policy
/// training to help: the held-out gap below `MIN_GAP`, with the greedy accuracy and the
/// teacher's log-prob of the student's samples (against the dataset's responses) beside it.
pub fn competence_warning(gap: f64, accuracy: Option<f64>, teacher_on_samples: f64, teacher_on_reference: Option<f64>) -> Option<String> {
    if gap >= MIN_GAP {
        return None;
    }
    let mut why = format!("held-out log q − log p is {gap:.2} nats per token (warning below {MIN_GAP})");
    if let Some(a) = accuracy {
        let _ = write!(why, ", greedy accuracy {:.0}%", 100.0 * a);
    }
    let _ = write!(why, ", the teacher's log-prob per token of the student's samples {teacher_on_samples:.2}");
    if let Some(t) = teacher_on_reference {
        let _ = write!(why, " against {t:.2} on the dataset's responses");
    }
    Some(format!(
        "warning: the student may be too far from the teacher's support for on-policy training to help ({why}). \
         In controls, on-policy losses lowered such students while SFT on teacher answers lifted them; \
         the usual cure is SFT first (start OPD from that checkpoint) or lmbda < 1"
    ))
}

/// Steps averaged at each end of the run by the non-canonical drift warning.
const DRIFT_WINDOW: usize = 10;
/// The drift warning fires once the last `DRIFT_WINDOW` steps' mean rate reaches this and is
/// `DRIFT_RATIO` times the first steps' (at least this over `DRIFT_RATIO`).
const DRIFT_RATE: f64 = 0.05;
const DRIFT_RATIO: f64 = 3.0;

/// Watches `opd/non_canonical_rate`, the share of rollouts whose sampled tokens are not the
/// student tokenizer's own encoding of their text, for the drift that came with the
/// cross-tokenizer losses in regime B (RESULTS.md, predictions 8-10): a teacher that scores
/// text cannot tell two splits of one text apart, and a student that packs several digits into
/// one token drifted onto splits of numbers it could not continue from (1-2% of rollouts over
/// the first 10 steps, 12-17% over the last 10), while a student with one digit per token
/// stayed below 1% and beat SFT. Warns once per run (a resumed run starts watching anew).
#[derive(Default)]
pub struct DriftWatch {
    rates: Vec<f64>,
    warned: bool,
}

impl DriftWatch {
    /// Records one step's rate; returns the warning the first time the drift shows.
    pub fn push(&mut self, step: usize, rate: f64) -> Option<String> {
        self.rates.push(rate);
        let n = self.rates.len();
        if self.warned || n < 2 * DRIFT_WINDOW {
            return None;
        }
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let (first, last) = (mean(&self.rates[..DRIFT_WINDOW]), mean(&self.rates[n - DRIFT_WINDOW..]));
        if last < DRIFT_RATE || last < DRIFT_RATIO * first {
            return None;
        }
        self.warned = true;
        Some(format!(
            "warning: step {step}: {:.1}% of the last {DRIFT_WINDOW} steps' rollouts are not the student tokenizer's own encoding of their text \
             ({:.1}% over the first {DRIFT_WINDOW}; opd/non_canonical_rate): the student is moving onto token splits that the teacher, scoring text, cannot tell apart. \
             In regime B (RESULTS.md) this drift came with numbers written over two tokens (8 + 105 = 11110) and a loss to SFT for a student that packs digits, \
             while one whose digits are one token each did not drift and beat SFT; read the generations before trusting this run",
            100.0 * last,
            100.0 * first
        ))
    }
}

/// A readable dump of the first `n` rollouts: the student's text, then each chunk's student
/// and teacher pieces, L_S and L_T, the advantage of each student token, and whether it is
/// masked. This is how a user debugs a teacher/student pair.
pub fn dump_rollouts<M>(student: &Side, teacher: &Side<M>, rollouts: &[Rollout], n: usize, max_chunk_tokens: usize) -> String {
    let (sp, tp) = (student.tok.pieces(), teacher.tok.pieces());
    let piece = |table: &crate::hf::tokenizer::Pieces, id: i64| table.bytes.get(id as usize).cloned().unwrap_or_default();
    let mut out = String::new();
    for (k, r) in rollouts.iter().take(n).enumerate() {
        let text: Vec<u8> = r.response.iter().flat_map(|&i| piece(sp, i)).collect();
        let _ = writeln!(out, "## rollout {k} (prompt {}): {} student tokens, {} teacher tokens{}{}", r.prompt, r.response.len(), r.teacher_ids.len() - r.teacher_start, if r.finished { ", ended its turn" } else { ", cut at max_new_tokens" }, if r.truncated { ", TEACHER VIEW TRUNCATED: all masked" } else { "" });
        let _ = writeln!(out, "{}\n", String::from_utf8_lossy(&text));
        let _ = writeln!(out, "{:>4}  {:<30}  {:<30}  {:>8}  {:>8}  {:<28}  status", "#", "student pieces", "teacher pieces", "L_S", "L_T", "A per student token");
        let t_ids = &r.teacher_ids[r.teacher_start..];
        for (ci, c) in r.chunks.iter().enumerate() {
            let s: Vec<Vec<u8>> = r.response[c.student.clone()].iter().map(|&i| piece(sp, i)).collect();
            let t: Vec<Vec<u8>> = t_ids.get(c.teacher.clone()).unwrap_or(&[]).iter().map(|&i| piece(tp, i)).collect();
            let ls: f32 = r.old_logp.get(c.student.clone()).map_or(f32::NAN, |v| v.iter().sum());
            let lt: f32 = r.logq.get(c.teacher.clone()).map_or(f32::NAN, |v| v.iter().sum());
            let adv: Vec<String> = c.student.clone().map(|i| format!("{:+.2}", r.adv.get(i).copied().unwrap_or(0.0))).collect();
            let _ = writeln!(out, "{ci:>4}  {:<30}  {:<30}  {ls:>8.3}  {lt:>8.3}  {:<28}  {}", show_pieces(&s), show_pieces(&t), adv.join(" "), c.label(max_chunk_tokens));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn competence_warns_only_when_far() {
        assert!(competence_warning(-0.25, Some(0.78), -0.4, Some(-0.1)).is_none());
        let w = competence_warning(-1.28, Some(0.20), -1.9, Some(-0.1)).unwrap();
        assert!(w.contains("-1.28") && w.contains("20%") && w.contains("-0.10"), "{w}");
        // Regime B's split-digit student: 40% greedy, gap -0.08; DPCA beat SFT from it.
        assert!(competence_warning(-0.08, Some(0.40), -0.13, Some(-0.03)).is_none(), "weak by accuracy alone");
        assert!(competence_warning(-2.0, None, -2.5, None).is_some(), "far by the gap alone");
    }

    #[test]
    fn drift_warns_once_when_the_rate_rises() {
        // Regime B's packed student (seed 0 of the matched runs): 1-2% early, 17% late.
        let mut w = DriftWatch::default();
        let rates: Vec<f64> = (0..160).map(|i| if i < 100 { 0.015 } else { 0.17 }).collect();
        let fired: Vec<usize> = rates.iter().enumerate().filter_map(|(i, &r)| w.push(i + 1, r).map(|_| i + 1)).collect();
        // The last 10 steps' mean reaches 5% with 3 of them at 17%: (7 * 0.015 + 3 * 0.17) / 10.
        assert_eq!(fired, vec![103]);
        // The split-digit student: under 1% throughout; a high rate from the start is no drift.
        for flat in [0.006, 0.2] {
            let mut w = DriftWatch::default();
            assert!((0..160).all(|i| w.push(i + 1, flat).is_none()), "{flat}");
        }
        let mut w = DriftWatch::default();
        let msg = (0..40).find_map(|i| w.push(i + 1, if i < 20 { 0.0 } else { 0.3 })).unwrap();
        assert!(msg.starts_with("warning: step 22: 6.0% of the last 10") && msg.contains("(0.0% over the first 10;") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn top_percent_mass() {
        let mut d = Diagnostics { abs_adv: vec![1.0; 99], ..Default::default() };
        d.abs_adv.push(99.0);
        assert!((d.top_percent_mass() - 0.5).abs() < 1e-9);
        d.abs_adv = vec![1.0; 200];
        assert!((d.top_percent_mass() - 0.01).abs() < 1e-9);
    }
}

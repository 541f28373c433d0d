//! OPD training signals on scored rollouts: DPCA's advantages (with the optional group-mean
//! baseline) and its per-token inputs to the PPO surrogate; the full-distribution divergences
//! of same-vocabulary distillation (GKD's forward KL, reverse KL and generalized JSD, whole
//! vocabulary or teacher top-k with a tail); the baselines (ULD and GOLD per chunk of
//! positions, ALM on full logits); the masks and the normaliser of one optimizer step.
use super::candidates::CandInputs;
use super::rollout::{rows, scatter, Rollout};
use super::teacher::Teacher;
use crate::recipes::side::Side;
use crate::models::Model;
use crate::align::{Chunk, Masked};
use crate::loss::{self, PpoClip, VocabMatch};
use crate::recipes::opd::config::{AdvantageBaseline, DistillSpec, Opd, OpdLoss};
use crate::train::dist::{Dist, GradSync};
use crate::train::token_logprobs;
use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// Fills every rollout's DPCA advantages (DESIGN.md §1 step 5, clamped), then, with
/// `dpca.baseline: group_mean`, centres them within the samples of each prompt.
pub fn assign_advantages(r: &Opd, rollouts: &mut [Rollout]) {
    let clamp = r.dpca.adv_clamp as f32;
    for x in rollouts.iter_mut() {
        x.adv = if x.truncated { vec![0.0; x.response.len()] } else { loss::chunk_advantages(&x.chunks, &x.old_logp, &x.logq, clamp) };
    }
    if r.dpca.baseline == AdvantageBaseline::GroupMean {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, x) in rollouts.iter().enumerate() {
            match groups.iter_mut().find(|g| rollouts[g[0]].prompt == x.prompt) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mask: Vec<Vec<f32>> = rollouts.iter().map(response_mask).collect();
        let mut adv: Vec<Vec<f32>> = rollouts.iter_mut().map(|x| std::mem::take(&mut x.adv)).collect();
        loss::subtract_group_mean(&mut adv, &mask, &groups);
        for (x, a) in rollouts.iter_mut().zip(adv) {
            x.adv = a;
        }
    }
}

/// Back-propagates the loss of one optimizer step over `rollouts` (summed over micro-batches
/// and divided by `norm.loss`; with candidates, plus their divergence divided by `norm.scored`
/// and weighted) into the student's gradients. Returns the
/// loss and the number of tokens clipping changed. Full-distribution losses and DPCA run the
/// head in chunks of positions (`Model::backward_logits`, `Model::backward_tokens`); the
/// baselines take the full logits. Over several ranks `sync` is armed before the last
/// micro-batch, so its gradients are all-reduced as the backward produces them.
pub fn backward_batch(r: &Opd, student: &Side, teacher: &Teacher, matches: Option<&VocabMatch>, rollouts: &[Rollout], norm: Normaliser, sync: Option<&GradSync>) -> Result<(f64, f64)> {
    let (mut total, mut clipped) = (0.0, 0.0);
    let recompute = r.training.activation_checkpointing;
    let micro = r.training.micro_batch_size;
    for (k, chunk) in rollouts.chunks(micro).enumerate() {
        if k + 1 == rollouts.len().div_ceil(micro) {
            // The step's last backward on this rank: its gradients go to the all-reduce as they come.
            if let Some(s) = sync {
                s.arm();
            }
        }
        let refs: Vec<&Rollout> = chunk.iter().collect();
        let (ids, starts) = rows(&refs, student.tok.pad_id, student.device());
        let width = ids.size()[1] - 1;
        // No loss on the prompts: the head starts at the earliest response.
        let from = starts.iter().copied().min().unwrap_or(0) as i64;
        let (l, c) = if let Some(spec) = &r.dpca.candidates {
            // DPCA and the candidate term from the same chunks of full logits.
            let dpca = DpcaInputs::new(r, &refs, &starts, width, ids.device());
            let cands = CandInputs::new(spec, &refs, &starts, width, ids.device());
            let mut c = Tensor::zeros([], (Kind::Float, ids.device()));
            let l = student.model.backward_logits(&ids, from, recompute, |logits, t0| {
                let targets = ids.narrow(1, t0 + 1, logits.size()[1]).unsqueeze(-1);
                let lp = logits.log_softmax(-1, Kind::Float).gather(2, &targets, false).squeeze_dim(-1);
                let (l, n) = dpca.loss(&lp, t0);
                c += n;
                Ok(l / norm.loss + cands.loss(logits, t0) * (spec.weight / norm.scored))
            })?;
            (l, c.double_value(&[]))
        } else if matches!(r.loss, OpdLoss::Uld | OpdLoss::GoldHybrid) {
            let mut inputs = SortedInputs::new(r, teacher, matches, &refs, &starts)?;
            (student.model.backward_logits(&ids, from, recompute, |logits, t0| Ok(inputs.loss(logits, t0)? / norm.loss))?, 0.0)
        } else if r.loss.divergence_beta(&r.distill).is_some() {
            let inputs = DistInputs::new(r, teacher, &refs, &starts, width, ids.device())?;
            (student.model.backward_logits(&ids, from, recompute, |logits, t0| Ok(inputs.loss(logits, t0) / norm.loss))?, 0.0)
        } else if r.loss == OpdLoss::Dpca {
            let inputs = DpcaInputs::new(r, &refs, &starts, width, ids.device());
            let mut c = Tensor::zeros([], (Kind::Float, ids.device()));
            let l = student.model.backward_tokens(&ids, from, recompute, |lp, t0| {
                let (l, n) = inputs.loss(lp, t0);
                c += n;
                Ok(l / norm.loss)
            })?;
            (l, c.double_value(&[]))
        } else {
            student.model.backward(&ids, recompute, |logits| Ok((micro_loss(r, &refs, matches, logits, &ids, &starts)? / norm.loss, 0.0)))?
        };
        total += l;
        clipped += c;
    }
    Ok((total, clipped))
}

/// DPCA's per-token inputs of one micro-batch in the training layout (B, L − 1): advantages,
/// the mask of unmasked response tokens, and the old log-probs.
pub struct DpcaInputs {
    adv: Tensor,
    mask: Tensor,
    old: Tensor,
    clip: PpoClip,
}

impl DpcaInputs {
    pub fn new(r: &Opd, batch: &[&Rollout], starts: &[usize], width: i64, device: Device) -> Self {
        let adv: Vec<&[f32]> = batch.iter().map(|x| x.adv.as_slice()).collect();
        let mask: Vec<Vec<f32>> = batch.iter().map(|x| response_mask(x)).collect();
        let old: Vec<&[f32]> = batch.iter().map(|x| x.old_logp.as_slice()).collect();
        Self {
            adv: scatter(&adv, starts, width, device),
            mask: scatter(&mask.iter().map(Vec::as_slice).collect::<Vec<_>>(), starts, width, device),
            old: scatter(&old, starts, width, device),
            clip: PpoClip { low: r.dpca.clip_low, high: r.dpca.clip_high, dual: r.dpca.dual_clip },
        }
    }

    /// The summed PPO surrogate of positions `t0..t0 + n` given their new log-probs (B, n),
    /// and how many of them clipping changed (on the device, so chunks do not wait on a read).
    pub fn loss(&self, new_logp: &Tensor, t0: i64) -> (Tensor, Tensor) {
        let n = new_logp.size()[1];
        let [adv, mask, old] = [&self.adv, &self.mask, &self.old].map(|t| t.narrow(1, t0, n));
        let (per_token, clipped) = loss::ppo_surrogate(new_logp, &old, &adv, self.clip);
        let clipped = (clipped * &mask).sum(Kind::Float);
        ((per_token * mask).sum(Kind::Float), clipped)
    }
}

/// The inputs of a full-distribution loss for one micro-batch: the teacher's last hidden
/// states at the student's response positions in the training layout (B, L − 1, H), from which
/// each chunk of positions gets the teacher's logits, and the mask of unmasked response tokens.
/// Only for a shared vocabulary, where teacher response position j is student position j.
pub struct DistInputs<'a> {
    teacher: &'a Model,
    hidden: Tensor,
    mask: Tensor,
    beta: f64,
    spec: &'a DistillSpec,
}

impl<'a> DistInputs<'a> {
    pub fn new(r: &'a Opd, teacher: &'a Teacher, batch: &[&Rollout], starts: &[usize], width: i64, device: Device) -> Result<Self> {
        let beta = r.loss.divergence_beta(&r.distill).context("not a full-distribution loss")?;
        let h = batch.iter().find_map(|x| x.teacher_hidden.as_ref()).map_or(1, |t| t.size()[1]);
        let hidden = Tensor::zeros([batch.len() as i64, width, h], (Kind::Float, device));
        for (b, x) in batch.iter().enumerate() {
            if let (Some(t), false) = (&x.teacher_hidden, x.truncated) {
                anyhow::ensure!(t.size()[0] as usize == x.response.len(), "teacher rows ({}) differ from student response tokens ({}): the vocabularies are not shared", t.size()[0], x.response.len());
                hidden.get(b as i64).narrow(0, starts[b] as i64, t.size()[0]).copy_(&t.to_device(device).to_kind(Kind::Float));
            }
        }
        let mask: Vec<Vec<f32>> = batch.iter().map(|x| response_mask(x)).collect();
        let mask = scatter(&mask.iter().map(Vec::as_slice).collect::<Vec<_>>(), starts, width, device);
        Ok(Self { teacher: teacher.model.local()?, hidden, mask, beta, spec: &r.distill })
    }

    /// The summed divergence of positions `t0..t0 + n` given the student's logits (B, n, V).
    pub fn loss(&self, logits: &Tensor, t0: i64) -> Tensor {
        let n = logits.size()[1];
        let mask = self.mask.narrow(1, t0, n);
        let teacher = tch::no_grad(|| {
            let h = self.hidden.narrow(1, t0, n).to_device(self.teacher.device()).to_kind(self.teacher.kind);
            self.teacher.head(&h).to_device(logits.device())
        });
        // Logits widths may differ by padding rows past the shared tokenizer's vocabulary.
        let v = logits.size()[2].min(teacher.size()[2]);
        let d = loss::distill_divergence(&logits.narrow(2, 0, v), &teacher.narrow(2, 0, v), self.beta, self.spec.temperature, self.spec.top_k);
        (d * mask).sum(Kind::Float)
    }
}

/// ULD's and GOLD's inputs of one micro-batch for the chunked head. Both losses are a mean over
/// rows of one rollout's student and teacher distributions (ULD: its first k response
/// positions; GOLD: one merged row per aligned group), so a chunk of positions adds its rows'
/// share. A GOLD row is the group's first position's distribution times the probabilities of
/// the group's later tokens (`loss::merge_observed`), which may fall in later chunks: the
/// product comes from the step's current log-probs (`old_logp`), and each later token gets the
/// gradient `∂L/∂c · c` of its log-prob (computed when the group's first position is) through
/// a zero-valued term `w · (log p − sg(log p))`. The teacher's rows are made per chunk from its
/// kept last hidden states (its later tokens' probabilities from `logq`), so no
/// vocabulary-sized teacher tensor outlives a chunk. `micro_loss` is the same loss on full
/// logits and the teacher's kept distributions.
pub struct SortedInputs<'a> {
    seqs: Vec<SortedRows>,
    teacher: &'a Model,
    matches: Option<&'a VocabMatch>,
    gold: Option<(f64, Option<(f64, f64)>)>,
}

/// One rollout's rows: student positions (training layout) and the merged product of each
/// row's later tokens, its later tokens' positions and ids, the teacher's hidden state and
/// product of each row, the divisor.
struct SortedRows {
    b: i64,
    pos: Vec<i64>,
    factor: Vec<f32>,
    later: Vec<Vec<(i64, i64)>>,
    teacher_hidden: Tensor,
    teacher_factor: Vec<f32>,
    rows: f64,
    /// `∂L/∂c · c` of each row, once its first position's chunk has run.
    weight: Vec<f64>,
}

impl<'a> SortedInputs<'a> {
    pub fn new(r: &Opd, teacher: &'a Teacher, matches: Option<&'a VocabMatch>, batch: &[&Rollout], starts: &[usize]) -> Result<Self> {
        let gold = (r.loss == OpdLoss::GoldHybrid).then(|| (r.baselines.gold_beta, r.baselines.gold_matched_weight.zip(r.baselines.gold_unmatched_weight)));
        anyhow::ensure!(gold.is_none() || matches.is_some(), "GOLD needs the vocabulary match");
        let mut seqs = Vec::new();
        for (b, x) in batch.iter().enumerate().filter(|(_, x)| !x.truncated) {
            let Some(th) = &x.teacher_hidden else { continue };
            let Some((n, m)) = sorted_extent(x, th) else { continue };
            let at = |k: usize| (starts[b] + k) as i64;
            let row = if gold.is_none() {
                let k = n.min(m);
                SortedRows { b: b as i64, pos: (0..k).map(at).collect(), factor: vec![1.0; k], later: vec![vec![]; k], teacher_hidden: th.narrow(0, 0, k as i64), teacher_factor: vec![1.0; k], rows: k as f64, weight: vec![0.0; k] }
            } else {
                let groups = gold_groups(x, n, m);
                if groups.is_empty() {
                    continue;
                }
                anyhow::ensure!(x.old_logp.len() == x.response.len(), "GOLD's merged rows need the student's log-probs of the response");
                // merge_observed's floor of 1e-8 on each later probability, on both sides.
                let product = |logp: &[f32], r: std::ops::Range<usize>| r.skip(1).map(|k| logp[k].exp().max(1e-8)).product::<f32>();
                let first = Tensor::from_slice(&groups.iter().map(|c| c.teacher.start as i64).collect::<Vec<_>>());
                let g = groups.len();
                SortedRows {
                    b: b as i64,
                    pos: groups.iter().map(|c| at(c.student.start)).collect(),
                    factor: groups.iter().map(|c| product(&x.old_logp, c.student.clone())).collect(),
                    later: groups.iter().map(|c| c.student.clone().skip(1).map(|k| (at(k), x.response[k])).collect()).collect(),
                    teacher_hidden: th.index_select(0, &first.to_device(th.device())),
                    teacher_factor: groups.iter().map(|c| product(&x.logq, c.teacher.clone())).collect(),
                    rows: g as f64,
                    weight: vec![0.0; g],
                }
            };
            seqs.push(row);
        }
        Ok(Self { seqs, teacher: teacher.model.local()?, matches, gold })
    }

    /// The teacher's rows `here` of `seq`: its distributions, times each row's product.
    fn teacher_rows(&self, seq: &SortedRows, here: &[usize], device: Device) -> Tensor {
        tch::no_grad(|| {
            let idx = Tensor::from_slice(&here.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(seq.teacher_hidden.device());
            let h = seq.teacher_hidden.index_select(0, &idx).to_device(self.teacher.device()).to_kind(self.teacher.kind);
            let p = self.teacher.head(&h).softmax(-1, Kind::Float).to_device(device);
            let c = Tensor::from_slice(&here.iter().map(|&i| seq.teacher_factor[i]).collect::<Vec<_>>()).to_device(device);
            p * c.unsqueeze(1)
        })
    }

    /// The loss of the rows whose (first) position is among `t0..t0 + n`, given the student's
    /// logits (B, n, V), plus the zero-valued terms that give later tokens their gradient.
    // `total = total + x`: tch's `+=` is the in-place add_, which autograd records differently.
    #[allow(clippy::assign_op_pattern)]
    pub fn loss(&mut self, logits: &Tensor, t0: i64) -> Result<Tensor> {
        let n = logits.size()[1];
        let device = logits.device();
        let mut total = Tensor::zeros([], (Kind::Float, device));
        for k in 0..self.seqs.len() {
            let seq = &self.seqs[k];
            let here: Vec<usize> = (0..seq.pos.len()).filter(|&i| (t0..t0 + n).contains(&seq.pos[i])).collect();
            let tp = (!here.is_empty()).then(|| self.teacher_rows(seq, &here, device));
            let seq = &mut self.seqs[k];
            if let Some(tp) = tp {
                let idx = Tensor::from_slice(&here.iter().map(|&i| seq.pos[i] - t0).collect::<Vec<_>>()).to_device(device);
                let sp = logits.get(seq.b).index_select(0, &idx).softmax(-1, Kind::Float);
                let share = here.len() as f64 / seq.rows;
                let l = match (self.gold, self.matches) {
                    (Some((beta, w)), Some(m)) => {
                        let c = Tensor::from_slice(&here.iter().map(|&i| seq.factor[i]).collect::<Vec<_>>()).to_device(device).set_requires_grad(true);
                        let l = loss::gold_hybrid(&(sp * c.unsqueeze(1)), &tp, m, beta, w) * share;
                        if here.iter().any(|&i| !seq.later[i].is_empty()) {
                            let g = Tensor::run_backward(&[&l], &[&c], true, false).remove(0);
                            let wc = Vec::<f32>::try_from((g * &c).to_device(Device::Cpu))?;
                            for (&i, w) in here.iter().zip(wc) {
                                seq.weight[i] = w as f64;
                            }
                        }
                        l
                    }
                    _ => loss::sorted_l1(&sp, &tp) * share,
                };
                total = total + l;
            }
            // The later tokens in this chunk, of rows whose first position came here or before.
            let (mut at, mut ids, mut w) = (vec![], vec![], vec![]);
            for (i, later) in seq.later.iter().enumerate() {
                for &(p, id) in later.iter().filter(|(p, _)| (t0..t0 + n).contains(p)) {
                    at.push(p - t0);
                    ids.push(id);
                    w.push(seq.weight[i] as f32);
                }
            }
            if !at.is_empty() {
                let rows = logits.get(seq.b).index_select(0, &Tensor::from_slice(&at).to_device(device));
                let lp = rows.log_softmax(-1, Kind::Float).gather(1, &Tensor::from_slice(&ids).to_device(device).unsqueeze(1), false).squeeze_dim(1);
                total = total + ((&lp - lp.detach()) * Tensor::from_slice(&w).to_device(device)).sum(Kind::Float);
            }
        }
        Ok(total)
    }
}

/// The loss of one micro-batch of rollouts on full logits, summed (the caller divides by the
/// batch's normaliser): how ALM trains, and ULD's and GOLD's loss as written (their training
/// runs it per chunk of positions, `SortedInputs`; the tests compare the two). DPCA is
/// trained through `Model::backward_tokens` and `DpcaInputs`.
// `total = total + x`, not `+=`: tch's `+=` is the in-place `add_`, which autograd records
// differently (and refuses on a tensor it saved); the sum must be a new node.
#[allow(clippy::assign_op_pattern)]
pub fn micro_loss(r: &Opd, batch: &[&Rollout], matches: Option<&VocabMatch>, logits: &Tensor, ids: &Tensor, starts: &[usize]) -> Result<Tensor> {
    let device = ids.device();
    match r.loss {
        OpdLoss::Dpca | OpdLoss::ForwardKl | OpdLoss::ReverseKl | OpdLoss::Jsd => bail!("{:?} is trained through the chunked head, not on full logits", r.loss),
        OpdLoss::Alm => {
            let new_logp = token_logprobs(logits, ids);
            let mut total = Tensor::zeros([], (Kind::Float, device));
            for (b, x) in batch.iter().enumerate().filter(|(_, x)| !x.truncated) {
                let live: Vec<&Chunk> = x.chunks.iter().filter(|c| !c.is_masked()).collect();
                if live.is_empty() {
                    continue;
                }
                let mut chunk_of = vec![0i64; x.response.len()];
                let mut used = vec![0f32; x.response.len()];
                for (ci, c) in live.iter().enumerate() {
                    c.student.clone().for_each(|i| {
                        chunk_of[i] = ci as i64;
                        used[i] = 1.0;
                    });
                }
                let row = new_logp.get(b as i64).narrow(0, starts[b] as i64, x.response.len() as i64);
                let row = row * Tensor::from_slice(&used).to_device(device);
                let ls = Tensor::zeros([live.len() as i64], (Kind::Float, device)).index_add(0, &Tensor::from_slice(&chunk_of).to_device(device), &row);
                let lt: Vec<f32> = live.iter().map(|c| x.logq[c.teacher.clone()].iter().sum()).collect();
                let d = loss::alm_binary_ce(&ls, &Tensor::from_slice(&lt).to_device(device), r.baselines.alm_temperature);
                total = total + d.sum(Kind::Float);
            }
            Ok(total)
        }
        OpdLoss::Uld | OpdLoss::GoldHybrid => {
            let mut total = Tensor::zeros([], (Kind::Float, device));
            for (b, x) in batch.iter().enumerate().filter(|(_, x)| !x.truncated) {
                let Some(tp) = &x.teacher_probs else { continue };
                let Some((n, m)) = sorted_extent(x, tp) else { continue };
                let sp = logits.get(b as i64).narrow(0, starts[b] as i64, n as i64).softmax(-1, Kind::Float);
                let tp = tp.narrow(0, 0, m as i64).to_device(device);
                let l = if r.loss == OpdLoss::Uld {
                    let k = n.min(m) as i64;
                    loss::sorted_l1(&sp.narrow(0, 0, k), &tp.narrow(0, 0, k))
                } else {
                    let groups = gold_groups(x, n, m);
                    if groups.is_empty() {
                        continue;
                    }
                    let sg: Vec<_> = groups.iter().map(|c| c.student.clone()).collect();
                    let tg: Vec<_> = groups.iter().map(|c| c.teacher.clone()).collect();
                    let t_ids = &x.teacher_ids[x.teacher_start..];
                    let sm = loss::merge_observed(&sp, &sg, &x.response);
                    let tm = loss::merge_observed(&tp, &tg, t_ids);
                    let w = r.baselines.gold_matched_weight.zip(r.baselines.gold_unmatched_weight);
                    loss::gold_hybrid(&sm, &tm, matches.context("GOLD needs the vocabulary match")?, r.baselines.gold_beta, w)
                };
                total = total + l;
            }
            Ok(total)
        }
    }
}

/// ULD's and GOLD's response rows of a rollout, student and teacher (`teacher` holds one row
/// per teacher response token), without the end-of-turn token on both sides as TRL's
/// uld_skip_*_eos defaults do; None when either side is empty.
fn sorted_extent(x: &Rollout, teacher: &Tensor) -> Option<(usize, usize)> {
    let n = x.response.len() - usize::from(x.finished);
    let m = teacher.size()[0] as usize - usize::from(x.finished);
    (n > 0 && m > 0).then_some((n, m))
}

/// GOLD's groups within the first `n` student and `m` teacher rows: every aligned chunk that is
/// not stuck (too long for DPCA's credit is not too long for GOLD).
fn gold_groups(x: &Rollout, n: usize, m: usize) -> Vec<&Chunk> {
    x.chunks.iter().filter(|c| c.masked != Masked::Stuck && c.student.end <= n && c.teacher.end <= m).collect()
}

/// 1 for response tokens in unmasked chunks, 0 elsewhere.
pub fn response_mask(x: &Rollout) -> Vec<f32> {
    let mut m = vec![0f32; x.response.len()];
    if !x.truncated {
        for c in x.chunks.iter().filter(|c| !c.is_masked()) {
            c.student.clone().for_each(|i| m[i] = 1.0);
        }
    }
    m
}

/// What one optimizer step divides its summed losses by, each at least 1.
#[derive(Debug, Clone, Copy)]
pub struct Normaliser {
    /// Unmasked tokens (DPCA's token mean, and the full-distribution losses' mean over
    /// positions), unmasked chunks (ALM), or scored sequences (ULD, GOLD).
    pub loss: f64,
    /// Positions whose candidates were scored (the candidate term's mean).
    pub scored: f64,
}

impl Normaliser {
    /// The step's counts over these rollouts.
    pub fn of(loss: OpdLoss, rollouts: &[Rollout]) -> Self {
        Self::floored(Self::counts(loss, rollouts))
    }

    /// The step's counts over every rank's rollouts (each rank holds its own prompts').
    pub fn over_ranks(loss: OpdLoss, rollouts: &[Rollout], dist: &Dist) -> Result<Self> {
        let t = dist.sum(&Self::counts(loss, rollouts), "summing the normaliser")?;
        Ok(Self::floored([t[0], t[1]]))
    }

    fn counts(loss: OpdLoss, rollouts: &[Rollout]) -> [f64; 2] {
        let live = rollouts.iter().filter(|x| !x.truncated);
        let n: usize = match loss {
            OpdLoss::Dpca | OpdLoss::ForwardKl | OpdLoss::ReverseKl | OpdLoss::Jsd => live.map(|x| response_mask(x).iter().filter(|&&v| v > 0.0).count()).sum(),
            OpdLoss::Alm => live.map(|x| x.chunks.iter().filter(|c| !c.is_masked()).count()).sum(),
            OpdLoss::Uld | OpdLoss::GoldHybrid => live.count(),
        };
        [n as f64, rollouts.iter().map(|x| x.scored.len()).sum::<usize>() as f64]
    }

    fn floored([loss, scored]: [f64; 2]) -> Self {
        Self { loss: loss.max(1.0), scored: scored.max(1.0) }
    }
}

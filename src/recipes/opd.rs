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
use super::RunOptions;
use crate::align::{dpca, Chunk, Masked};
use crate::data::{self, Example, Rng, Sampler};
use crate::generate::{generate, Sampling};
use crate::hf::chat::{ChatTemplate, Message};
use crate::hf::tokenizer::Tokenizer;
use crate::loss::{self, PpoClip, VocabMatch};
use crate::models::Model;
use crate::recipe::{Opd, OpdLoss};
use crate::recipes::eval::evaluate;
use crate::train::checkpoint::{self, TrainState};
use crate::train::metrics::{progress, Metrics};
use crate::train::optim::AdamW;
use crate::train::schedule::lr_at;
use crate::train::token_logprobs;
use anyhow::{bail, Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A model with the text tools of its family.
pub struct Side {
    pub model: Model,
    pub tok: Tokenizer,
    pub chat: ChatTemplate,
    /// The token that ends an assistant turn in this model's template.
    pub eot: i64,
    /// The teacher side only: its vocabulary is the student's, so the student's response ids
    /// are scored as they are (same-tokenizer OPD) instead of being re-tokenized from text.
    pub same_vocab: bool,
}

impl Side {
    fn device(&self) -> Device {
        self.model.device()
    }
}

/// The token that closes an assistant turn: the first token after the content when the
/// template renders an assistant message, if it is special or an end id; else the first end id.
pub fn end_of_turn(tok: &Tokenizer, chat: &ChatTemplate) -> Result<i64> {
    let fallback = *tok.eos_ids.first().context("the model declares no eos_token_id (config.json or generation_config.json)")?;
    if !chat.has_template() {
        return Ok(fallback);
    }
    let marker = "TOKBRIDGE_ANSWER";
    let msgs = [Message::new("user", "Hi"), Message::new("assistant", marker)];
    let full = chat.render(&msgs, false)?;
    let Some(pos) = full.rfind(marker) else { return Ok(fallback) };
    let suffix = &full[pos + marker.len()..];
    let ids = tok.encode(suffix, false)?;
    Ok(match ids.first() {
        Some(&id) if tok.eos_ids.contains(&id) || tok.pieces().special.get(id as usize) == Some(&true) => id,
        _ => fallback,
    })
}

/// One sampled response and what the losses need about it.
pub struct Rollout {
    pub student_prompt: Vec<i64>,
    /// Sampled ids, ending with the student's end-of-turn token when `finished`.
    pub response: Vec<i64>,
    pub finished: bool,
    pub teacher_ids: Vec<i64>,
    /// Index of the first teacher response token in `teacher_ids`.
    pub teacher_start: usize,
    pub truncated: bool,
    /// Over student response positions and teacher response positions.
    pub chunks: Vec<Chunk>,
    /// log q of every teacher response token.
    pub logq: Vec<f32>,
    /// Teacher next-token distributions at the response positions, for ULD and GOLD.
    pub teacher_probs: Option<Tensor>,
    /// Old (sampling-time policy) log p of every response token.
    pub old_logp: Vec<f32>,
}

/// The teacher sees its own rendering of the conversation, the student's response bytes and,
/// if the student ended its turn, its own end-of-turn token. Returns the ids, the index of the
/// first response token, the byte piece of each response token, and whether a token straddles
/// the prompt/response boundary (its chunk is then masked).
fn teacher_sequence(teacher: &Side, messages: &[Message], body_ids: &[i64], body: &[u8], finished: bool) -> Result<(Vec<i64>, usize, Vec<Vec<u8>>, bool)> {
    let table = teacher.tok.pieces();
    if teacher.same_vocab {
        let mut ids = data::prompt_ids(&teacher.tok, &teacher.chat, messages)?;
        let start = ids.len();
        ids.extend_from_slice(body_ids);
        if finished {
            ids.push(teacher.eot);
        }
        let pieces = ids[start..].iter().map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
        return Ok((ids, start, pieces, false));
    }
    let prompt = teacher.chat.render(messages, true)?;
    let mut text = prompt.clone();
    text.push_str(&String::from_utf8_lossy(body));
    let (mut ids, offsets) = if teacher.chat.has_template() {
        teacher.tok.encode_with_offsets(&text)?
    } else {
        // The plain template relies on the tokenizer's own special tokens (BOS).
        let enc = teacher.tok.inner.encode(text.as_str(), true).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        (enc.get_ids().iter().map(|&i| i as i64).collect(), enc.get_offsets().to_vec())
    };
    let plen = prompt.len();
    // Added special tokens (BOS) have empty offsets (0, 0): they belong to the prompt.
    let start = offsets.iter().position(|&(s, e)| e > plen || (s >= plen && e > s)).unwrap_or(ids.len());
    let mut pieces: Vec<Vec<u8>> = ids[start..].iter().map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
    let straddle = start < ids.len() && offsets[start].0 < plen;
    if straddle {
        // Keep only the response bytes of the token that crosses the boundary.
        pieces[0] = text.as_bytes()[plen..offsets[start].1].to_vec();
    }
    if finished {
        ids.push(teacher.eot);
        pieces.push(table.bytes.get(teacher.eot as usize).cloned().unwrap_or_default());
    }
    Ok((ids, start, pieces, straddle))
}

/// Aligns a student response with the teacher's, applying every masking rule: DPCA with K; the
/// student's first end-of-turn as its own chunk against the teacher's; chunks holding another
/// special token, or a teacher token that straddles the prompt boundary, masked.
fn align_response(student: &Side, response: &[i64], finished: bool, teacher_pieces: &[Vec<u8>], straddle: bool, k: usize) -> Vec<Chunk> {
    let table = student.tok.pieces();
    let n_body = response.len() - usize::from(finished);
    let m_body = teacher_pieces.len() - usize::from(finished);
    let spieces: Vec<&[u8]> = response[..n_body].iter().map(|&i| table.bytes.get(i as usize).map_or(&[][..], |b| b.as_slice())).collect();
    let mut chunks = dpca(&spieces, &teacher_pieces[..m_body], k);
    for c in &mut chunks {
        let special = response[c.student.clone()].iter().any(|&i| table.special.get(i as usize) == Some(&true));
        if c.masked == Masked::No && (special || (straddle && c.teacher.start == 0)) {
            c.masked = Masked::TooLong;
        }
    }
    if finished {
        chunks.push(Chunk { student: n_body..n_body + 1, teacher: m_body..m_body + 1, masked: Masked::No });
    }
    chunks
}

/// Right-padded rows of `prompt ++ response` on `device`: ids (B, L) and, per row, the column
/// in the (B, L − 1) log-prob matrix where its response starts.
fn rows(rollouts: &[&Rollout], pad: i64, device: Device) -> (Tensor, Vec<usize>) {
    let len = rollouts.iter().map(|r| r.student_prompt.len() + r.response.len()).max().unwrap_or(2);
    let mut ids = Vec::with_capacity(rollouts.len() * len);
    let mut starts = Vec::with_capacity(rollouts.len());
    for r in rollouts {
        ids.extend(r.student_prompt.iter().chain(&r.response).copied().chain(std::iter::repeat(pad)).take(len));
        starts.push(r.student_prompt.len() - 1);
    }
    (Tensor::from_slice(&ids).view([rollouts.len() as i64, len as i64]).to_device(device), starts)
}

/// Per-row values at response positions, as a (B, L − 1) float tensor (zeros elsewhere).
fn scatter(values: &[&[f32]], starts: &[usize], width: i64, device: Device) -> Tensor {
    let mut m = vec![0f32; values.len() * width as usize];
    for (b, (v, &s)) in values.iter().zip(starts).enumerate() {
        m[b * width as usize + s..b * width as usize + s + v.len()].copy_from_slice(v);
    }
    Tensor::from_slice(&m).view([values.len() as i64, width]).to_device(device)
}

/// Old log-probs of every rollout's response under the current student (no grad), in the
/// layout training uses, so the first PPO epoch has ratio exactly 1.
pub fn old_logprobs(student: &Side, rollouts: &mut [Rollout], micro: usize) -> Result<()> {
    let _g = tch::no_grad_guard();
    for chunk in rollouts.chunks_mut(micro) {
        let refs: Vec<&Rollout> = chunk.iter().collect();
        let (ids, starts) = rows(&refs, student.tok.pad_id, student.device());
        let lp = token_logprobs(&student.model.logits(&ids), &ids).to_device(Device::Cpu);
        for (b, (r, &s)) in chunk.iter_mut().zip(&starts).enumerate() {
            r.old_logp = Vec::<f32>::try_from(lp.get(b as i64).narrow(0, s as i64, r.response.len() as i64))?;
        }
    }
    Ok(())
}

/// The teacher's log q of every response token (and, for ULD/GOLD, its next-token
/// distributions at the response positions), in one no-grad forward per micro-batch.
pub fn score_teacher(teacher: &Side, rollouts: &mut [Rollout], micro: usize, want_probs: bool) -> Result<()> {
    let _g = tch::no_grad_guard();
    let pad = teacher.tok.pad_id;
    let live: Vec<usize> = (0..rollouts.len()).filter(|&i| !rollouts[i].truncated).collect();
    for group in live.chunks(micro) {
        let len = group.iter().map(|&i| rollouts[i].teacher_ids.len()).max().unwrap_or(2).max(2);
        let mut flat = Vec::with_capacity(group.len() * len);
        for &i in group {
            flat.extend(rollouts[i].teacher_ids.iter().copied().chain(std::iter::repeat(pad)).take(len));
        }
        let ids = Tensor::from_slice(&flat).view([group.len() as i64, len as i64]).to_device(teacher.device());
        let logits = teacher.model.logits(&ids);
        let lp = token_logprobs(&logits, &ids).to_device(Device::Cpu);
        for (b, &i) in group.iter().enumerate() {
            let r = &mut rollouts[i];
            let (s, m) = (r.teacher_start as i64, (r.teacher_ids.len() - r.teacher_start) as i64);
            r.logq = if m == 0 { vec![] } else { Vec::<f32>::try_from(lp.get(b as i64).narrow(0, s - 1, m))? };
            if want_probs && m > 0 {
                r.teacher_probs = Some(logits.get(b as i64).narrow(0, s - 1, m).softmax(-1, Kind::Float));
            }
        }
    }
    Ok(())
}

/// Samples (or, off-policy, takes the dataset's responses for) the given prompts and builds
/// the teacher view and the alignment of each rollout.
#[allow(clippy::too_many_arguments)]
pub fn make_rollouts(r: &Opd, student: &Side, teacher: &Side, examples: &[Example], prompts: &[Vec<i64>], picks: &[usize], on_policy: bool, seed: u64) -> Result<Vec<Rollout>> {
    let picks: Vec<usize> = picks.iter().flat_map(|&i| std::iter::repeat(i).take(r.rollout.samples_per_prompt)).collect();
    let responses: Vec<(Vec<i64>, bool)> = if on_policy {
        let batch: Vec<Vec<i64>> = picks.iter().map(|&i| prompts[i].clone()).collect();
        let s = Sampling {
            max_new_tokens: r.rollout.max_new_tokens,
            temperature: r.rollout.temperature,
            top_k: r.rollout.top_k,
            top_p: r.rollout.top_p,
            ignore_eos: r.rollout.ignore_eos,
            seed,
        };
        let mut stops = student.tok.eos_ids.clone();
        stops.push(student.eot);
        let mut out = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(r.training.micro_batch_size.max(1) * 4) {
            for g in generate(&student.model, chunk, &s, &stops, student.tok.pad_id)? {
                out.push((g.new_ids, g.finished));
            }
        }
        out
    } else {
        picks
            .iter()
            .map(|&i| {
                let text = examples[i].response().context("lmbda < 1 needs a response in every training line")?;
                let mut ids = student.tok.encode(text, false)?;
                ids.push(student.eot);
                Ok((ids, true))
            })
            .collect::<Result<_>>()?
    };
    let table = student.tok.pieces();
    let mut rollouts = Vec::with_capacity(picks.len());
    for (&i, (response, finished)) in picks.iter().zip(responses) {
        if response.is_empty() {
            continue;
        }
        let n_body = response.len() - usize::from(finished);
        let body: Vec<u8> = response[..n_body].iter().flat_map(|&t| table.bytes.get(t as usize).cloned().unwrap_or_default()).collect();
        let (teacher_ids, teacher_start, pieces, straddle) = teacher_sequence(teacher, examples[i].prompt(), &response[..n_body], &body, finished)?;
        let truncated = teacher_ids.len() > r.teacher_max_length || teacher_start == 0;
        let chunks = align_response(student, &response, finished, &pieces, straddle, r.dpca.max_chunk_tokens);
        rollouts.push(Rollout {
            student_prompt: prompts[i].clone(),
            response,
            finished,
            teacher_ids,
            teacher_start,
            truncated,
            chunks,
            logq: vec![],
            teacher_probs: None,
            old_logp: vec![],
        });
    }
    Ok(rollouts)
}

/// Per-step diagnostics of a set of scored rollouts.
#[derive(Default)]
struct Diagnostics {
    tokens: usize,
    masked: usize,
    one_to_one: usize,
    multi: usize,
    gap: f64,
    /// Teacher log-likelihood of the aligned response text, and its teacher token count.
    teacher_logq: f64,
    teacher_aligned: usize,
    finished: usize,
    teacher_tokens: usize,
    /// Rollouts whose alignment got stuck (texts diverged) or whose teacher view was truncated.
    stuck: usize,
    truncated: usize,
}

fn diagnose(rollouts: &[Rollout]) -> Diagnostics {
    let mut d = Diagnostics::default();
    for r in rollouts {
        d.tokens += r.response.len();
        d.finished += usize::from(r.finished);
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
        }
    }
    d
}

impl Diagnostics {
    fn unmasked(&self) -> usize {
        self.tokens - self.masked
    }

    /// Mean (log q − log p) per aligned student token: minus a sampled reverse-KL estimate.
    fn gap_per_token(&self) -> f64 {
        self.gap / self.unmasked().max(1) as f64
    }

    /// Mean teacher log-prob per aligned teacher token of the student's responses.
    fn teacher_logprob(&self) -> f64 {
        self.teacher_logq / self.teacher_aligned.max(1) as f64
    }
}

/// DPCA's per-token inputs of one micro-batch in the training layout (B, L − 1): advantages,
/// the mask of unmasked response tokens, and the old log-probs.
struct DpcaInputs {
    adv: Tensor,
    mask: Tensor,
    old: Tensor,
    clip: PpoClip,
}

impl DpcaInputs {
    fn new(r: &Opd, batch: &[&Rollout], starts: &[usize], width: i64, device: Device) -> Self {
        let clamp = r.dpca.adv_clamp as f32;
        let adv: Vec<Vec<f32>> = batch.iter().map(|x| if x.truncated { vec![0.0; x.response.len()] } else { loss::chunk_advantages(&x.chunks, &x.old_logp, &x.logq, clamp) }).collect();
        let mask: Vec<Vec<f32>> = batch.iter().map(|x| response_mask(x)).collect();
        let old: Vec<&[f32]> = batch.iter().map(|x| x.old_logp.as_slice()).collect();
        Self {
            adv: scatter(&adv.iter().map(Vec::as_slice).collect::<Vec<_>>(), starts, width, device),
            mask: scatter(&mask.iter().map(Vec::as_slice).collect::<Vec<_>>(), starts, width, device),
            old: scatter(&old, starts, width, device),
            clip: PpoClip { low: r.dpca.clip_low, high: r.dpca.clip_high, dual: r.dpca.dual_clip },
        }
    }

    /// The summed PPO surrogate of positions `t0..t0 + n` given their new log-probs (B, n),
    /// and how many of them clipping changed (on the device, so chunks do not wait on a read).
    fn loss(&self, new_logp: &Tensor, t0: i64) -> (Tensor, Tensor) {
        let n = new_logp.size()[1];
        let [adv, mask, old] = [&self.adv, &self.mask, &self.old].map(|t| t.narrow(1, t0, n));
        let (per_token, clipped) = loss::ppo_surrogate(new_logp, &old, &adv, self.clip);
        let clipped = (clipped * &mask).sum(Kind::Float);
        ((per_token * mask).sum(Kind::Float), clipped)
    }
}

/// The loss of one micro-batch of rollouts, summed (the caller divides by the batch's
/// normaliser), for the losses that need the student's logits: ALM's chunk sums, ULD's and
/// GOLD's distributions. DPCA is trained through `Model::backward_tokens` and `DpcaInputs`.
fn micro_loss(r: &Opd, batch: &[&Rollout], matches: Option<&VocabMatch>, logits: &Tensor, ids: &Tensor, starts: &[usize]) -> Result<Tensor> {
    let device = ids.device();
    match r.loss {
        OpdLoss::Dpca => bail!("DPCA is trained through Model::backward_tokens, not on full logits"),
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
                // EOS excluded on both sides, as TRL's uld_skip_*_eos defaults do.
                let n = x.response.len() - usize::from(x.finished);
                let m = tp.size()[0] as usize - usize::from(x.finished);
                if n == 0 || m == 0 {
                    continue;
                }
                let sp = logits.get(b as i64).narrow(0, starts[b] as i64, n as i64).softmax(-1, Kind::Float);
                let tp = tp.narrow(0, 0, m as i64).to_device(device);
                let l = if r.loss == OpdLoss::Uld {
                    let k = n.min(m) as i64;
                    loss::sorted_l1(&sp.narrow(0, 0, k), &tp.narrow(0, 0, k))
                } else {
                    let groups: Vec<&Chunk> = x.chunks.iter().filter(|c| c.masked != Masked::Stuck && c.student.end <= n && c.teacher.end <= m).collect();
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

/// 1 for response tokens in unmasked chunks, 0 elsewhere.
fn response_mask(x: &Rollout) -> Vec<f32> {
    let mut m = vec![0f32; x.response.len()];
    if !x.truncated {
        for c in x.chunks.iter().filter(|c| !c.is_masked()) {
            c.student.clone().for_each(|i| m[i] = 1.0);
        }
    }
    m
}

/// What one optimizer step normalises its summed loss by: unmasked tokens (DPCA's token
/// mean), unmasked chunks (ALM), or scored sequences (ULD, GOLD).
fn normaliser(loss: OpdLoss, rollouts: &[Rollout]) -> f64 {
    let live = rollouts.iter().filter(|x| !x.truncated);
    let n: usize = match loss {
        OpdLoss::Dpca => live.map(|x| response_mask(x).iter().filter(|&&v| v > 0.0).count()).sum(),
        OpdLoss::Alm => live.map(|x| x.chunks.iter().filter(|c| !c.is_masked()).count()).sum(),
        OpdLoss::Uld | OpdLoss::GoldHybrid => live.count(),
    };
    n.max(1) as f64
}

pub fn load_side(spec: &crate::recipe::ModelSpec, device: &str) -> Result<Side> {
    let device = crate::runtime::parse_device(spec.device.as_deref().unwrap_or(device))?;
    let (model, tok, chat) = super::load_model(spec, device)?;
    let eot = end_of_turn(&tok, &chat).with_context(|| format!("model {}", spec.path))?;
    Ok(Side { model, tok, chat, eot, same_vocab: false })
}

pub fn run(r: &Opd, opts: &RunOptions) -> Result<()> {
    let run_dir = &r.output_dir;
    tch::manual_seed(r.seed as i64);
    let resume_from = if opts.resume { checkpoint::latest(run_dir)? } else { None };
    let mut student_spec = r.student.clone();
    if let Some(dir) = &resume_from {
        student_spec.path = dir.display().to_string();
    }
    let student = load_side(&student_spec, &r.device)?;
    let mut teacher = load_side(&r.teacher, &r.device)?;
    teacher.model.vs.freeze();
    teacher.same_vocab = student.tok.inner.get_vocab(true) == teacher.tok.inner.get_vocab(true);
    if teacher.same_vocab {
        eprintln!("opd: student and teacher share a vocabulary: scoring the student's own tokens (same-tokenizer OPD)");
    }
    let source_dir = student.model.dir.clone();
    let matches = (r.loss == OpdLoss::GoldHybrid).then(|| {
        let (sv, tv) = (student.tok.inner.get_vocab(true), teacher.tok.inner.get_vocab(true));
        VocabMatch::new(&sv, &tv, logits_width(&student.model), logits_width(&teacher.model)).to_device(student.device())
    });

    // Prompts, rendered once for the student; too-long prompts are skipped with a count.
    let all = data::read_jsonl(&r.data.train, r.data.max_examples)?;
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
        eprintln!("warning: {} of {n_all} prompts are longer than data.max_prompt_length = {} and are skipped", n_all - examples.len(), r.data.max_prompt_length);
    }
    anyhow::ensure!(!examples.is_empty(), "{}: no prompt fits data.max_prompt_length = {}", r.data.train.display(), r.data.max_prompt_length);
    let eval_examples = match (&r.eval, &r.data.eval) {
        (Some(_), Some(path)) => data::read_jsonl(path, None)?,
        _ => vec![],
    };
    let eval_prompts: Vec<Vec<i64>> = eval_examples.iter().map(|e| data::prompt_ids(&student.tok, &student.chat, e.prompt())).collect::<Result<_>>()?;

    let mut opt = AdamW::new(&student.model.vs, &r.optimizer);
    let mut state = TrainState { step: 0, epoch: 0, index: 0, counters: Default::default() };
    if let Some(dir) = &resume_from {
        state = checkpoint::read_state(dir)?;
        let ckpt = crate::hf::safetensors::Checkpoint::open_file(&dir.join("optimizer.safetensors"))?;
        opt.load_state(&ckpt, state.counters.get("optimizer_steps").copied().unwrap_or(state.step as f64) as i64)?;
        eprintln!("resuming {} from step {}", run_dir.display(), state.step);
    }
    let mut sampler = Sampler::at(examples.len(), r.data.shuffle, r.seed, state.epoch, state.index);
    let mut metrics = Metrics::open(run_dir, r.logging.tensorboard)?;
    let evaluate_now = |metrics: &mut Metrics, step: usize| -> Result<()> {
        let Some(spec) = &r.eval else { return Ok(()) };
        let mut values = evaluate(&student.model, &student.tok, &student.chat, &eval_examples, spec, r.seed, r.logging.progress)?;
        let n = spec.max_examples.unwrap_or(eval_examples.len()).min(eval_examples.len());
        let picks: Vec<usize> = (0..n).collect();
        let mut rollouts = make_rollouts(r, &student, &teacher, &eval_examples, &eval_prompts, &picks, true, r.seed ^ 0xE7A1)?;
        score_teacher(&teacher, &mut rollouts, r.training.micro_batch_size, false)?;
        old_logprobs(&student, &mut rollouts, r.training.micro_batch_size)?;
        let d = diagnose(&rollouts);
        values.push(("eval/logq_minus_logp".into(), d.gap_per_token()));
        values.push(("eval/teacher_logprob".into(), d.teacher_logprob()));
        let v: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        metrics.log(step, &v)
    };
    if state.step == 0 {
        evaluate_now(&mut metrics, 0)?;
    }

    let total = r.training.steps;
    let bar = progress(total as u64, "opd", r.logging.progress);
    bar.set_position(state.step as u64);
    let counter = |state: &TrainState, k: &str| state.counters.get(k).copied().unwrap_or(0.0);
    let mut steps_this_run = 0;
    while state.step < total {
        let started = Instant::now();
        let lr = lr_at(state.step, total, r.optimizer.lr, &r.schedule);
        let picks = sampler.next_batch(r.training.prompts_per_step);
        let mut coin = Rng(r.seed ^ (state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let on_policy = r.lmbda >= 1.0 || (coin.next_u64() as f64 / u64::MAX as f64) < r.lmbda;
        let seed = r.seed.wrapping_add(1 + state.step as u64);

        // Rollout, teacher view, teacher scoring, alignment, old log-probs.
        let mut rollouts = make_rollouts(r, &student, &teacher, &examples, &prompts, &picks, on_policy, seed)?;
        let t_rollout = started.elapsed().as_secs_f64();
        let want_probs = matches!(r.loss, OpdLoss::Uld | OpdLoss::GoldHybrid);
        score_teacher(&teacher, &mut rollouts, r.training.micro_batch_size, want_probs)?;
        let t_teacher = started.elapsed().as_secs_f64();
        old_logprobs(&student, &mut rollouts, r.training.micro_batch_size)?;
        let t_old = started.elapsed().as_secs_f64();
        let diag = diagnose(&rollouts);

        // Update: ppo_epochs optimizer steps over the whole rollout batch.
        let norm = normaliser(r.loss, &rollouts);
        let (mut loss_value, mut clipped, mut grad_norm) = (0.0, 0.0, 0.0);
        for _ in 0..r.training.ppo_epochs {
            opt.zero_grad();
            let mut epoch_loss = 0.0;
            for chunk in rollouts.chunks(r.training.micro_batch_size) {
                let refs: Vec<&Rollout> = chunk.iter().collect();
                let (ids, starts) = rows(&refs, student.tok.pad_id, student.device());
                let recompute = r.training.activation_checkpointing;
                let (l, c) = if r.loss == OpdLoss::Dpca {
                    // Token-wise: the head and its log-softmax run in chunks of positions.
                    let inputs = DpcaInputs::new(r, &refs, &starts, ids.size()[1] - 1, ids.device());
                    let mut clipped = Tensor::zeros([], (Kind::Float, ids.device()));
                    let l = student.model.backward_tokens(&ids, recompute, |lp, t0| {
                        let (l, c) = inputs.loss(lp, t0);
                        clipped += c;
                        Ok(l / norm)
                    })?;
                    (l, clipped.double_value(&[]))
                } else {
                    student.model.backward(&ids, recompute, |logits| Ok((micro_loss(r, &refs, matches.as_ref(), logits, &ids, &starts)? / norm, 0.0)))?
                };
                epoch_loss += l * norm;
                clipped += c;
            }
            loss_value = epoch_loss / norm;
            if !loss_value.is_finite() {
                return Err(checkpoint::non_finite_loss(run_dir, loss_value, state.step + 1));
            }
            grad_norm = opt.clip_grad_norm(r.optimizer.grad_clip);
            opt.step(lr)?;
        }
        state.step += 1;
        steps_this_run += 1;
        (state.epoch, state.index) = (sampler.epoch, sampler.index);
        let secs = started.elapsed().as_secs_f64();
        let add = |state: &mut TrainState, k: &str, v: f64| {
            let prev = state.counters.get(k).copied().unwrap_or(0.0);
            state.counters.insert(k.into(), prev + v);
        };
        add(&mut state, "time_s", secs);
        add(&mut state, "prompts", picks.len() as f64);
        add(&mut state, "teacher_forward_tokens", diag.teacher_tokens as f64);
        add(&mut state, "optimizer_steps", r.training.ppo_epochs as f64);
        let mut values = vec![
            ("train/loss", loss_value),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("opd/on_policy", f64::from(u8::from(on_policy))),
            ("opd/masked_fraction", diag.masked as f64 / diag.tokens.max(1) as f64),
            ("opd/chunks_one_to_one", diag.one_to_one as f64),
            ("opd/chunks_multi_token", diag.multi as f64),
            ("opd/logq_minus_logp", diag.gap_per_token()),
            ("opd/teacher_logprob", diag.teacher_logprob()),
            ("opd/clip_fraction", clipped / (norm * r.training.ppo_epochs as f64)),
            ("opd/response_length", diag.tokens as f64 / rollouts.len().max(1) as f64),
            ("opd/eot_rate", diag.finished as f64 / rollouts.len().max(1) as f64),
            ("opd/stuck_rate", diag.stuck as f64 / rollouts.len().max(1) as f64),
            ("opd/truncated_rate", diag.truncated as f64 / rollouts.len().max(1) as f64),
            ("opd/teacher_tokens", diag.teacher_tokens as f64),
            ("budget/prompts", counter(&state, "prompts")),
            ("budget/teacher_forward_tokens", counter(&state, "teacher_forward_tokens")),
            ("budget/teacher_generated_tokens", 0.0),
            ("budget/optimizer_steps", counter(&state, "optimizer_steps")),
            ("time_s", counter(&state, "time_s")),
            // Where the step's time went: sampling + teacher view + alignment, the teacher's
            // forward, the student's old log-probs, and the update.
            ("time/rollout_s", t_rollout),
            ("time/teacher_s", t_teacher - t_rollout),
            ("time/old_logprobs_s", t_old - t_teacher),
            ("time/update_s", secs - t_old),
        ];
        if let Some(gib) = crate::runtime::peak_memory_gib(student.device()) {
            values.push(("memory/peak_gib", gib));
        }
        metrics.log(state.step, &values)?;
        bar.set_message(format!("loss {loss_value:.4} gap {:.3} masked {:.0}%", diag.gap_per_token(), 100.0 * diag.masked as f64 / diag.tokens.max(1) as f64));
        bar.inc(1);
        let last = state.step == total;
        if last || r.training.checkpoint_every.is_some_and(|n| state.step % n == 0) {
            checkpoint::save(run_dir, &student.model, &source_dir, &opt, &state)?;
        }
        if last || r.eval.as_ref().and_then(|e| e.every).is_some_and(|n| state.step % n == 0) {
            evaluate_now(&mut metrics, state.step)?;
        }
        if opts.stop_after == Some(steps_this_run) && !last {
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

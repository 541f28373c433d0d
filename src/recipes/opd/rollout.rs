//! OPD rollouts: the student samples (or, off-policy, takes the dataset's responses), the
//! teacher view is rendered in the teacher's own template, and DPCA aligns the two response
//! token streams with every masking rule of DESIGN.md §1 (steps 1, 2 and 4). The no-grad
//! scoring passes (teacher log q, student old log p) fill in the rest of a `Rollout`.
use crate::align::{dpca, Chunk, Masked};
use crate::data::Example;
use crate::generate::{generate, Sampling};
use crate::recipes::opd::config::{Opd, RolloutSpec};
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};
use super::teacher::{teacher_sequence, Engine, Teacher};
use crate::recipes::side::Side;

/// One sampled response and what the losses need about it.
pub struct Rollout {
    /// Index of the prompt in the dataset it was drawn from (samples of one prompt share it).
    pub prompt: usize,
    pub student_prompt: Vec<i64>,
    /// Sampled ids, ending with the student's end-of-turn token when `finished`.
    pub response: Vec<i64>,
    pub finished: bool,
    /// Whether the response ids are the student tokenizer's own encoding of their text. A
    /// sampled non-canonical split has the same text as the canonical one, so a teacher that
    /// scores text cannot tell them apart.
    pub canonical: bool,
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
    /// The teacher's last hidden states at the response positions (teacher tokens, hidden),
    /// for the full-distribution losses: its logits are made from them one chunk at a time.
    pub teacher_hidden: Option<Tensor>,
    /// Old (sampling-time policy) log p of every response token.
    pub old_logp: Vec<f32>,
    /// The student's entropy (nats) of its next-token distribution at every response position.
    pub entropy: Vec<f32>,
    /// DPCA's advantage of every response token (0 where masked), once assigned.
    pub adv: Vec<f32>,
    /// The teacher's rendering of the prompt (its text), for candidate scoring.
    pub teacher_prompt: String,
    /// The student's top-k next tokens and their log-probs at every response position, when
    /// candidate scoring asks for them (`old_logprobs` with k > 0).
    pub top: Vec<Vec<(i64, f32)>>,
    /// The positions where the teacher scored the student's candidates.
    pub scored: Vec<Scored>,
}

/// How rollouts are drawn and aligned: the sampling settings, DPCA's K, the teacher's length
/// limit, and the sequences per forward pass.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rollout: RolloutSpec,
    pub max_chunk_tokens: usize,
    pub teacher_max_length: usize,
    pub micro: usize,
}

impl Plan {
    pub fn of(r: &Opd) -> Self {
        Self { rollout: r.rollout.clone(), max_chunk_tokens: r.dpca.max_chunk_tokens, teacher_max_length: r.teacher_max_length, micro: r.training.micro_batch_size }
    }
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
pub fn rows(rollouts: &[&Rollout], pad: i64, device: Device) -> (Tensor, Vec<usize>) {
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
pub fn scatter(values: &[&[f32]], starts: &[usize], width: i64, device: Device) -> Tensor {
    let mut m = vec![0f32; values.len() * width as usize];
    for (b, (v, &s)) in values.iter().zip(starts).enumerate() {
        m[b * width as usize + s..b * width as usize + s + v.len()].copy_from_slice(v);
    }
    Tensor::from_slice(&m).view([values.len() as i64, width]).to_device(device)
}

/// Old log-probs of every rollout's response under the current student (no grad), in the
/// layout training uses. Sampled rollouts already carry them and their entropies from the
/// sampler (the same weights, the model's distribution at temperature 1; they differ from a
/// full forward only by float rounding, so the first PPO epoch's ratio is 1 within a few
/// millionths): only the others (dataset responses) run a forward, and every rollout does when the
/// candidates need the student's `top_k` tokens. The head runs on the response positions only.
pub fn old_logprobs(student: &Side, rollouts: &mut [Rollout], micro: usize, top_k: usize) -> Result<()> {
    let _g = tch::no_grad_guard();
    let mut todo: Vec<&mut Rollout> = rollouts.iter_mut().filter(|r| top_k > 0 || r.old_logp.len() != r.response.len()).collect();
    for chunk in todo.chunks_mut(micro) {
        let refs: Vec<&Rollout> = chunk.iter().map(|r| &**r).collect();
        let (ids, starts) = rows(&refs, student.tok.pad_id, student.device());
        let len = ids.size()[1];
        let from = starts.iter().copied().min().unwrap_or(0) as i64;
        // One log-softmax gives the sampled tokens' log-probs (as `token_logprobs` takes them)
        // and each position's entropy −Σ p log p.
        let hidden = student.model.hidden(&ids).narrow(1, from, len - 1 - from);
        let logp = student.model.head(&hidden).log_softmax(-1, Kind::Float);
        let targets = ids.narrow(1, from + 1, len - 1 - from).unsqueeze(-1);
        let lp = logp.gather(2, &targets, false).squeeze_dim(-1).to_device(Device::Cpu);
        let entropy = (-(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float)).to_device(Device::Cpu);
        let top = (top_k > 0).then(|| logp.topk(top_k as i64, -1, true, true));
        for (b, (r, &s)) in chunk.iter_mut().zip(&starts).enumerate() {
            let (n, s) = (r.response.len() as i64, s as i64 - from);
            r.old_logp = Vec::<f32>::try_from(lp.get(b as i64).narrow(0, s, n))?;
            r.entropy = Vec::<f32>::try_from(entropy.get(b as i64).narrow(0, s, n))?;
            if let Some((values, ids)) = &top {
                let v = Vec::<f32>::try_from(values.get(b as i64).narrow(0, s, n).contiguous().view([-1]).to_device(Device::Cpu))?;
                let i = Vec::<i64>::try_from(ids.get(b as i64).narrow(0, s, n).contiguous().view([-1]).to_device(Device::Cpu))?;
                r.top = i.chunks(top_k).zip(v.chunks(top_k)).map(|(i, v)| i.iter().copied().zip(v.iter().copied()).collect()).collect();
            }
        }
    }
    Ok(())
}

/// Samples (or, off-policy, takes the dataset's responses for) the given prompts and builds
/// the teacher view and the alignment of each rollout. Off-policy a prompt has one rollout,
/// whatever `samples_per_prompt`: its sample slots would hold copies of the same response,
/// whose losses are equal, so every normalised loss is the one copy's, and the teacher and
/// the student would score it `samples_per_prompt` times for the same gradient.
#[allow(clippy::too_many_arguments)]
pub fn make_rollouts(plan: &Plan, student: &Side, teacher: &Teacher, examples: &[Example], prompts: &[Vec<i64>], picks: &[usize], on_policy: bool, seed: u64) -> Result<Vec<Rollout>> {
    let r = plan;
    let copies = if on_policy { r.rollout.samples_per_prompt } else { 1 };
    let picks: Vec<usize> = picks.iter().flat_map(|&i| std::iter::repeat_n(i, copies)).collect();
    // (response, finished, the sampler's log-probs and entropies: empty off-policy)
    type Sampled = (Vec<i64>, bool, Vec<f32>, Vec<f32>);
    let responses: Vec<Sampled> = if on_policy {
        let batch: Vec<Vec<i64>> = picks.iter().map(|&i| prompts[i].clone()).collect();
        let s = Sampling {
            max_new_tokens: r.rollout.max_new_tokens,
            temperature: r.rollout.temperature,
            top_k: r.rollout.top_k,
            top_p: r.rollout.top_p,
            ignore_eos: r.rollout.ignore_eos,
            seed,
            entropy: true,
        };
        let mut stops = student.tok.eos_ids.clone();
        stops.push(student.eot);
        let mut out = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(r.micro.max(1) * 4) {
            for g in generate(&student.model, chunk, &s, &stops, student.tok.pad_id)? {
                out.push((g.new_ids, g.finished, g.logprobs, g.entropy));
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
                Ok((ids, true, vec![], vec![]))
            })
            .collect::<Result<_>>()?
    };
    let table = student.tok.pieces();
    let mut rollouts = Vec::with_capacity(picks.len());
    for (&i, (response, finished, old_logp, entropy)) in picks.iter().zip(responses) {
        if response.is_empty() {
            continue;
        }
        let n_body = response.len() - usize::from(finished);
        let body: Vec<u8> = response[..n_body].iter().flat_map(|&t| table.bytes.get(t as usize).cloned().unwrap_or_default()).collect();
        let canonical = !on_policy || std::str::from_utf8(&body).is_ok_and(|t| student.tok.encode(t, false).is_ok_and(|ids| ids == response[..n_body]));
        let (teacher_ids, teacher_start, pieces, straddle) = teacher_sequence(teacher, examples[i].prompt(), &response[..n_body], &body, finished)?;
        let truncated = teacher_ids.len() > r.teacher_max_length || teacher_start == 0;
        let chunks = align_response(student, &response, finished, &pieces, straddle, r.max_chunk_tokens);
        rollouts.push(Rollout {
            prompt: i,
            student_prompt: prompts[i].clone(),
            response,
            finished,
            canonical,
            teacher_ids,
            teacher_start,
            truncated,
            chunks,
            logq: vec![],
            teacher_probs: None,
            teacher_hidden: None,
            old_logp,
            entropy,
            adv: vec![],
            teacher_prompt: if teacher.same_vocab { String::new() } else { teacher.chat.render(examples[i].prompt(), true)? },
            top: vec![],
            scored: vec![],
        });
    }
    Ok(rollouts)
}

/// One position where the teacher scored the student's candidates.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// The student response index of the position.
    pub pos: usize,
    /// The scored candidates (student token ids), the sampled token among them.
    pub ids: Vec<i64>,
    /// The teacher's distribution over them (log, renormalised over the candidates).
    pub logt: Vec<f32>,
    /// The teacher's probability mass on them before renormalising (exclusive events).
    pub teacher_mass: f64,
    /// The student's (old) probability mass on them.
    pub student_mass: f64,
}

/// What the teacher's scoring pass keeps besides log q of the response tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TeacherKeeps {
    LogProbs,
    /// Its next-token distributions at the response positions (`micro_loss`'s ULD and GOLD,
    /// the tests' reference; training keeps `Hidden`).
    Distributions,
    /// Its last hidden states there (the full-distribution losses, ULD and GOLD).
    Hidden,
}

/// The teacher's log q of every response token (and what `keeps` asks for at the response
/// positions), in one no-grad forward per micro-batch.
pub fn score_teacher(teacher: &Teacher, rollouts: &mut [Rollout], micro: usize, keeps: TeacherKeeps) -> Result<()> {
    let live: Vec<usize> = (0..rollouts.len()).filter(|&i| !rollouts[i].truncated).collect();
    let model = match &teacher.model {
        Engine::Local(m) => m,
        Engine::Served(server) => {
            anyhow::ensure!(keeps == TeacherKeeps::LogProbs, "teacher.server: a served teacher gives log-probs, not distributions");
            let seqs: Vec<&[i64]> = live.iter().map(|&i| rollouts[i].teacher_ids.as_slice()).collect();
            let from: Vec<usize> = live.iter().map(|&i| rollouts[i].teacher_start).collect();
            let names: Vec<String> = live.iter().map(|&i| format!("rollout {i} (prompt {})", rollouts[i].prompt)).collect();
            let (logq, _) = server.score(&seqs, &from, &names, &teacher.tok)?;
            for (&i, lq) in live.iter().zip(logq) {
                rollouts[i].logq = lq;
            }
            return Ok(());
        }
    };
    let _g = tch::no_grad_guard();
    let pad = teacher.tok.pad_id;
    for group in live.chunks(micro) {
        let len = group.iter().map(|&i| rollouts[i].teacher_ids.len()).max().unwrap_or(2).max(2);
        let mut flat = Vec::with_capacity(group.len() * len);
        for &i in group {
            flat.extend(rollouts[i].teacher_ids.iter().copied().chain(std::iter::repeat(pad)).take(len));
        }
        model.check_positions(len).context("the teacher's tokens of a rollout")?;
        let ids = Tensor::from_slice(&flat).view([group.len() as i64, len as i64]).to_device(model.device());
        // The head runs from the position that predicts the group's earliest response token:
        // the prompts' positions predict nothing the loss uses.
        let from = group.iter().map(|&i| rollouts[i].teacher_start).min().unwrap_or(1).max(1) as i64 - 1;
        let n = len as i64 - 1 - from;
        let hidden = model.hidden(&ids).narrow(1, from, n);
        let logits = model.head(&hidden);
        let targets = ids.narrow(1, from + 1, n).unsqueeze(-1);
        let lp = logits.log_softmax(-1, Kind::Float).gather(2, &targets, false).squeeze_dim(-1).to_device(Device::Cpu);
        for (b, &i) in group.iter().enumerate() {
            let r = &mut rollouts[i];
            let (s, m) = (r.teacher_start as i64 - 1 - from, (r.teacher_ids.len() - r.teacher_start) as i64);
            r.logq = if m == 0 { vec![] } else { Vec::<f32>::try_from(lp.get(b as i64).narrow(0, s, m))? };
            if m > 0 {
                match keeps {
                    TeacherKeeps::LogProbs => {}
                    TeacherKeeps::Distributions => r.teacher_probs = Some(logits.get(b as i64).narrow(0, s, m).softmax(-1, Kind::Float)),
                    TeacherKeeps::Hidden => r.teacher_hidden = Some(hidden.get(b as i64).narrow(0, s, m).copy()),
                }
            }
        }
    }
    Ok(())
}

//! Batched sampling with a KV cache: left padding with an attention mask, greedy or
//! temperature / top-k / top-p sampling (the order of transformers' logits warpers), seeded,
//! stopping on the model's end tokens.
//!
//! Each new token's log-probability under the unmodified model (temperature 1, no filtering)
//! is returned with it: that is `log p_i` of the policy, which on-policy distillation needs.
use crate::models::Model;
use crate::nn::attention::{Context, KvCache};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: i64,
    /// 1 disables nucleus filtering.
    pub top_p: f64,
    pub ignore_eos: bool,
    pub seed: u64,
    /// Also return each step's entropy (OPD's rollouts and avg@k's spread report it): over a
    /// 262k vocabulary about 2.4 ms of a batch-8 decode step that greedy evaluation and the CLI
    /// do not need.
    pub entropy: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 1.0, top_k: 0, top_p: 1.0, ignore_eos: false, seed: 0, entropy: false }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The sampled ids, including the end token when one was produced.
    pub new_ids: Vec<i64>,
    /// log p(new_ids[i] | prefix) under the model at temperature 1.
    pub logprobs: Vec<f32>,
    /// The entropy (nats) of the model's next-token distribution at temperature 1 where
    /// new_ids[i] was drawn (empty unless `Sampling::entropy`).
    pub entropy: Vec<f32>,
    /// Whether the sequence ended with an end token (rather than the length limit).
    pub finished: bool,
}

impl Sampling {
    /// Checks the settings; the messages name the flag (`--temperature`) or recipe key.
    pub fn check(&self) -> Result<()> {
        ensure!(self.temperature.is_finite() && self.temperature >= 0.0, "temperature must be a finite number >= 0 (got {})", self.temperature);
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "top_p must be in (0, 1] (got {})", self.top_p);
        ensure!(self.top_k >= 0, "top_k must be >= 0 (got {})", self.top_k);
        ensure!(self.max_new_tokens > 0, "max_new_tokens must be positive");
        Ok(())
    }
}

/// Logits that are NaN or infinite: the model's weights have diverged. Sampling from them
/// would panic inside torch's multinomial, so generation stops with this error instead.
#[derive(Debug)]
pub struct NonFiniteLogits;

impl std::fmt::Display for NonFiniteLogits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model's logits are not finite (NaN or infinite): its weights have diverged")
    }
}

impl std::error::Error for NonFiniteLogits {}

/// Vocabularies of at least this many entries are sampled by inverse CDF (see `sample`).
const INVERSE_CDF_FROM: i64 = 16_384;

/// Picks the next token of every row of `logits` (batch, vocab). Non-finite logits draw from
/// finite stand-ins (NaN would stop multinomial); `generate` refuses such a step afterwards.
///
/// Small vocabularies go through torch's `multinomial`, which draws one exponential per entry
/// (the exponential race); from `INVERSE_CDF_FROM` entries on, one uniform per row is placed
/// in the float64 running sum of the probabilities instead: the same distribution, but 3.5 ms
/// instead of 44.6 ms for 8 rows of Gemma 3's 262,144 on 2 cores, where the race cost a third
/// of a sampled decode step. (The threshold keeps the runs of small models, the demo's among them, on
/// the random stream they were published with.)
pub fn sample(logits: &Tensor, s: &Sampling) -> Tensor {
    if s.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let mut l = logits / s.temperature;
    let _ = l.nan_to_num_(0.0, None, None);
    let vocab = l.size()[1];
    if s.top_k > 0 && s.top_k < vocab {
        let (top, _) = l.topk(s.top_k, -1, true, true);
        let kth = top.narrow(1, s.top_k - 1, 1);
        l = l.masked_fill(&l.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if s.top_p < 1.0 {
        // Drop the low tail whose total mass is at most 1 - top_p, keeping at least one token.
        let (sorted, idx) = l.sort(-1, false);
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove = cum.le(1.0 - s.top_p);
        let _ = remove.narrow(1, vocab - 1, 1).fill_(0);
        let remove = remove.zeros_like().scatter(1, &idx, &remove);
        l = l.masked_fill(&remove, f64::NEG_INFINITY);
    }
    let probs = l.softmax(-1, Kind::Float);
    if vocab < INVERSE_CDF_FROM {
        return probs.multinomial(1, false).squeeze_dim(1);
    }
    let cdf = probs.to_kind(Kind::Double).cumsum(-1, Kind::Double);
    let u = Tensor::rand([cdf.size()[0], 1], (Kind::Double, cdf.device())) * cdf.narrow(1, vocab - 1, 1);
    // The first entry whose running sum exceeds u: never one of probability zero.
    u.searchsorted(&cdf, false, true, "right", None::<Tensor>).clamp_max(vocab - 1).squeeze_dim(1)
}

/// Continues every prompt (token ids, special tokens included) by up to `s.max_new_tokens`.
pub fn generate(model: &Model, prompts: &[Vec<i64>], s: &Sampling, eos: &[i64], pad_id: i64) -> Result<Vec<Generation>> {
    ensure!(!prompts.is_empty(), "no prompts to generate from");
    ensure!(prompts.iter().all(|p| !p.is_empty()), "an empty prompt cannot be continued");
    s.check()?;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    model.check_positions(width)?;
    // Generation stops at the model's context limit.
    let room = model.max_positions().map_or(usize::MAX, |m| m - width);
    let _guard = tch::no_grad_guard();
    tch::manual_seed(s.seed as i64);
    let device = model.device();
    let b = prompts.len();
    let mut ids = Vec::with_capacity(b * width);
    let mut valid = Vec::with_capacity(b * width);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()));
        valid.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let ids = Tensor::from_slice(&ids).view([b as i64, width as i64]).to_device(device);
    let mut key_valid = Tensor::from_slice(&valid).view([b as i64, width as i64]).to_device(device);
    // Positions count real tokens only, as transformers derives them from the attention mask.
    let mut positions = (key_valid.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut cache = model.new_cache();
    let ctx = Context::new(positions.shallow_clone(), key_valid.shallow_clone(), 0);
    let padded = ctx.padded;
    // Only the last position's logits are needed: the head runs on that row alone (over a
    // 262k vocabulary, the prompt's other rows would cost more than the blocks).
    let last = |ids: &Tensor, ctx: &Context, cache: &mut KvCache| model.head(&model.blocks(ids, ctx, Some(cache)).select(1, -1));
    let mut logits = last(&ids, &ctx, &mut cache);
    let mut out: Vec<Generation> = (0..b).map(|_| Generation { new_ids: vec![], logprobs: vec![], entropy: vec![], finished: false }).collect();
    let max_new = s.max_new_tokens.min(room);
    for step in 0..max_new {
        // One copy to the host per step (each copy waits for the device): the tokens, their
        // log-probs, the entropies and whether every logit was finite; a step with a
        // non-finite logit is refused once that is known. Finiteness is read from the row sums
        // (NaN and infinities carry through a sum), a thirtieth of `isfinite` over the vocabulary.
        let finite = logits.sum_dim_intlist(-1, false, Kind::Float).isfinite().all().to_kind(Kind::Double).unsqueeze(0);
        let next = sample(&logits, s);
        let logp = logits.log_softmax(-1, Kind::Float);
        let lp = logp.gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
        let entropy = match s.entropy {
            true => -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float),
            false => Tensor::zeros([b as i64], (Kind::Float, device)),
        };
        let host = Vec::<f64>::try_from(Tensor::cat(&[next.to_kind(Kind::Double), lp.to_kind(Kind::Double), entropy.to_kind(Kind::Double), finite], 0).to_device(Device::Cpu))?;
        if host[3 * b] != 1.0 {
            return Err(NonFiniteLogits.into());
        }
        let next_v: Vec<i64> = host[..b].iter().map(|&v| v as i64).collect();
        let mut feed = Vec::with_capacity(b);
        for (row, g) in out.iter_mut().enumerate() {
            if g.finished {
                feed.push(pad_id);
                continue;
            }
            g.new_ids.push(next_v[row]);
            g.logprobs.push(host[b + row] as f32);
            if s.entropy {
                g.entropy.push(host[2 * b + row] as f32);
            }
            g.finished = !s.ignore_eos && eos.contains(&next_v[row]);
            feed.push(next_v[row]);
        }
        if out.iter().all(|g| g.finished) || step + 1 == max_new {
            break;
        }
        let past = key_valid.size()[1];
        key_valid = Tensor::cat(&[key_valid, Tensor::ones([b as i64, 1], (Kind::Bool, device))], 1);
        positions = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
        let ctx = Context { positions: positions.shallow_clone(), key_valid: key_valid.shallow_clone(), past, padded, visible: None };
        let feed = Tensor::from_slice(&feed).view([b as i64, 1]).to_device(device);
        logits = last(&feed, &ctx, &mut cache);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frequencies of `n` draws from rows of `vocab` logits with mass on four entries (the
    /// rest -inf, or -30 where `tail` asks for a tiny positive probability).
    fn draws(vocab: i64, s: &Sampling, n: i64, tail: bool) -> Vec<f64> {
        let mut row = vec![if tail { -30f32 } else { f32::NEG_INFINITY }; vocab as usize];
        for (i, p) in [(3usize, 0.5f32), (vocab as usize - 1, 0.3), (7, 0.15), (0, 0.05)] {
            row[i] = p.ln();
        }
        let logits = Tensor::from_slice(&row).view([1, vocab]).repeat([n, 1]);
        let picks = Vec::<i64>::try_from(sample(&logits, s)).unwrap();
        let mut freq = vec![0.0; vocab as usize];
        for p in picks {
            freq[p as usize] += 1.0 / n as f64;
        }
        freq
    }

    #[test]
    fn both_samplers_draw_the_softmax_distribution() {
        tch::manual_seed(0);
        let s = Sampling::default();
        // Below and from INVERSE_CDF_FROM; 4σ bounds for 2,000 draws.
        for vocab in [1000, INVERSE_CDF_FROM] {
            let f = draws(vocab, &s, 2000, false);
            for (i, p) in [(3usize, 0.5f64), (vocab as usize - 1, 0.3), (7, 0.15), (0, 0.05)] {
                let sigma = (p * (1.0 - p) / 2000.0).sqrt();
                assert!((f[i] - p).abs() < 4.0 * sigma, "vocab {vocab}: entry {i} drawn {} for {p}", f[i]);
            }
            assert!((f.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            // Top-k 2 at temperature 0.5: only the two largest, with odds (0.5 / 0.3)^2.
            let f = draws(vocab, &Sampling { top_k: 2, temperature: 0.5, ..s.clone() }, 2000, true);
            let p = 0.25 / (0.25 + 0.09);
            assert!((f[3] - p).abs() < 4.0 * (p * (1.0 - p) / 2000.0).sqrt(), "vocab {vocab}: top-k drew {} for {p}", f[3]);
            assert!((f[3] + f[vocab as usize - 1] - 1.0).abs() < 1e-9, "vocab {vocab}: top-k drew outside the top 2");
        }
    }
}

//! Batched sampling with a KV cache: left padding with an attention mask, greedy or
//! temperature / top-k / top-p sampling (the order of transformers' logits warpers), seeded,
//! stopping on the model's end tokens.
//!
//! Each new token's log-probability under the unmodified model (temperature 1, no filtering)
//! is returned with it: that is `log p_i` of the policy, which on-policy distillation needs.
use crate::models::Model;
use crate::nn::attention::Context;
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
}

impl Default for Sampling {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 1.0, top_k: 0, top_p: 1.0, ignore_eos: false, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The sampled ids, including the end token when one was produced.
    pub new_ids: Vec<i64>,
    /// log p(new_ids[i] | prefix) under the model at temperature 1.
    pub logprobs: Vec<f32>,
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

/// Picks the next token of every row of `logits` (batch, vocab). Non-finite logits draw from
/// finite stand-ins (NaN would stop multinomial); `generate` refuses such a step afterwards.
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
    l.softmax(-1, Kind::Float).multinomial(1, false).squeeze_dim(1)
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
        ids.extend(std::iter::repeat(pad_id).take(pad).chain(p.iter().copied()));
        valid.extend(std::iter::repeat(false).take(pad).chain(std::iter::repeat(true).take(p.len())));
    }
    let ids = Tensor::from_slice(&ids).view([b as i64, width as i64]).to_device(device);
    let mut key_valid = Tensor::from_slice(&valid).view([b as i64, width as i64]).to_device(device);
    // Positions count real tokens only, as transformers derives them from the attention mask.
    let mut positions = (key_valid.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut cache = model.new_cache();
    let ctx = Context::new(positions.shallow_clone(), key_valid.shallow_clone(), 0);
    let padded = ctx.padded;
    let mut logits = model.forward(&ids, &ctx, Some(&mut cache)).select(1, -1);
    let mut out: Vec<Generation> = (0..b).map(|_| Generation { new_ids: vec![], logprobs: vec![], finished: false }).collect();
    let max_new = s.max_new_tokens.min(room);
    for step in 0..max_new {
        // One copy to the host per step (each copy waits for the device): the tokens, their
        // log-probs and whether every logit was finite; a step with a non-finite logit is
        // refused once that is known.
        let finite = logits.isfinite().all().to_kind(Kind::Double).unsqueeze(0);
        let next = sample(&logits, s);
        let lp = logits.log_softmax(-1, Kind::Float).gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
        let host = Vec::<f64>::try_from(Tensor::cat(&[next.to_kind(Kind::Double), lp.to_kind(Kind::Double), finite], 0).to_device(Device::Cpu))?;
        if host[2 * b] != 1.0 {
            return Err(NonFiniteLogits.into());
        }
        let next_v: Vec<i64> = host[..b].iter().map(|&v| v as i64).collect();
        let lp_v: Vec<f32> = host[b..2 * b].iter().map(|&v| v as f32).collect();
        let mut feed = Vec::with_capacity(b);
        for (row, g) in out.iter_mut().enumerate() {
            if g.finished {
                feed.push(pad_id);
                continue;
            }
            g.new_ids.push(next_v[row]);
            g.logprobs.push(lp_v[row]);
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
        logits = model.forward(&feed, &ctx, Some(&mut cache)).select(1, -1);
    }
    Ok(out)
}

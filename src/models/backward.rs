//! The training passes of a `Model`: the backward engine. The head runs over chunks of
//! positions so that vocabulary-sized tensors exist for one chunk at a time, and with
//! activation checkpointing the blocks are recomputed one at a time, last first.
use super::{Layers, Model, Shared};
use crate::nn::attention::Context;
use anyhow::{Context as _, Result};
use tch::{Device, Kind, Tensor};

impl Model {
    /// Computes `loss_of(logits of ids)` (ids unpadded from position 0, or right-padded) and
    /// back-propagates the loss into the parameters' gradients; returns its value and what
    /// `loss_of` returned beside it. With `recompute` (activation checkpointing) the blocks
    /// first run without a graph, keeping only each block's input; after the head's backward
    /// every block runs again with its graph, last first, and is back-propagated with the
    /// gradient of its output. Activation memory is then one block's instead of all of them,
    /// for one more forward pass of the blocks; the gradients are the same.
    pub fn backward<T>(&self, ids: &Tensor, recompute: bool, loss_of: impl FnOnce(&Tensor) -> Result<(Tensor, T)>) -> Result<(f64, T)> {
        if !recompute {
            self.check_positions(ids.size().last().copied().unwrap_or(0) as usize)?;
            let (loss, extra) = loss_of(&self.logits(ids))?;
            if loss.requires_grad() {
                loss.backward();
            }
            return Ok((loss.double_value(&[]), extra));
        }
        let pass = Pass::new(self, ids, None, true)?;
        let top = pass.top_for_grad();
        let (loss, extra) = loss_of(&pass.l.head(&top))?;
        let value = loss.double_value(&[]);
        if loss.requires_grad() {
            loss.backward();
            pass.backward(&top);
        }
        Ok((value, extra))
    }

    /// `backward` for a loss that is a sum over positions of a function of each position's
    /// next-token log-prob (cross-entropy, the PPO surrogate). The head and its log-softmax run
    /// over chunks of positions, so the vocabulary-sized tensors exist for one chunk at a time,
    /// as in Liger's fused linear cross-entropy. `loss_of(lp, t0)` gets the log-probs (batch, n)
    /// of positions `t0..t0 + n`, numbered as `train::token_logprobs` numbers them, and returns
    /// their part of the loss; the value returned is the sum of the parts. Positions before
    /// `from` carry no loss (the prompts of every row): the head skips them.
    ///
    /// Autograd sees only the small tensors. With `g` the gradient of the loss with respect to
    /// the chosen tokens' log-probs, the gradient of the logits is `g * (onehot - softmax)`,
    /// written in place over the log-softmax (`softmax = exp(log-softmax)`, the formula of
    /// torch's log-softmax backward). A chunk's logits live only until their log-softmax is
    /// made, and that is the one vocabulary-sized tensor (two with soft-capping) kept for the
    /// gradient, where autograd would make four. The head's two matmul gradients follow from
    /// it; the one of the hidden states goes back through the final norm and the blocks.
    pub fn backward_tokens(&self, ids: &Tensor, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, None, from, recompute, true, loss_of)
    }

    /// `backward_tokens` at a context of its own: packed rows, whose sequences each start at
    /// position 0 and see only themselves (`train::Batch::packed`).
    pub fn backward_tokens_in(&self, ids: &Tensor, ctx: Context, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, Some(ctx), from, recompute, true, loss_of)
    }

    /// `backward_tokens` for a loss of each position's whole next-token distribution (the
    /// full-distribution divergences of same-vocabulary distillation): `loss_of(logits, t0)`
    /// gets the float32 logits (batch, n, vocab) of positions `t0..t0 + n` (after soft-capping)
    /// as a leaf that requires grad. Autograd runs inside one chunk only, so the vocabulary-sized
    /// tensors are still bounded by the chunk; the gradient of the logits then takes the same
    /// path back as in `backward_tokens`.
    pub fn backward_logits(&self, ids: &Tensor, from: i64, recompute: bool, loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        self.backward_head(ids, None, from, recompute, false, loss_of)
    }

    fn backward_head(&self, ids: &Tensor, ctx: Option<Context>, from: i64, recompute: bool, tokens: bool, mut loss_of: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<f64> {
        let pass = Pass::new(self, ids, ctx, recompute)?;
        let top = pass.top_for_grad();
        let normed = pass.l.final_norm(&top);
        let (b, t, hidden) = normed.size3()?;
        let (w, cap) = (pass.l.unembedding(), pass.l.final_softcap());
        let vocab = w.size()[0];
        let device = self.device();
        let budget = self.logits_per_chunk.unwrap_or(if device == Device::Cpu { 1 << 25 } else { 1 << 27 });
        let step = (budget / (vocab * b)).max(1);
        let h_all = normed.detach();
        // The loss is summed on the device and read once, so chunks do not wait on each other.
        let mut value = Tensor::zeros([], (Kind::Float, device));
        let (mut grad_h, mut grad_w, mut any_grad) = (Vec::new(), None::<Tensor>, false);
        // The chunks before `from` are skipped; the others keep the boundaries they have from
        // position 0, so the sums (and so the gradients) are bit for bit those of a pass over
        // every chunk, whose skipped chunks would add exact zeros.
        let mut t0 = from.clamp(0, t - 1) / step * step;
        if t0 > 0 {
            grad_h.push(Tensor::zeros([b, t0, hidden], (h_all.kind(), device)));
        }
        while t0 < t - 1 {
            let n = step.min(t - 1 - t0);
            let h = h_all.narrow(1, t0, n);
            let (z, tanh) = tch::no_grad(|| {
                let z = h.matmul(&w.tr()).to_kind(Kind::Float);
                match cap {
                    Some(cap) => {
                        let tanh = z.g_div_scalar(cap).tanh_();
                        (&tanh * cap, Some(tanh))
                    }
                    None => (z, None),
                }
            });
            // The gradient of the loss with respect to the (soft-capped) logits of the chunk.
            let (loss, grad_z) = if tokens {
                let targets = ids.narrow(1, t0 + 1, n).unsqueeze(-1);
                let log_probs = tch::no_grad(|| z.log_softmax(-1, Kind::Float));
                drop(z);
                let lp = log_probs.gather(2, &targets, false).squeeze_dim(-1).set_requires_grad(true);
                let loss = loss_of(&lp, t0)?;
                let g = if loss.requires_grad() {
                    loss.backward();
                    lp.grad()
                } else {
                    Tensor::new()
                };
                let d = g.defined().then(|| {
                    let g = g.unsqueeze(-1);
                    tch::no_grad(|| {
                        let mut d = log_probs;
                        let _ = d.exp_().g_mul_(&-&g).scatter_add_(2, &targets, &g);
                        d
                    })
                });
                (loss, d)
            } else {
                let z = z.set_requires_grad(true);
                let loss = loss_of(&z, t0)?;
                if loss.requires_grad() {
                    loss.backward();
                }
                let g = z.grad();
                (loss, g.defined().then_some(g))
            };
            value += loss.detach().to_kind(Kind::Float);
            let Some(mut d) = grad_z else {
                grad_h.push(h.zeros_like());
                t0 += n;
                continue;
            };
            any_grad = true;
            tch::no_grad(|| {
                if let Some(mut tanh) = tanh {
                    // d cap*tanh(z/cap) / dz = 1 - tanh^2
                    let _ = d.g_mul_(&tanh.square_().neg_().g_add_scalar_(1.0));
                }
                let grad_z = d.to_kind(h.kind());
                grad_h.push(grad_z.matmul(w));
                if w.requires_grad() {
                    let (gz, hs) = (grad_z.reshape([-1, vocab]), h.reshape([-1, hidden]));
                    match &mut grad_w {
                        Some(acc) => {
                            let _ = acc.addmm_(&gz.tr(), &hs);
                        }
                        None => grad_w = Some(gz.tr().matmul(&hs)),
                    }
                }
            });
            t0 += n;
        }
        if any_grad {
            grad_h.push(Tensor::zeros([b, 1, hidden], (h_all.kind(), device)));
            if let Some(grad_w) = grad_w {
                crate::ops::accumulate_grad(w, &grad_w)?;
            }
            let seed = (&normed * Tensor::cat(&grad_h, 1)).sum(Kind::Float);
            if seed.requires_grad() {
                seed.backward();
            }
            pass.backward(&top);
        }
        Ok(value.double_value(&[]))
    }
}

/// One training forward of the blocks, up to the last block's output, kept so that the
/// gradient of that output can be sent back through the blocks and the embeddings.
struct Pass<'a> {
    l: &'a dyn Layers,
    ids: &'a Tensor,
    ctx: Context,
    shared: Shared,
    /// The last block's output: with its graph, or (recomputation) without.
    top: Tensor,
    recompute: bool,
    /// Recomputation: each block's input, without graph.
    inputs: Vec<Tensor>,
}

impl<'a> Pass<'a> {
    /// `ctx`: where the tokens sit; None for unpadded or right-padded rows from position 0.
    fn new(model: &'a Model, ids: &'a Tensor, ctx: Option<Context>, recompute: bool) -> Result<Self> {
        let (b, t) = ids.size2().context("ids are (batch, seq)")?;
        // Packed rows restart their positions at each sequence: the span is the largest one.
        let span = ctx.as_ref().map_or(t, |c| c.positions.max().int64_value(&[]) + 1);
        model.check_positions(span as usize)?;
        let ctx = ctx.unwrap_or_else(|| Context::dense(b, t, 0, ids.device()));
        let l = model.layers();
        let shared = l.shared(&ctx, model.kind);
        let mut inputs = Vec::new();
        let top = if recompute {
            tch::no_grad(|| {
                let mut x = l.embed(ids, &ctx);
                for i in 0..model.n_layers {
                    inputs.push(x.shallow_clone());
                    x = l.block(i, &x, &shared, None);
                }
                x
            })
        } else {
            let mut x = l.embed(ids, &ctx);
            for i in 0..model.n_layers {
                x = l.block(i, &x, &shared, None);
            }
            x
        };
        Ok(Self { l, ids, ctx, shared, top, recompute, inputs })
    }

    /// `top` for the loss: itself (its graph reaches the parameters), or with recomputation
    /// a leaf whose gradient `backward` then sends through the blocks.
    fn top_for_grad(&self) -> Tensor {
        if self.recompute {
            self.top.detach().set_requires_grad(true)
        } else {
            self.top.shallow_clone()
        }
    }

    /// With recomputation, back-propagates the gradient that the loss's backward left in
    /// `top` (from `top_for_grad`) through the blocks, last first, and the embeddings.
    fn backward(mut self, top: &Tensor) {
        if !self.recompute {
            return;
        }
        let mut grad = top.grad();
        for i in (0..self.inputs.len()).rev() {
            let x = self.inputs[i].detach().set_requires_grad(true);
            self.inputs[i] = Tensor::new();
            (self.l.block(i, &x, &self.shared, None) * &grad).sum(Kind::Float).backward();
            grad = x.grad();
        }
        let e = self.l.embed(self.ids, &self.ctx);
        if e.requires_grad() {
            (e * grad).sum(Kind::Float).backward();
        }
    }
}

//! The training engine shared by recipes: optimizer, schedule, checkpoints, metrics, losses
//! over padded batches.
pub mod checkpoint;
pub mod dist;
pub mod metrics;
pub mod ops;
pub mod optim;
pub mod schedule;

use crate::data::Encoded;
use tch::{Device, Kind, Tensor};

/// A right-padded batch: ids (batch, len) and the float mask (batch, len - 1) of the positions
/// whose next token is a response token.
pub struct Batch {
    pub ids: Tensor,
    pub target_mask: Tensor,
    /// Number of response tokens (the sum of `target_mask`).
    pub n_targets: usize,
    /// The first column of `target_mask` with a target in any row (prompts come before it).
    pub first_target: i64,
}

impl Batch {
    pub fn new(examples: &[&Encoded], pad_id: i64, device: Device) -> Self {
        let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(2);
        let mut ids = Vec::with_capacity(examples.len() * len);
        let mut mask = Vec::with_capacity(examples.len() * (len - 1));
        for e in examples {
            ids.extend(e.ids.iter().copied().chain(std::iter::repeat(pad_id)).take(len));
            mask.extend((1..len).map(|i| if e.target.get(i).copied().unwrap_or(false) { 1f32 } else { 0f32 }));
        }
        let b = examples.len() as i64;
        let n_targets = mask.iter().filter(|&&m| m > 0.0).count();
        let first_target = mask.chunks(len - 1).filter_map(|row| row.iter().position(|&m| m > 0.0)).min().unwrap_or(0) as i64;
        Self {
            ids: Tensor::from_slice(&ids).view([b, len as i64]).to_device(device),
            target_mask: Tensor::from_slice(&mask).view([b, len as i64 - 1]).to_device(device),
            n_targets,
            first_target,
        }
    }
}

/// log p(ids[:, t+1] | ids[:, ..=t]) for every position, (batch, len - 1), from float32 logits.
///
/// The log-softmax runs over the whole (contiguous) logits and the last position is dropped
/// from the small result: narrowing the logits first would copy them, forward and backward.
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Tensor {
    let len = ids.size()[1];
    let targets = Tensor::cat(&[ids.narrow(1, 1, len - 1), ids.narrow(1, len - 1, 1)], 1).unsqueeze(-1);
    logits.log_softmax(-1, Kind::Float).gather(2, &targets, false).squeeze_dim(-1).narrow(1, 0, len - 1)
}

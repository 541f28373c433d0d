//! The training engine shared by recipes: optimizer, schedule, checkpoints, metrics, losses
//! over padded batches.
pub mod checkpoint;
pub mod dist;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod schedule;

use crate::data::Encoded;
use crate::nn::attention::Context;
use tch::{Device, Kind, Tensor};

/// A right-padded batch, or packed rows (`packed`): ids (batch, len) and the float mask
/// (batch, len - 1) of the positions whose next token is a response token.
pub struct Batch {
    pub ids: Tensor,
    pub target_mask: Tensor,
    /// Number of response tokens (the sum of `target_mask`).
    pub n_targets: usize,
    /// The first column of `target_mask` with a target in any row (prompts come before it).
    pub first_target: i64,
    /// Padding tokens in `ids` (what packing saves).
    pub pad_tokens: usize,
    /// Packed rows: every sequence's positions from 0 and the keys each query sees (its own
    /// sequence, causally). None: one sequence per row from position 0.
    pub ctx: Option<Context>,
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
            pad_tokens: examples.len() * len - examples.iter().map(|e| e.ids.len().min(len)).sum::<usize>(),
            ctx: None,
        }
    }

    /// The examples packed into as few rows of at most `capacity` tokens as first-fit
    /// decreasing finds (TRL's `packing`, torchtune's `packed`), none split: each keeps its own
    /// positions from 0 and attends only to itself, so its tokens' log-probs are those of the
    /// padded batch and the loss is the same; only the padding is gone. Rows are filled to the
    /// longest with padding that sees only itself and carries no target.
    pub fn packed(examples: &[&Encoded], capacity: usize, pad_id: i64, device: Device) -> Self {
        let rows = pack(&examples.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), capacity);
        let len = rows.iter().map(|r| r.iter().map(|&i| examples[i].ids.len()).sum::<usize>()).max().unwrap_or(0).max(2);
        let (mut ids, mut mask, mut positions, mut doc) = (vec![], vec![], vec![], vec![]);
        for row in &rows {
            let (mut r_ids, mut r_target, mut r_pos, mut r_doc) = (vec![], vec![], vec![], vec![]);
            for (d, &i) in row.iter().enumerate() {
                let e = examples[i];
                r_ids.extend(&e.ids);
                // The sequence's first token is predicted from the previous one's last: no target.
                r_target.extend((0..e.ids.len()).map(|j| j > 0 && e.target.get(j).copied().unwrap_or(false)));
                r_pos.extend(0..e.ids.len() as i64);
                r_doc.extend(std::iter::repeat_n(d as i64, e.ids.len()));
            }
            let used = r_ids.len();
            r_ids.resize(len, pad_id);
            r_target.resize(len, false);
            r_pos.extend(0..(len - used) as i64);
            r_doc.resize(len, row.len() as i64);
            ids.extend(r_ids);
            mask.extend(r_target[1..].iter().map(|&t| if t { 1f32 } else { 0f32 }));
            positions.extend(r_pos);
            doc.extend(r_doc);
        }
        let (b, t) = (rows.len() as i64, len as i64);
        let pad_tokens = rows.len() * len - examples.iter().map(|e| e.ids.len()).sum::<usize>();
        let n_targets = mask.iter().filter(|&&m| m > 0.0).count();
        let first_target = mask.chunks(len - 1).filter_map(|row| row.iter().position(|&m| m > 0.0)).min().unwrap_or(0) as i64;
        let doc = Tensor::from_slice(&doc).view([b, t]).to_device(device);
        let index = Tensor::arange(t, (Kind::Int64, device));
        let visible = doc.unsqueeze(2).eq_tensor(&doc.unsqueeze(1)).logical_and(&index.unsqueeze(1).ge_tensor(&index.unsqueeze(0)).unsqueeze(0));
        Self {
            ids: Tensor::from_slice(&ids).view([b, t]).to_device(device),
            target_mask: Tensor::from_slice(&mask).view([b, t - 1]).to_device(device),
            n_targets,
            first_target,
            pad_tokens,
            ctx: Some(Context::tree(Tensor::from_slice(&positions).view([b, t]).to_device(device), visible)),
        }
    }
}

/// Rows of item indices, each summing to at most `capacity` (an item longer than that gets a
/// row of its own), that lay the items out in the fewest tokens: rows are filled to the
/// longest, so the row length L (from the longest item up to `capacity`) is chosen to make
/// rows × longest row smallest (fewer rows on ties), never more than one item per row takes.
pub fn pack(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let cost = |rows: &[Vec<usize>]| rows.len() * rows.iter().map(|r| r.iter().map(|&i| lengths[i]).sum::<usize>()).max().unwrap_or(0);
    let stride = (capacity.saturating_sub(longest) / 64).max(1);
    (longest.min(capacity)..=capacity)
        .step_by(stride)
        .chain([capacity])
        .map(|l| first_fit_decreasing(lengths, l))
        .min_by_key(|rows| (cost(rows), rows.len()))
        .unwrap_or_default()
}

/// Rows of item indices whose lengths sum to at most `capacity` (an item longer than that
/// gets a row of its own), by first-fit decreasing: the longest first, ties in index order,
/// each into the first row it fits; the items in a row in index order.
fn first_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<(usize, Vec<usize>)> = vec![];
    for i in order {
        match rows.iter_mut().find(|(used, _)| used + lengths[i] <= capacity) {
            Some((used, row)) => {
                *used += lengths[i];
                row.push(i);
            }
            None => rows.push((lengths[i], vec![i])),
        }
    }
    rows.into_iter()
        .map(|(_, mut row)| {
            row.sort_unstable();
            row
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_lays_items_out_in_the_fewest_tokens() {
        assert_eq!(first_fit_decreasing(&[5, 3, 4, 2, 6], 8), vec![vec![3, 4], vec![0, 1], vec![2]]);
        assert_eq!(first_fit_decreasing(&[9, 1], 8), vec![vec![0], vec![1]], "an item over capacity has its own row");
        assert_eq!(pack(&[5, 3, 4, 2, 6], 8), vec![vec![4], vec![0, 3], vec![1, 2]], "3 rows of 7 (padded: 5 x 6)");
        assert_eq!(pack(&[2, 2, 2, 2], 8), vec![vec![0, 1, 2, 3]]);
        // Four items of 83 in rows of 256 would be 3 + 1 (2 x 249 tokens); rows of 166 lay
        // them out in 2 x 166, as padding would (4 x 83), in half the rows.
        assert_eq!(pack(&[83, 83, 83, 83], 256), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(pack(&[120, 130, 256, 110], 256), vec![vec![2], vec![0, 1], vec![3]], "768 tokens, padded 1,024");
        assert!(pack(&[], 8).is_empty());
    }

    #[test]
    fn packed_rows_keep_every_target_and_position() {
        let e = |ids: Vec<i64>, target: Vec<bool>| Encoded { ids, target, truncated: false };
        let (a, b, c) = (e(vec![1, 2, 3], vec![false, true, true]), e(vec![4, 5], vec![false, true]), e(vec![6, 7, 8, 9], vec![false, false, true, true]));
        let batch = Batch::packed(&[&a, &b, &c], 6, 0, Device::Cpu);
        let flat = |t: &Tensor| Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap();
        // Rows of 5 (2 x 5 tokens; rows of 6 would take 12, padding 12): [c] padded, [a, b].
        assert_eq!(flat(&batch.ids), [6., 7., 8., 9., 0., 1., 2., 3., 4., 5.]);
        // Targets: c's last two; a's last two and b's second. A sequence's first token is never
        // a target (it would be predicted from the one before, of another sequence).
        assert_eq!(flat(&batch.target_mask), [0., 1., 1., 0., 1., 1., 0., 1.]);
        assert_eq!((batch.n_targets, batch.first_target, batch.pad_tokens), (a.n_targets() + b.n_targets() + c.n_targets(), 0, 1));
        let ctx = batch.ctx.expect("packed rows have their own context");
        assert_eq!(flat(&ctx.positions), [0., 1., 2., 3., 0., 0., 1., 2., 0., 1.]);
        let visible = ctx.visible.expect("which keys each query sees");
        // b's second token sees b only; the padding sees only itself.
        assert_eq!(flat(&visible.get(1).get(4)), [0., 0., 0., 1., 1.]);
        assert_eq!(flat(&visible.get(0).get(4)), [0., 0., 0., 0., 1.]);
        assert_eq!(flat(&visible.get(0).get(3)), [1., 1., 1., 1., 0.]);
    }
}

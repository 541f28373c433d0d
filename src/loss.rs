//! Losses of the distillation recipes, as pure functions with the paper's shapes.
//!
//! - DPCA credit assignment (arXiv 2606.09456; DESIGN.md section 1, step 5) on plain slices.
//! - The PPO-clip surrogate with dual clip (verl's `compute_policy_loss`, token mean by caller).
//! - Baselines: ALM's binary cross-entropy of chunk likelihoods (tokenkit `compute_alm_loss`),
//!   ULD's sorted-probability L1 (Boizard et al. 2024), and GOLD's merged-group hybrid of a
//!   generalized JSD on exact vocabulary matches and sorted L1 on the rest
//!   (TRL `trl/experimental/gold`, "observed" merge).
use crate::align::Chunk;
use std::collections::HashMap;
use std::ops::Range;
use tch::{Kind, Tensor};

/// Advantages of every student token from aligned chunks: for a chunk with teacher
/// log-likelihood `L_T = Σ log q_j` and student `L_S = Σ log p_i` (old, detached), each student
/// token gets `A_i = (L_T / L_S − 1) · log p_i`, so a chunk's advantages sum to `L_T − L_S`
/// and a 1:1 chunk gets `log q_i − log p_i`. When `|L_S| < 1e-8`, `L_T` is spread evenly
/// (`A_i = L_T / n_s − log p_i`). Masked chunks and uncovered tokens get 0. Results are
/// clamped to `[-clamp, clamp]`.
pub fn chunk_advantages(chunks: &[Chunk], logp: &[f32], logq: &[f32], clamp: f32) -> Vec<f32> {
    let mut adv = vec![0f32; logp.len()];
    for c in chunks.iter().filter(|c| !c.is_masked()) {
        let lt: f64 = logq[c.teacher.clone()].iter().map(|&x| x as f64).sum();
        let ls: f64 = logp[c.student.clone()].iter().map(|&x| x as f64).sum();
        for i in c.student.clone() {
            let p = logp[i] as f64;
            let a = if ls.abs() < 1e-8 { lt / c.student.len() as f64 - p } else { (lt / ls - 1.0) * p };
            adv[i] = (a as f32).clamp(-clamp, clamp);
        }
    }
    adv
}

/// PPO clip ranges: ratio clipped to `[1 − low, 1 + high]`; for negative advantages the loss
/// is also capped at `−A · dual` (dual clip).
#[derive(Debug, Clone, Copy)]
pub struct PpoClip {
    pub low: f64,
    pub high: f64,
    pub dual: f64,
}

/// Per-token PPO-clip losses and a 0/1 tensor of the tokens where clipping changed the loss.
/// All inputs share one shape; `ratio = exp(new − old)`.
pub fn ppo_surrogate(new_logp: &Tensor, old_logp: &Tensor, adv: &Tensor, clip: PpoClip) -> (Tensor, Tensor) {
    let ratio = (new_logp - old_logp).exp();
    let l1 = -adv * &ratio;
    let l2 = -adv * ratio.clamp(1.0 - clip.low, 1.0 + clip.high);
    let clipped = l1.maximum(&l2);
    let clip_frac = l2.gt_tensor(&l1).to_kind(Kind::Float);
    let dual = (-adv * clip.dual).minimum(&clipped);
    let loss = dual.where_self(&adv.lt(0.0), &clipped);
    (loss, clip_frac)
}

/// ALM's binary cross-entropy between chunk likelihoods at temperature `tau`:
/// with `a = L_T/τ − ε`, `b = L_S/τ − ε`: `−(e^a · b + (1 − e^a) · log(1 − e^b))`, per chunk.
pub fn alm_binary_ce(ls: &Tensor, lt: &Tensor, tau: f64) -> Tensor {
    let eps = 1e-6;
    let a = lt / tau - eps;
    let b = ls / tau - eps;
    let pa = a.exp();
    // log(1 − e^b) = log(−expm1(b)), stable for b close to 0.
    let log1m: Tensor = (-b.expm1()).log();
    let one_minus: Tensor = -&pa + 1.0;
    -(&pa * &b + one_minus * log1m)
}

/// ULD's distance between matched rows of two probability matrices (rows, V_s) and (rows, V_t):
/// each row sorted descending, the shorter vocabulary zero-padded, L1 summed, divided by rows.
pub fn sorted_l1(student: &Tensor, teacher: &Tensor) -> Tensor {
    let rows = student.size()[0].max(1);
    let (s, _) = student.sort(-1, true);
    let (t, _) = teacher.sort(-1, true);
    let (vs, vt) = (s.size()[1], t.size()[1]);
    let s = if vs < vt { s.constant_pad_nd([0, vt - vs]) } else { s };
    let t = if vt < vs { t.constant_pad_nd([0, vs - vt]) } else { t };
    (s - t).abs().sum(Kind::Float) / rows as f64
}

/// GOLD's "observed" merge: for each group of positions, the first position's distribution
/// times the probabilities of the tokens actually emitted at the later positions (unnormalised
/// on purpose). `probs` is (len, vocab), `ids[k]` the token at position k. Returns (groups, vocab).
pub fn merge_observed(probs: &Tensor, groups: &[Range<usize>], ids: &[i64]) -> Tensor {
    let rows: Vec<Tensor> = groups
        .iter()
        .map(|g| {
            let base = probs.get(g.start as i64);
            g.clone().skip(1).fold(base, |acc, k| acc * probs.get(k as i64).get(ids[k]).clamp_min(1e-8))
        })
        .collect();
    Tensor::stack(&rows, 0)
}

/// Generalized Jensen-Shannon divergence between probability rows (batchmean: summed over the
/// vocabulary, averaged over rows). `beta` = 0 is KL(teacher‖student), 1 is KL(student‖teacher).
pub fn generalized_jsd(student: &Tensor, teacher: &Tensor, beta: f64) -> Tensor {
    let rows = student.size()[0].max(1) as f64;
    jsd_per_position(&student.clamp_min(1e-8).log(), &teacher.clamp_min(1e-8).log(), beta).sum(Kind::Float) / rows
}

/// The generalized JSD of GKD (arXiv 2306.13649) between log-probability tensors (..., V),
/// summed over the last dimension: one value per position. Written as TRL's
/// `GKDTrainer.generalized_jsd_loss` computes it: `beta` = 0 is KL(teacher ‖ student) (forward
/// KL), 1 is KL(student ‖ teacher) (reverse KL), and in between
/// `beta·KL(t ‖ m) + (1 − beta)·KL(s ‖ m)` with the mixture `m = beta·t + (1 − beta)·s`.
pub fn jsd_per_position(student: &Tensor, teacher: &Tensor, beta: f64) -> Tensor {
    // KL(x ‖ y) from log inputs: Σ e^x (x − y).
    let kl = |x: &Tensor, y: &Tensor| (x.exp() * (x - y)).sum_dim_intlist(-1, false, x.kind());
    if beta == 0.0 {
        return kl(teacher, student);
    }
    if beta == 1.0 {
        return kl(student, teacher);
    }
    let mix = Tensor::stack(&[student + (1.0 - beta).ln(), teacher + beta.ln()], 0).logsumexp([0], false);
    kl(teacher, &mix) * beta + kl(student, &mix) * (1.0 - beta)
}

/// The per-position divergence of the full-distribution losses from student and teacher
/// logits (..., V) over one vocabulary: both at `temperature`, optionally restricted to the
/// teacher's `top_k` tokens plus a tail bucket, then `jsd_per_position` with `beta`. With a
/// mask and a token mean over it, this is TRL's `GKDTrainer.generalized_jsd_loss`.
pub fn distill_divergence(student: &Tensor, teacher: &Tensor, beta: f64, temperature: f64, top_k: Option<usize>) -> Tensor {
    let s = (student / temperature).log_softmax(-1, student.kind());
    let t = (teacher / temperature).log_softmax(-1, teacher.kind());
    let (s, t) = match top_k {
        Some(k) => top_k_with_tail(&s, &t, k as i64),
        None => (s, t),
    };
    jsd_per_position(&s, &t, beta)
}

/// Restricts two log-distributions (..., V) to the teacher's top-k tokens of each position plus
/// one tail bucket holding the rest of each side's mass: (..., k + 1) log-probabilities, as
/// verl's `forward_kl_topk` and NeMo RL's top-k distillation do for large vocabularies.
pub fn top_k_with_tail(student: &Tensor, teacher: &Tensor, k: i64) -> (Tensor, Tensor) {
    let k = k.min(teacher.size()[teacher.dim() - 1]);
    let (t_top, ids) = teacher.topk(k, -1, true, true);
    let s_top = student.gather(-1, &ids, false);
    // log(1 − Σ p) = log(−expm1(logsumexp(log p))), floored so a full top-k keeps a finite tail.
    let tail = |top: &Tensor| (-top.logsumexp([-1], true).clamp_max(-1e-7).expm1()).log();
    (Tensor::cat(&[&s_top, &tail(&s_top)], -1), Tensor::cat(&[&t_top, &tail(&t_top)], -1))
}

/// A group-mean baseline for per-token advantages: `groups` lists the rollouts (indices into
/// `adv`) sampled from one prompt; each rollout's unmasked advantages (where `mask` is 1) lose
/// the group's mean advantage per unmasked token. Rollouts alone in their group are unchanged.
pub fn subtract_group_mean(adv: &mut [Vec<f32>], mask: &[Vec<f32>], groups: &[Vec<usize>]) {
    for g in groups.iter().filter(|g| g.len() > 1) {
        let (sum, n) = g.iter().flat_map(|&r| adv[r].iter().zip(&mask[r])).filter(|(_, &m)| m > 0.0).fold((0f64, 0usize), |(s, n), (&a, _)| (s + a as f64, n + 1));
        if n == 0 {
            continue;
        }
        let mean = (sum / n as f64) as f32;
        for &r in g {
            for (a, &m) in adv[r].iter_mut().zip(&mask[r]) {
                if m > 0.0 {
                    *a -= mean;
                }
            }
        }
    }
}

/// Token ids whose strings are identical in both vocabularies (GOLD's hybrid mapping).
pub struct VocabMatch {
    pub student: Tensor,
    pub teacher: Tensor,
    pub student_rest: Tensor,
    pub teacher_rest: Tensor,
    /// Matched tokens over the teacher's vocabulary size: GOLD's adaptive matched weight.
    pub matched_fraction: f64,
}

impl VocabMatch {
    pub fn new(student_vocab: &HashMap<String, u32>, teacher_vocab: &HashMap<String, u32>, student_size: i64, teacher_size: i64) -> Self {
        let mut pairs: Vec<(i64, i64)> = teacher_vocab
            .iter()
            .filter_map(|(tok, &t)| student_vocab.get(tok).map(|&s| (t as i64, s as i64)))
            .filter(|&(t, s)| t < teacher_size && s < student_size)
            .collect();
        pairs.sort();
        let (teacher, student): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
        let rest = |size: i64, used: &[i64]| {
            let mut keep = vec![true; size as usize];
            used.iter().for_each(|&i| keep[i as usize] = false);
            let ids: Vec<i64> = (0..size).filter(|&i| keep[i as usize]).collect();
            Tensor::from_slice(&ids)
        };
        Self {
            student_rest: rest(student_size, &student),
            teacher_rest: rest(teacher_size, &teacher),
            matched_fraction: teacher.len() as f64 / teacher_size.max(1) as f64,
            student: Tensor::from_slice(&student),
            teacher: Tensor::from_slice(&teacher),
        }
    }

    pub fn to_device(&self, device: tch::Device) -> Self {
        Self {
            student: self.student.to_device(device),
            teacher: self.teacher.to_device(device),
            student_rest: self.student_rest.to_device(device),
            teacher_rest: self.teacher_rest.to_device(device),
            matched_fraction: self.matched_fraction,
        }
    }
}

/// GOLD's hybrid loss on merged rows: generalized JSD on the matched vocabulary (weight
/// `matched`, default the matched fraction) plus sorted L1 on the unmatched rest.
pub fn gold_hybrid(student: &Tensor, teacher: &Tensor, m: &VocabMatch, beta: f64, weights: Option<(f64, f64)>) -> Tensor {
    let (wm, wu) = weights.unwrap_or((m.matched_fraction, 1.0 - m.matched_fraction));
    let matched = if m.student.numel() > 0 {
        generalized_jsd(&student.index_select(1, &m.student), &teacher.index_select(1, &m.teacher), beta)
    } else {
        Tensor::zeros([], (Kind::Float, student.device()))
    };
    let unmatched = sorted_l1(&student.index_select(1, &m.student_rest), &teacher.index_select(1, &m.teacher_rest));
    matched * wm + unmatched * wu
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::Masked;

    fn chunk(s: Range<usize>, t: Range<usize>, masked: Masked) -> Chunk {
        Chunk { student: s, teacher: t, masked }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn credit_assignment_by_hand() {
        // Chunk 0 is 1:1; chunk 1 is 2 student tokens to 3 teacher tokens; chunk 2 is masked.
        let chunks = vec![
            chunk(0..1, 0..1, Masked::No),
            chunk(1..3, 1..4, Masked::No),
            chunk(3..4, 4..5, Masked::TooLong),
        ];
        let logp = [-1.0f32, -0.5, -1.5, -2.0];
        let logq = [-0.25f32, -0.25, -0.5, -0.25, -3.0];
        let a = chunk_advantages(&chunks, &logp, &logq, 10.0);
        // 1:1: log q − log p = −0.25 + 1 = 0.75.
        assert!(close(a[0] as f64, 0.75));
        // L_T = −1, L_S = −2: A_i = (0.5 − 1) · log p_i.
        assert!(close(a[1] as f64, 0.25) && close(a[2] as f64, 0.75));
        // The chunk's advantages sum to L_T − L_S = 1.
        assert!(close((a[1] + a[2]) as f64, 1.0));
        assert_eq!(a[3], 0.0);
    }

    #[test]
    fn credit_assignment_spreads_when_the_student_is_certain_and_clamps() {
        let chunks = vec![chunk(0..2, 0..1, Masked::No), chunk(2..3, 1..2, Masked::No)];
        let logp = [0.0f32, 0.0, -0.1];
        let logq = [-1.0f32, -50.0];
        let a = chunk_advantages(&chunks, &logp, &logq, 10.0);
        assert!(close(a[0] as f64, -0.5) && close(a[1] as f64, -0.5));
        assert_eq!(a[2], -10.0, "clamped");
    }

    #[test]
    fn ppo_surrogate_by_hand() {
        let clip = PpoClip { low: 0.2, high: 0.28, dual: 10.0 };
        let old = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).log_softmax(0, Kind::Float) * 0.0;
        // ratios: 1, e^0.5 ≈ 1.6487, e^-0.5 ≈ 0.6065, e^3 ≈ 20.09
        let new = Tensor::from_slice(&[0.0f32, 0.5, -0.5, 3.0]);
        let adv = Tensor::from_slice(&[1.0f32, 1.0, -1.0, -1.0]);
        let (loss, clipped) = ppo_surrogate(&new, &old, &adv, clip);
        let l: Vec<f32> = Vec::try_from(loss).unwrap();
        let c: Vec<f32> = Vec::try_from(clipped).unwrap();
        assert!(close(l[0] as f64, -1.0));
        // A > 0, ratio above 1.28: the clipped term −1.28 is the max.
        assert!(close(l[1] as f64, -1.28));
        // A < 0, ratio below 0.8: max(0.6065, 0.8) = 0.8.
        assert!(close(l[2] as f64, 0.8));
        // A < 0, ratio 20: max(20.09, 1.28) = 20.09, dual clip caps it at 10.
        assert!(close(l[3] as f64, 10.0));
        assert_eq!(c, vec![0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn alm_by_hand() {
        let ls = Tensor::from_slice(&[-2.0f64]);
        let lt = Tensor::from_slice(&[-1.0f64]);
        let d = alm_binary_ce(&ls, &lt, 100.0).double_value(&[0]);
        let (a, b): (f64, f64) = (-1.0 / 100.0 - 1e-6, -2.0 / 100.0 - 1e-6);
        let want = -(a.exp() * b + (1.0 - a.exp()) * (1.0 - b.exp()).ln());
        assert!((d - want).abs() < 1e-9, "{d} vs {want}");
        // The gradient pushes L_S towards L_T.
        let ls = Tensor::from_slice(&[-2.0f64]).set_requires_grad(true);
        alm_binary_ce(&ls, &lt, 100.0).sum(Kind::Double).backward();
        assert!(ls.grad().double_value(&[0]) < 0.0);
    }

    #[test]
    fn sorted_l1_ignores_token_identity() {
        let s = Tensor::from_slice(&[0.7f32, 0.2, 0.1]).view([1, 3]);
        let t = Tensor::from_slice(&[0.1f32, 0.7, 0.2, 0.0]).view([1, 4]);
        assert!(close(sorted_l1(&s, &t).double_value(&[]), 0.0));
        let t = Tensor::from_slice(&[0.5f32, 0.5]).view([1, 2]);
        assert!(close(sorted_l1(&s, &t).double_value(&[]), 0.2 + 0.3 + 0.1));
    }

    #[test]
    fn merge_and_jsd_by_hand() {
        let probs = Tensor::from_slice(&[0.5f32, 0.5, 0.25, 0.75]).view([2, 2]);
        let m = merge_observed(&probs, std::slice::from_ref(&(0..2)), &[0, 1]);
        let v: Vec<f32> = Vec::try_from(m.view([-1])).unwrap();
        assert!(close(v[0] as f64, 0.375) && close(v[1] as f64, 0.375));
        let p = Tensor::from_slice(&[0.5f32, 0.5]).view([1, 2]);
        let q = Tensor::from_slice(&[0.9f32, 0.1]).view([1, 2]);
        let kl_qp = 0.9f64 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln();
        assert!(close(generalized_jsd(&p, &q, 0.0).double_value(&[]), kl_qp));
        assert!(close(generalized_jsd(&p, &p, 0.5).double_value(&[]), 0.0));
        let j = generalized_jsd(&p, &q, 0.5).double_value(&[]);
        let m = [0.7f64, 0.3];
        let want = 0.5 * (0.9 * (0.9 / m[0]).ln() + 0.1 * (0.1 / m[1]).ln()) + 0.5 * (0.5 * (0.5 / m[0]).ln() + 0.5 * (0.5 / m[1]).ln());
        assert!(close(j, want), "{j} vs {want}");
    }

    #[test]
    fn jsd_per_position_limits_and_top_k_tail() {
        let s = Tensor::from_slice(&[0.6f64, 0.3, 0.1, 0.5, 0.25, 0.25]).view([2, 3]).log();
        let t = Tensor::from_slice(&[0.2f64, 0.7, 0.1, 0.5, 0.25, 0.25]).view([2, 3]).log();
        let fwd: Vec<f64> = Vec::try_from(jsd_per_position(&s, &t, 0.0)).unwrap();
        let want = 0.2 * (0.2f64 / 0.6).ln() + 0.7 * (0.7f64 / 0.3).ln();
        assert!(close(fwd[0], want) && close(fwd[1], 0.0), "{fwd:?}");
        let rev: Vec<f64> = Vec::try_from(jsd_per_position(&s, &t, 1.0)).unwrap();
        assert!(close(rev[0], 0.6 * (0.6f64 / 0.2).ln() + 0.3 * (0.3f64 / 0.7).ln()));
        // Near the ends the mixture form tends to the KLs, scaled by beta and 1 − beta.
        let near: f64 = jsd_per_position(&s, &t, 1e-6).double_value(&[0]);
        assert!((near / 1e-6 - want).abs() < 1e-3, "{near}");
        // Top-2 of the teacher (ids 1 and 0) and a tail bucket on each side.
        let (sk, tk) = top_k_with_tail(&s, &t, 2);
        let sk: Vec<f64> = Vec::try_from(sk.exp().view([-1])).unwrap();
        let tk: Vec<f64> = Vec::try_from(tk.exp().view([-1])).unwrap();
        for (a, b) in sk[..3].iter().zip([0.3, 0.6, 0.1]) {
            assert!(close(*a, b), "{sk:?}");
        }
        for (a, b) in tk[..3].iter().zip([0.7, 0.2, 0.1]) {
            assert!(close(*a, b), "{tk:?}");
        }
        // With k = V the tail is (almost) empty and the divergence is the full one.
        let (sk, tk) = top_k_with_tail(&s, &t, 3);
        assert!((jsd_per_position(&sk, &tk, 0.0).double_value(&[0]) - want).abs() < 1e-5);
    }

    #[test]
    fn group_mean_baseline_centres_each_group() {
        let mut adv = vec![vec![1.0f32, 3.0, 9.0], vec![-2.0, 0.0], vec![5.0]];
        let mask = vec![vec![1.0f32, 1.0, 0.0], vec![1.0, 1.0], vec![1.0]];
        subtract_group_mean(&mut adv, &mask, &[vec![0, 1], vec![2]]);
        // Group 0: unmasked advantages 1, 3, −2, 0 have mean 0.5; the masked 9 is untouched.
        assert_eq!(adv, vec![vec![0.5, 2.5, 9.0], vec![-2.5, -0.5], vec![5.0]]);
    }
}

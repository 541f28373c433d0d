//! The teacher's distribution over the student's own candidate tokens, across tokenizers.
//!
//! DPCA tells the student how much the teacher likes the text it sampled; where the student is
//! wrong it only says "not this". At a position where a DPCA chunk starts, the texts of both
//! sides agree up to a token boundary of each, so the teacher can score any candidate student
//! token: the probability that it writes that token's text next. Scoring the student's top-k
//! tokens there (and its sampled one) gives the teacher's distribution over the student's own
//! choices, and training the student's distribution over them toward it names the right token
//! wherever the teacher knows it (GKD's full-distribution signal, restricted to candidates,
//! in the student's vocabulary).
//!
//! Rules (each tested in `tests/candidates.rs`):
//! - Positions: the first student token of every unmasked chunk (`positions: all`), or only of
//!   chunks with `L_T − L_S` below a threshold (`disagree`). The end-of-turn chunk counts.
//! - A candidate's teacher tokens: the teacher's canonical encoding of its own rendering of the
//!   conversation, the response text before the position, and the candidate's text. The
//!   candidate is scored only when that encoding keeps the teacher's tokens of everything
//!   before the position unchanged (its text does not merge with the prefix), its own tokens
//!   spell exactly its text, and they are at most K (DPCA's `max_chunk_tokens`). With a shared
//!   vocabulary the candidate is its own teacher token. For speed the encoding runs on a window
//!   from the last teacher token before the position that is whitespace-led or follows a line
//!   end, accepted only when it reproduces the teacher's tokens of the window; otherwise on the
//!   whole text (tested equal). Windows are cached for the run.
//! - Text that is not whole UTF-8 characters (a byte-fallback piece of a character) cannot be
//!   scored by text and is left out; so are special tokens, except the student's end tokens,
//!   which are scored by the teacher's end-of-turn token.
//! - Exclusive events. A student token means "this text, and then the student's next token":
//!   if the student writes "1" it did not write "12". When one candidate's teacher tokens are a
//!   proper prefix of another's ("1" → `1`; "12" → `1 2`), the shorter one's probability is
//!   the teacher's probability of its tokens minus that of its minimal extensions among the
//!   candidates, so "1" is not credited with the mass of "12" and "123". Candidates whose
//!   teacher tokens are not nested are disjoint events already.
//! - The candidates' exclusive probabilities are renormalised over the scored candidates;
//!   positions with fewer than two scored candidates are skipped.
//!
//! Scoring runs one no-grad teacher pass per micro-batch of rollouts with tree attention: each
//! row holds the rollout's teacher sequence followed by the inner nodes of every position's
//! trie of candidate paths; a node sees the teacher tokens before its position and its own
//! ancestors, at the rotary positions it would have in its own sequence. Equal to scoring each
//! candidate as its own sequence (tested).
use super::rollout::{Rollout, Scored};
use super::teacher::{teacher_encode, Teacher};
use crate::recipes::side::Side;
use crate::align::Masked;
use crate::nn::attention::Context;
use crate::recipes::opd::config::{CandidatePositions, CandidateSpec};
use crate::train::dist::Dist;
use anyhow::Result;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};


/// What candidate scoring did in one step.
#[derive(Debug, Default)]
pub struct CandidateStats {
    pub positions: usize,
    pub candidates: usize,
    /// Teacher tokens run in the scoring passes (the rollouts' sequences and the tree nodes).
    pub teacher_tokens: usize,
    /// Positions where the teacher's most likely candidate is not the student's sampled token.
    pub top_differs: usize,
    pub teacher_mass: f64,
    pub student_mass: f64,
}

impl CandidateStats {
    /// The step's statistics over every rank (each rank scored its own prompts' candidates).
    pub fn over_ranks(self, dist: &Dist) -> Result<Self> {
        let local = [self.positions as f64, self.candidates as f64, self.teacher_tokens as f64, self.top_differs as f64, self.teacher_mass, self.student_mass];
        let t = dist.sum(&local, "summing the candidate statistics")?;
        Ok(Self { positions: t[0] as usize, candidates: t[1] as usize, teacher_tokens: t[2] as usize, top_differs: t[3] as usize, teacher_mass: t[4], student_mass: t[5] })
    }

    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let p = self.positions.max(1) as f64;
        vec![
            ("cand/positions", self.positions as f64),
            ("cand/candidates_per_position", self.candidates as f64 / p),
            ("cand/teacher_top_differs", self.top_differs as f64 / p),
            ("cand/teacher_mass", self.teacher_mass / p),
            ("cand/student_mass", self.student_mass / p),
            ("cand/teacher_tokens", self.teacher_tokens as f64),
        ]
    }
}

/// The teacher tokens that spell candidate `id` after the first `prefix` teacher tokens of
/// `r` (whose response text before the position is `text_before`), or `None` when the rules
/// leave it out.
pub fn candidate_path<M>(student: &Side, teacher: &Side<M>, r: &Rollout, prefix: usize, text_before: &[u8], id: i64, k: usize, cache: &mut PathCache) -> Result<Option<Vec<i64>>> {
    let stops = student.tok.eos_ids.contains(&id) || id == student.eot;
    if stops {
        return Ok(Some(vec![teacher.eot]));
    }
    let table = student.tok.pieces();
    if table.special.get(id as usize) == Some(&true) {
        return Ok(None);
    }
    if teacher.same_vocab {
        return Ok(Some(vec![id]));
    }
    let Some(piece) = table.bytes.get(id as usize) else { return Ok(None) };
    let (Ok(before), Ok(cand)) = (std::str::from_utf8(text_before), std::str::from_utf8(piece)) else { return Ok(None) };
    if cand.is_empty() {
        return Ok(None);
    }
    let tpieces = teacher.tok.pieces();
    // Encoding the whole conversation for every candidate is slow; a window from the last
    // teacher token before the position that starts with whitespace or follows a line end
    // (where byte-level pre-tokenizers start a new word) gives the same tokens when it
    // reproduces the teacher's own tokens up to the position, which is checked. Otherwise the
    // whole text is encoded.
    let tpiece = |t: i64| tpieces.bytes.get(t as usize).map_or(&[][..], |b| b.as_slice());
    let lowest = prefix.saturating_sub(WINDOW).max(r.teacher_start);
    let starts_word = |a: usize| tpiece(r.teacher_ids[a]).first().is_some_and(|b| b.is_ascii_whitespace());
    let after_line = |a: usize| a > 0 && tpiece(r.teacher_ids[a - 1]).last() == Some(&b'\n');
    let anchor = (lowest..prefix).rev().find(|&a| starts_word(a) || after_line(a));
    let windowed = anchor.and_then(|a| {
        let window = &r.teacher_ids[a..prefix];
        cache.0.entry((window.to_vec(), id)).or_insert_with(|| {
            let mut text: Vec<u8> = window.iter().flat_map(|&t| tpiece(t).to_vec()).collect();
            text.extend_from_slice(cand.as_bytes());
            let text = String::from_utf8(text).ok()?;
            let ids = teacher.tok.encode(&text, false).ok()?;
            let n = window.len();
            (ids.len() > n && ids[..n] == *window).then(|| ids[n..].to_vec())
        }).clone()
    });
    let path = match windowed {
        Some(path) => path,
        None => {
            let text = format!("{}{before}{cand}", r.teacher_prompt);
            let (ids, _) = teacher_encode(teacher, &text)?;
            if ids.len() <= prefix || ids[..prefix] != r.teacher_ids[..prefix] {
                return Ok(None);
            }
            ids[prefix..].to_vec()
        }
    };
    if path.len() > k {
        return Ok(None);
    }
    let spelled: Vec<u8> = path.iter().flat_map(|&t| tpieces.bytes.get(t as usize).cloned().unwrap_or_default()).collect();
    Ok((spelled == piece.as_slice()).then_some(path))
}

/// How many teacher tokens back `candidate_path` looks for a window's start.
const WINDOW: usize = 8;

/// The windowed encodings `candidate_path` has made in this run: (the window's teacher tokens,
/// the candidate) → the candidate's teacher tokens, or `None` where the window did not
/// reproduce itself. Encoding is deterministic, so a hit is exact. Measured before windows
/// could start after a line end, it saved no measurable time (BENCHMARKS.md); its hit rate
/// since is not measured. Cleared when it reaches `PathCache::MAX` entries.
#[derive(Default)]
pub struct PathCache(HashMap<(Vec<i64>, i64), Option<Vec<i64>>>);

impl PathCache {
    const MAX: usize = 1 << 20;
}

/// Exclusive probabilities of candidates from the log-probabilities of their teacher paths:
/// a candidate whose path is a proper prefix of others loses the probability of its minimal
/// extensions (those with no other candidate path between). Returns log-probabilities; an
/// exclusive probability that rounding leaves at or below zero becomes 1e-12 of its path's.
pub fn exclusive_logprobs(paths: &[Vec<i64>], logp: &[f64]) -> Vec<f64> {
    let is_prefix = |a: &[i64], b: &[i64]| a.len() < b.len() && b[..a.len()] == *a;
    (0..paths.len())
        .map(|a| {
            let ext: Vec<usize> = (0..paths.len()).filter(|&b| is_prefix(&paths[a], &paths[b])).collect();
            let minimal = ext.iter().filter(|&&b| !ext.iter().any(|&c| c != b && is_prefix(&paths[c], &paths[b])));
            let taken: f64 = minimal.map(|&b| logp[b].exp()).sum();
            let p = logp[a].exp();
            if p - taken > 1e-12 * p {
                (p - taken).ln()
            } else {
                logp[a] + (1e-12f64).ln()
            }
        })
        .collect()
}

/// One position to score: its rollout, student index, teacher prefix length (prompt included)
/// and its candidates with their teacher paths.
struct Site {
    rollout: usize,
    pos: usize,
    prefix: usize,
    ids: Vec<i64>,
    paths: Vec<Vec<i64>>,
}

/// Chooses the positions of `r`, finds every candidate's teacher path, and returns them.
fn sites<M>(spec: &CandidateSpec, student: &Side, teacher: &Side<M>, index: usize, r: &Rollout, k_tokens: usize, cache: &mut PathCache) -> Result<Vec<Site>> {
    if r.truncated || r.top.is_empty() {
        return Ok(vec![]);
    }
    let table = student.tok.pieces();
    let mut out = Vec::new();
    for c in r.chunks.iter().filter(|c| c.masked == Masked::No) {
        if spec.positions == CandidatePositions::Disagree {
            let lt: f64 = r.logq[c.teacher.clone()].iter().map(|&x| x as f64).sum();
            let ls: f64 = r.old_logp[c.student.clone()].iter().map(|&x| x as f64).sum();
            if lt - ls >= spec.threshold {
                continue;
            }
        }
        let pos = c.student.start;
        let text_before: Vec<u8> = r.response[..pos].iter().flat_map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
        let prefix = r.teacher_start + c.teacher.start;
        let mut ids: Vec<i64> = r.top[pos].iter().map(|&(i, _)| i).collect();
        if !ids.contains(&r.response[pos]) {
            ids.push(r.response[pos]);
        }
        let mut site = Site { rollout: index, pos, prefix, ids: vec![], paths: vec![] };
        for id in ids {
            if let Some(path) = candidate_path(student, teacher, r, prefix, &text_before, id, k_tokens, cache)? {
                if !site.paths.contains(&path) {
                    site.ids.push(id);
                    site.paths.push(path);
                }
            }
        }
        if site.ids.len() >= 2 {
            out.push(site);
        }
    }
    Ok(out)
}

/// A tree-attention row: the rollout's teacher ids, then one node per inner trie prefix of its
/// sites' candidate paths. `at[(site, path prefix)]` is the row index whose logits predict the
/// next path token (for the empty prefix: the last teacher token before the site).
struct TreeRow {
    ids: Vec<i64>,
    positions: Vec<i64>,
    /// For each token: the row index of its parent node (the previous main token for main
    /// tokens, none for the first), and the site's prefix length for a node's root.
    parent: Vec<Option<usize>>,
    /// Nodes only: the prefix of main tokens they see.
    sees_main: Vec<usize>,
    at: HashMap<(usize, Vec<i64>), usize>,
}

fn tree_row(main: &[i64], sites: &[(usize, &Site)]) -> TreeRow {
    let n = main.len();
    let mut row = TreeRow { ids: main.to_vec(), positions: (0..n as i64).collect(), parent: (0..n).map(|i| i.checked_sub(1)).collect(), sees_main: vec![0; n], at: HashMap::new() };
    for &(si, site) in sites {
        row.at.insert((si, vec![]), site.prefix - 1);
        for path in &site.paths {
            for d in 1..path.len() {
                let key = (si, path[..d].to_vec());
                if row.at.contains_key(&key) {
                    continue;
                }
                let parent = if d == 1 { None } else { Some(row.at[&(si, path[..d - 1].to_vec())]) };
                row.at.insert(key, row.ids.len());
                row.ids.push(path[d - 1]);
                row.positions.push((site.prefix + d - 1) as i64);
                row.parent.push(parent);
                row.sees_main.push(site.prefix);
            }
        }
    }
    row
}

/// Scores the candidates of every rollout (no grad) and fills `Rollout::scored`. With
/// `with_logq` the same pass also gives log q of every rollout's response tokens (as
/// `score_teacher` does), so `positions: all` needs one teacher pass per step, not two.
pub fn score_candidates(spec: &CandidateSpec, student: &Side, teacher: &Teacher, rollouts: &mut [Rollout], micro: usize, k_tokens: usize, with_logq: bool, cache: &mut PathCache) -> Result<CandidateStats> {
    let model = teacher.model.local()?;
    let _g = tch::no_grad_guard();
    let mut stats = CandidateStats::default();
    if cache.0.len() >= PathCache::MAX {
        cache.0.clear();
    }
    let all: Vec<Site> = rollouts.iter().enumerate().map(|(i, r)| sites(spec, student, teacher, i, r, k_tokens, cache)).collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
    let with_sites: Vec<usize> = if with_logq {
        (0..rollouts.len()).filter(|&i| !rollouts[i].truncated).collect()
    } else {
        let mut v: Vec<usize> = all.iter().map(|s| s.rollout).collect();
        v.dedup();
        v
    };
    let device = teacher.device();
    let mut path_logp: Vec<Vec<f64>> = all.iter().map(|s| vec![0.0; s.paths.len()]).collect();
    for group in with_sites.chunks(micro.max(1)) {
        let site_ids: Vec<Vec<(usize, &Site)>> = group.iter().map(|&ri| all.iter().enumerate().filter(|(_, s)| s.rollout == ri).collect()).collect();
        let rows: Vec<TreeRow> = group.iter().zip(&site_ids).map(|(&ri, s)| tree_row(&rollouts[ri].teacher_ids, s)).collect();
        let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
        let b = rows.len();
        let (mut ids, mut pos, mut vis) = (vec![teacher.tok.pad_id; b * t], vec![0i64; b * t], vec![false; b * t * t]);
        for (bi, row) in rows.iter().enumerate() {
            let n_main = rollouts[group[bi]].teacher_ids.len();
            for q in 0..t {
                let cell = |k: usize| bi * t * t + q * t + k;
                if q >= row.ids.len() {
                    vis[cell(q)] = true; // padding sees itself only
                    continue;
                }
                ids[bi * t + q] = row.ids[q];
                pos[bi * t + q] = row.positions[q];
                if q < n_main {
                    (0..=q).for_each(|k| vis[cell(k)] = true);
                } else {
                    (0..row.sees_main[q]).for_each(|k| vis[cell(k)] = true);
                    let mut a = Some(q);
                    while let Some(x) = a {
                        vis[cell(x)] = true;
                        a = row.parent[x];
                    }
                }
            }
            stats.teacher_tokens += row.ids.len();
        }
        let ids_t = Tensor::from_slice(&ids).view([b as i64, t as i64]).to_device(device);
        let ctx = Context::tree(Tensor::from_slice(&pos).view([b as i64, t as i64]).to_device(device), Tensor::from_slice(&vis).view([b as i64, t as i64, t as i64]).to_device(device));
        let hidden = model.blocks(&ids_t, &ctx, None);
        if with_logq {
            for (bi, &ri) in group.iter().enumerate() {
                let r = &mut rollouts[ri];
                let (s, n) = (r.teacher_start as i64, r.teacher_ids.len() as i64);
                let logits = model.head(&hidden.get(bi as i64).narrow(0, s - 1, n - s));
                let targets = Tensor::from_slice(&r.teacher_ids[s as usize..]).to_device(device).unsqueeze(1);
                r.logq = Vec::<f32>::try_from(logits.log_softmax(-1, Kind::Float).gather(1, &targets, false).view([-1]).to_device(Device::Cpu))?;
            }
        }
        // Every path token's log-prob from the row that predicts it.
        let mut wanted: Vec<(usize, usize, i64, usize, usize)> = Vec::new(); // (batch row, token row, id, site, path)
        for (bi, (row, sites)) in rows.iter().zip(&site_ids).enumerate() {
            for &(si, site) in sites {
                for (pi, path) in site.paths.iter().enumerate() {
                    for d in 0..path.len() {
                        wanted.push((bi, row.at[&(si, path[..d].to_vec())], path[d], si, pi));
                    }
                }
            }
        }
        // The candidates of one position share the row that predicts their first token, so
        // each distinct row's distribution is computed once (a position has about 16).
        let mut slot_of: HashMap<usize, usize> = HashMap::new();
        let mut flat: Vec<i64> = Vec::new();
        let slots: Vec<usize> = wanted
            .iter()
            .map(|w| {
                *slot_of.entry(w.0 * t + w.1).or_insert_with(|| {
                    flat.push((w.0 * t + w.1) as i64);
                    flat.len() - 1
                })
            })
            .collect();
        let mut order: Vec<usize> = (0..wanted.len()).collect();
        order.sort_by_key(|&i| slots[i]);
        let hs = hidden.view([(b * t) as i64, -1]).index_select(0, &Tensor::from_slice(&flat).to_device(device));
        let vocab = model.config["vocab_size"].as_i64().unwrap_or(1).max(1);
        let per = ((1i64 << 25) / vocab).max(1) as usize;
        let mut done = 0;
        for start in (0..flat.len()).step_by(per) {
            let n = per.min(flat.len() - start);
            let logp = model.head(&hs.narrow(0, start as i64, n as i64)).log_softmax(-1, Kind::Float);
            let end = done + order[done..].partition_point(|&i| slots[i] < start + n);
            let part = &order[done..end];
            let at = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
            let rows = at(part.iter().map(|&i| (slots[i] - start) as i64).collect());
            let targets = at(part.iter().map(|&i| wanted[i].2).collect());
            let lp = Vec::<f32>::try_from(logp.index(&[Some(rows), Some(targets)]).to_device(Device::Cpu))?;
            for (&i, l) in part.iter().zip(lp) {
                path_logp[wanted[i].3][wanted[i].4] += l as f64;
            }
            done = end;
        }
    }
    for (site, logp) in all.iter().zip(&path_logp) {
        let r = &mut rollouts[site.rollout];
        let excl = exclusive_logprobs(&site.paths, logp);
        let mass: f64 = excl.iter().map(|x| x.exp()).sum();
        let logt: Vec<f32> = excl.iter().map(|x| (x - mass.ln()) as f32).collect();
        let top = r.top[site.pos].iter().map(|&(i, l)| (i, l)).collect::<HashMap<i64, f32>>();
        let student_mass: f64 = site.ids.iter().map(|i| if *i == r.response[site.pos] && !top.contains_key(i) { (r.old_logp[site.pos] as f64).exp() } else { top.get(i).map_or(0.0, |&l| (l as f64).exp()) }).sum();
        let best = (0..site.ids.len()).max_by(|&a, &b| logt[a].total_cmp(&logt[b])).unwrap_or(0);
        stats.positions += 1;
        stats.candidates += site.ids.len();
        stats.top_differs += usize::from(site.ids[best] != r.response[site.pos]);
        stats.teacher_mass += mass;
        stats.student_mass += student_mass;
        r.scored.push(Scored { pos: site.pos, ids: site.ids.clone(), logt, teacher_mass: mass, student_mass });
    }
    Ok(stats)
}

/// The candidate term's inputs for one micro-batch in the training layout: candidate ids
/// (B, L − 1, C), the teacher's log-distribution over them (−1e9 where no candidate), and
/// the scored positions (B, L − 1).
pub struct CandInputs {
    ids: Tensor,
    logt: Tensor,
    valid: Tensor,
    scored: Tensor,
    beta: f64,
}

/// Where a candidate slot is empty: far below any real log-probability, finite so that
/// `exp(x) · (x − y)` is 0, not NaN.
const EMPTY: f32 = -1e9;

impl CandInputs {
    pub fn new(spec: &CandidateSpec, batch: &[&Rollout], starts: &[usize], width: i64, device: Device) -> Self {
        let c = batch.iter().flat_map(|x| x.scored.iter().map(|s| s.ids.len())).max().unwrap_or(1).max(1);
        let (b, w) = (batch.len(), width as usize);
        let (mut ids, mut logt, mut valid, mut scored) = (vec![0i64; b * w * c], vec![EMPTY; b * w * c], vec![false; b * w * c], vec![0f32; b * w]);
        for (bi, x) in batch.iter().enumerate() {
            for s in &x.scored {
                let p = starts[bi] + s.pos;
                scored[bi * w + p] = 1.0;
                for (j, (&id, &l)) in s.ids.iter().zip(&s.logt).enumerate() {
                    let cell = (bi * w + p) * c + j;
                    (ids[cell], logt[cell], valid[cell]) = (id, l, true);
                }
            }
        }
        let shape = [b as i64, width, c as i64];
        Self {
            ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            logt: Tensor::from_slice(&logt).view(shape).to_device(device),
            valid: Tensor::from_slice(&valid).view(shape).to_device(device),
            scored: Tensor::from_slice(&scored).view([b as i64, width]).to_device(device),
            beta: spec.beta(),
        }
    }

    /// The summed divergence over the scored positions among `t0..t0 + n`, given the student's
    /// logits (B, n, V): its distribution renormalised over the candidates against the teacher's.
    pub fn loss(&self, logits: &Tensor, t0: i64) -> Tensor {
        let n = logits.size()[1];
        let [ids, logt, valid] = [&self.ids, &self.logt, &self.valid].map(|t| t.narrow(1, t0, n));
        let s = logits.gather(2, &ids, false).masked_fill(&valid.logical_not(), EMPTY as f64).log_softmax(-1, Kind::Float);
        let s = s.masked_fill(&valid.logical_not(), EMPTY as f64);
        (crate::loss::jsd_per_position(&s, &logt, self.beta) * self.scored.narrow(1, t0, n)).sum(Kind::Float)
    }
}

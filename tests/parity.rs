//! Every fixture family against Hugging Face transformers (tests/fixtures/models/*/reference.json):
//! token ids, per-token log-probs within 1e-4, 16 greedy tokens; and KV-cache decoding against
//! a full forward, batched left-padded generation against one prompt at a time; three training
//! steps (chunked head, clipping, AdamW) against transformers + torch.optim.AdamW.
mod common;

use tch::{Device, Kind, Tensor};
use tokbridge::generate::{generate, Sampling};
use tokbridge::hf::tokenizer::Tokenizer;
use tokbridge::models;
use tokbridge::nn::attention::Context;

fn load(dir: &std::path::Path) -> (models::Model, Tokenizer) {
    let model = models::load(dir, Device::Cpu, Kind::Float).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
    let tok = Tokenizer::load(dir).expect("tokenizer");
    (model, tok)
}

fn logprobs(model: &models::Model, ids: &[i64]) -> Vec<f64> {
    let _g = tch::no_grad_guard();
    let input = Tensor::from_slice(ids).unsqueeze(0);
    let lp = model.logits(&input).squeeze_dim(0).log_softmax(-1, Kind::Double);
    (0..ids.len() - 1).map(|i| lp.double_value(&[i as i64, ids[i + 1]])).collect()
}

#[test]
fn every_family_has_a_fixture() {
    let types: std::collections::BTreeSet<String> = common::model_dirs()
        .iter()
        .map(|d| {
            let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
            c["model_type"].as_str().unwrap().to_string()
        })
        .collect();
    for f in models::Family::ALL {
        assert!(types.contains(f.model_type()), "no fixture of family {}", f.model_type());
    }
}

#[test]
fn score_matches_transformers() {
    for dir in common::model_dirs() {
        let r = common::reference(&dir);
        let (model, tok) = load(&dir);
        let ids = tok.encode(&r.text, true).unwrap();
        assert_eq!(ids, r.ids, "{}: token ids differ from transformers", dir.display());
        let ours = logprobs(&model, &ids);
        let worst = ours.iter().zip(&r.logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("{:24} max abs diff {worst:.2e}", dir.file_name().unwrap().to_string_lossy());
        assert!(worst <= 1e-4, "{}: max |Δ log-prob| = {worst:e}", dir.display());
    }
}

/// In bfloat16 every op rounds where transformers' does, so the log-probs are transformers' own
/// in bf16 (bf16_reference.json, scripts/fixtures/make_bf16_reference.py, one set per kind of
/// CPU it has run on, since bf16 kernels round differently across CPUs), not merely close:
/// bf16 itself moves them 0.04-0.11 nats from float32 on these fixtures, and a fused op split
/// in two (GPT-2's `x W + b` outside addmm, its `gelu_new` as one tanh-GELU kernel) moved them
/// 0.02-0.04. Gemma 2's final soft-capping runs in float32 here (the reference says how).
#[test]
fn bf16_score_matches_transformers_bf16() {
    for dir in common::model_dirs() {
        let text = std::fs::read_to_string(dir.join("bf16_reference.json")).expect("bf16_reference.json");
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids: Vec<i64> = serde_json::from_value(r["ids"].clone()).unwrap();
        // One set of log-probs per kind of CPU the script has run on (bf16 kernels round
        // differently from one CPU to another); this machine must match one of them.
        let mut sets: Vec<Vec<f64>> = vec![serde_json::from_value(r["logprobs"].clone()).unwrap()];
        for other in r["other_cpus"].as_array().into_iter().flatten() {
            sets.push(serde_json::from_value(other["logprobs"].clone()).unwrap());
        }
        let model = models::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
        let ours = logprobs(&model, &ids);
        let worst = sets.iter().map(|want| ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)).fold(f64::INFINITY, f64::min);
        eprintln!("{:24} bf16 max abs diff {worst:.2e} (nearest of {} CPU kinds)", dir.file_name().unwrap().to_string_lossy(), sets.len());
        assert!(
            worst <= 1e-5,
            "{}: bf16 max |Δ log-prob| = {worst:e} from transformers' bf16 on every CPU kind recorded; on a new kind of CPU, scripts/fixtures/make_bf16_reference.py adds what transformers gives on it",
            dir.display()
        );
    }
}

#[test]
fn greedy_matches_transformers() {
    for dir in common::model_dirs() {
        let r = common::reference(&dir);
        let (model, tok) = load(&dir);
        let prompt = tok.encode(&r.prompt, true).unwrap();
        assert_eq!(prompt, r.prompt_ids, "{}: prompt ids", dir.display());
        let s = Sampling { max_new_tokens: 16, temperature: 0.0, ignore_eos: true, ..Sampling::default() };
        let g = generate(&model, &[prompt], &s, &tok.eos_ids, tok.pad_id).unwrap().remove(0);
        assert_eq!(g.new_ids, r.greedy_new_ids, "{}: greedy ids", dir.display());
    }
}

#[test]
fn cached_decoding_equals_full_forward() {
    for dir in common::model_dirs() {
        let r = common::reference(&dir);
        let (model, _) = load(&dir);
        let _g = tch::no_grad_guard();
        let ids = Tensor::from_slice(&r.ids).unsqueeze(0);
        let n = r.ids.len() as i64;
        let full = model.logits(&ids);
        // Prefill 5 tokens, then one token at a time.
        let mut cache = model.new_cache();
        let mut parts = vec![model.forward(&ids.narrow(1, 0, 5), &Context::dense(1, 5, 0, Device::Cpu), Some(&mut cache))];
        for t in 5..n {
            parts.push(model.forward(&ids.narrow(1, t, 1), &Context::dense(1, 1, t, Device::Cpu), Some(&mut cache)));
        }
        let stepped = Tensor::cat(&parts, 1);
        let diff = (stepped - full).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{}: cached vs full logits differ by {diff:e}", dir.display());
    }
}

#[test]
fn batched_left_padded_generation_equals_single() {
    for dir in common::model_dirs() {
        let (model, tok) = load(&dir);
        let prompts: Vec<Vec<i64>> = ["Question: what is 3 + 4?", "Tom has 12 apples and", "def f(x):\n    return x * 7"]
            .iter()
            .map(|p| tok.encode(p, true).unwrap())
            .collect();
        let s = Sampling { max_new_tokens: 8, temperature: 0.0, ignore_eos: true, ..Sampling::default() };
        let batched = generate(&model, &prompts, &s, &tok.eos_ids, tok.pad_id).unwrap();
        for (p, b) in prompts.iter().zip(&batched) {
            let single = generate(&model, std::slice::from_ref(p), &s, &tok.eos_ids, tok.pad_id).unwrap().remove(0);
            assert_eq!(b.new_ids, single.new_ids, "{}: batched vs single ids", dir.display());
            for (x, y) in b.logprobs.iter().zip(&single.logprobs) {
                assert!((x - y).abs() < 1e-3, "{}: batched vs single log-prob {x} vs {y}", dir.display());
            }
        }
    }
}

/// Every parameter's gradient of a masked NLL over a right-padded batch whose positions
/// before `from` carry no loss: through `Model::backward` on the full logits, or through
/// `Model::backward_tokens` when `model.logits_per_chunk` is set.
fn gradients(model: &models::Model, ids: &Tensor, from: i64, recompute: bool, chunked: bool) -> (f64, Vec<(String, Tensor)>) {
    for (_, v) in model.vs.variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let mask = ids.narrow(1, 1, ids.size()[1] - 1).ne(0).to_kind(Kind::Float);
    let _ = mask.narrow(1, 0, from).fill_(0.0);
    let loss = if chunked {
        let mut starts = Vec::new();
        let loss = model
            .backward_tokens(ids, from, recompute, |lp, t0| {
                starts.push(t0);
                Ok(-(lp * mask.narrow(1, t0, lp.size()[1])).sum(Kind::Float) / 10.0)
            })
            .unwrap();
        assert!(starts.len() > 3, "the head ran in {} chunks", starts.len());
        assert!(starts[0] <= from && from - starts[0] < 3, "the head started at position {}", starts[0]);
        loss
    } else {
        let (loss, ()) = model
            .backward(ids, recompute, |logits| {
                let lp = tokbridge::train::token_logprobs(logits, ids);
                Ok((-(lp * &mask).sum(Kind::Float) / 10.0, ()))
            })
            .unwrap();
        loss
    };
    let mut grads: Vec<(String, Tensor)> = model.vs.variables().into_iter().map(|(n, v)| (n, v.grad().copy())).collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    (loss, grads)
}

#[test]
fn recomputation_and_the_chunked_head_give_the_same_gradients() {
    for dir in common::model_dirs() {
        let (mut model, tok) = load(&dir);
        let texts = ["Tom has 12 apples and buys 30 more.", "def f(x):\n    return x * 7"];
        let enc: Vec<Vec<i64>> = texts.iter().map(|t| tok.encode(t, true).unwrap()).collect();
        let len = enc.iter().map(Vec::len).max().unwrap();
        let flat: Vec<i64> = enc.iter().flat_map(|e| e.iter().copied().chain(std::iter::repeat(0)).take(len)).collect();
        let ids = Tensor::from_slice(&flat).view([2, len as i64]);
        let vocab = model.config["vocab_size"].as_i64().unwrap();
        // Without a loss on the first 4 positions too: the chunked head then skips the first chunk.
        for (recompute, chunked, from) in [(true, false, 0), (false, true, 0), (true, true, 0), (false, true, 4), (true, true, 4)] {
            model.logits_per_chunk = None;
            let (plain_loss, plain) = gradients(&model, &ids, from, false, false);
            // Three positions of both rows per chunk.
            model.logits_per_chunk = Some(vocab * 2 * 3);
            let what = format!("{} (recompute {recompute}, chunked head {chunked}, loss from {from})", dir.display());
            let (loss, grads) = gradients(&model, &ids, from, recompute, chunked);
            assert!((plain_loss - loss).abs() < 1e-6 * plain_loss.abs().max(1.0), "{what}: loss {plain_loss} vs {loss}");
            assert_eq!(plain.len(), grads.len());
            let mut nonzero = 0;
            for ((name, a), (_, b)) in plain.iter().zip(&grads) {
                assert!(a.defined() && b.defined(), "{what}: {name} has no gradient");
                let scale = a.abs().max().double_value(&[]).max(1e-12);
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff <= 1e-4 * scale, "{what}: {name} gradient differs by {diff} (scale {scale})");
                nonzero += usize::from(scale > 1e-8);
            }
            assert!(nonzero * 2 > plain.len(), "{what}: most gradients are zero");
        }
    }
}

/// Three training steps against transformers + `torch.optim.AdamW` (train_reference.json, made
/// by scripts/fixtures/make_train_reference.py): the mean cross-entropy of a right-padded batch
/// through the chunked head (with and without recomputation), gradient clipping and AdamW with
/// tokbridge's decay groups. Each step's loss and gradient norm, and the log-probs after the
/// last step, must agree.
#[test]
fn three_training_steps_match_torch_adamw() {
    for dir in common::model_dirs() {
        for recompute in [false, true] {
            let what = format!("{} (recompute {recompute})", dir.display());
            let run = train_like_reference(&dir, Kind::Float, recompute);
            for (step, ((loss, want_loss), (norm, want_norm))) in run.losses.iter().zip(&run.grad_norms).enumerate() {
                assert!((loss - want_loss).abs() < 1e-5 * want_loss.abs(), "{what}: step {step} loss {loss} vs torch {want_loss}");
                assert!((norm - want_norm).abs() < 1e-4 * want_norm, "{what}: step {step} grad norm {norm} vs torch {want_norm}");
            }
            assert!(run.worst_after < 1e-3, "{what}: log-probs after training differ from torch's by up to {}", run.worst_after);
        }
    }
}

/// The same three steps with the model in bfloat16 (float32 master weights and moments in the
/// optimizer) follow torch's float32 run: each step's loss within 4% (seen: up to 1.9%, at the
/// third step), and the log-probs after them within 15% of the distance the steps moved them
/// (seen: up to 7.2%; untouched bf16 weights would stay at 100%). Bitwise agreement is not
/// expected: bf16 gradients flip the sign of Adam's first updates where they are near zero.
#[test]
fn bf16_training_follows_float32_torch() {
    for dir in common::model_dirs() {
        let run = train_like_reference(&dir, Kind::BFloat16, false);
        let what = dir.display();
        for (step, (loss, want)) in run.losses.iter().enumerate() {
            assert!((loss - want).abs() < 0.04 * want, "{what}: bf16 step {step} loss {loss} vs torch's float32 {want}");
        }
        let moved = run.worst_after / run.worst_before;
        assert!(moved < 0.15, "{what}: bf16 log-probs after training are {} nats from torch's, {:.0}% of the {} the steps moved them", run.worst_after, 100.0 * moved, run.worst_before);
    }
}

struct TrainRun {
    /// (ours, torch's) per step.
    losses: Vec<(f64, f64)>,
    grad_norms: Vec<(f64, f64)>,
    /// Largest |log-prob| difference from torch's after the steps, and of the untrained model.
    worst_after: f64,
    worst_before: f64,
}

fn train_like_reference(dir: &std::path::Path, kind: Kind, recompute: bool) -> TrainRun {
    use tokbridge::recipe::OptimizerSpec;
    use tokbridge::train::optim::AdamW;
    let text = std::fs::read_to_string(dir.join("train_reference.json")).expect("train_reference.json");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(r["ids"].clone()).unwrap();
    let lengths: Vec<usize> = serde_json::from_value(r["lengths"].clone()).unwrap();
    let (b, w) = (rows.len() as i64, rows[0].len() as i64);
    let ids = Tensor::from_slice(&rows.concat()).view([b, w]);
    let mask: Vec<f32> = lengths.iter().flat_map(|&n| (1..w as usize).map(move |i| if i < n { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::from_slice(&mask).view([b, w - 1]);
    let n_targets: usize = lengths.iter().map(|n| n - 1).sum();
    let mut model = models::load(dir, Device::Cpu, kind).unwrap();
    model.logits_per_chunk = Some(model.config["vocab_size"].as_i64().unwrap() * b * 4);
    let worst = |model: &models::Model| {
        let _g = tch::no_grad_guard();
        let lp = model.logits(&ids).log_softmax(-1, Kind::Double);
        let mut worst: f64 = 0.0;
        for (bi, row) in rows.iter().enumerate() {
            for i in 0..lengths[bi] - 1 {
                let want = r["logprobs_after"][bi][i].as_f64().unwrap();
                worst = worst.max((lp.double_value(&[bi as i64, i as i64, row[i + 1]]) - want).abs());
            }
        }
        worst
    };
    let worst_before = worst(&model);
    let f = |k: &str| r[k].as_f64().unwrap();
    let spec = OptimizerSpec {
        lr: f("lr"),
        weight_decay: f("weight_decay"),
        betas: [r["betas"][0].as_f64().unwrap(), r["betas"][1].as_f64().unwrap()],
        eps: f("eps"),
        grad_clip: Some(f("grad_clip")),
    };
    let mut opt = AdamW::new(model.vs.variables().into_iter().collect(), &spec);
    let (mut losses, mut grad_norms) = (Vec::new(), Vec::new());
    for step in 0..r["steps"].as_u64().unwrap() as usize {
        opt.zero_grad();
        let loss = model
            .backward_tokens(&ids, 0, recompute, |lp, t0| Ok(-(lp * mask.narrow(1, t0, lp.size()[1])).sum(Kind::Float) / n_targets as f64))
            .unwrap();
        let norm = opt.clip_grad_norm(spec.grad_clip);
        opt.step(spec.lr).unwrap();
        losses.push((loss, r["losses"][step].as_f64().unwrap()));
        grad_norms.push((norm, r["grad_norms"][step].as_f64().unwrap()));
    }
    TrainRun { losses, grad_norms, worst_after: worst(&model), worst_before }
}

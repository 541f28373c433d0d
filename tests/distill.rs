//! The full-distribution losses of same-vocabulary distillation (`loss: forward_kl |
//! reverse_kl | jsd`): equal to TRL's `GKDTrainer.generalized_jsd_loss` on fixed inputs (a
//! committed reference made by scripts/fixtures/make_gkd_reference.py), the chunked head's
//! gradients equal to plain autograd over the full logits with the teacher's distributions
//! at the right positions, zero loss when the student is the teacher, and a one-line error
//! across tokenizers.
mod common;

use common::tempdir::TempDir;
use std::path::Path;
use std::process::Command;
use tch::{Kind, Tensor};
use tokbridge::recipes::opd;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn generalized_jsd_equals_trl_gkd() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/distill/gkd_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<i64> = r["shape"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let floats = |k: &str| -> Vec<f64> { r[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let student = Tensor::from_slice(&floats("student_logits")).view(shape.as_slice());
    let teacher = Tensor::from_slice(&floats("teacher_logits")).view(shape.as_slice());
    let mask = Tensor::from_slice(&floats("mask")).view([shape[0], shape[1]]);
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for c in cases {
        let (beta, temperature) = (c["beta"].as_f64().unwrap(), c["temperature"].as_f64().unwrap());
        let s = student.copy().set_requires_grad(true);
        let per_position = tokbridge::loss::distill_divergence(&s, &teacher, beta, temperature, None);
        let loss = (per_position * &mask).sum(Kind::Double) / mask.sum(Kind::Double);
        loss.backward();
        let (ours, theirs) = (loss.double_value(&[]), c["loss"].as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0), "beta {beta} T {temperature}: {ours} vs TRL {theirs}");
        let grad: Vec<f64> = Vec::try_from(s.grad().view([-1])).unwrap();
        let want: Vec<f64> = c["grad"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let worst = grad.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-9, "beta {beta} T {temperature}: gradient differs from TRL's by {worst}");
    }
}

/// The recipe for the qwen2 student and qwen3 teacher fixtures (one shared vocabulary).
fn recipe(extra: &[&str]) -> tokbridge::recipes::opd::config::Opd {
    common::tiny_opd(&[&["student.path=tests/fixtures/models/qwen2"], extra].concat())
}

fn grads(side: &opd::Side) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = side.model.vs.variables().into_iter().filter(|(_, t)| t.grad().defined()).map(|(k, t)| (k, t.grad().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut t) in side.model.vs.variables() {
        t.zero_grad();
    }
    v
}

#[test]
#[allow(clippy::assign_op_pattern)] // tch's `+=` is the in-place add_; the sum is built as new nodes
fn chunked_divergence_gradients_equal_full_logits_autograd() {
    for (loss, extra) in [("forward_kl", "distill.temperature=1.0"), ("jsd", "distill.temperature=0.9"), ("reverse_kl", "distill.top_k=8")] {
        let r = recipe(&[&format!("loss={loss}"), extra, "rollout.max_new_tokens=12"]);
        let mut student = opd::load_side(&r.student, "cpu").unwrap();
        let mut teacher = opd::load_teacher(&r.teacher, "cpu").unwrap();
        teacher.same_vocab = true;
        // Chunks of 3 positions, so a row spans several chunks.
        student.model.logits_per_chunk = Some(3 * 420 * 6);
        let examples = tokbridge::data::read(&r.data.train, Some(6)).unwrap();
        let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
        let picks: Vec<usize> = (0..6).collect();
        let mut rollouts = opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &picks, true, 3).unwrap();
        opd::score_teacher(&teacher, &mut rollouts, 6, opd::TeacherKeeps::Hidden).unwrap();
        opd::old_logprobs(&student, &mut rollouts, 6, 0).unwrap();
        let norm = opd::Normaliser::of(r.loss, &rollouts);
        let (value, _) = opd::backward_batch(&r, &student, &teacher, None, &rollouts, norm, None).unwrap();
        let chunked = grads(&student);

        // Plain autograd: the student's full logits; the teacher's from its own forward over
        // its prompt and the same response ids; positions matched by hand.
        let beta = r.loss.divergence_beta(&r.distill).unwrap();
        let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for x in &rollouts {
            let ids = Tensor::from_slice(&[x.student_prompt.clone(), x.response.clone()].concat()).unsqueeze(0);
            let s = student.model.logits(&ids).get(0).narrow(0, x.student_prompt.len() as i64 - 1, x.response.len() as i64);
            let t = tch::no_grad(|| teacher.model.local().unwrap().logits(&Tensor::from_slice(&x.teacher_ids).unsqueeze(0)).get(0).narrow(0, x.teacher_start as i64 - 1, x.response.len() as i64));
            let mask = Tensor::from_slice(&opd::response_mask(x));
            total = total + (tokbridge::loss::distill_divergence(&s, &t, beta, r.distill.temperature, r.distill.top_k) * mask).sum(Kind::Float);
        }
        let plain = total / norm.loss;
        assert!((plain.double_value(&[]) - value).abs() < 1e-5 * value.abs().max(1.0), "{loss}: loss {value} vs plain {}", plain.double_value(&[]));
        assert!(value > 1e-3, "{loss}: the fixtures' distributions differ, the loss should not be ~0");
        plain.backward();
        let full = grads(&student);
        assert_eq!(chunked.len(), full.len(), "{loss}: same parameters get gradients");
        for ((name, a), (_, b)) in chunked.iter().zip(&full) {
            let scale = b.abs().max().double_value(&[]).max(1e-6);
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff <= 1e-4 * scale, "{loss}: {name} differs by {diff} (scale {scale})");
        }
    }
}

/// ULD and GOLD's hybrid across tokenizers through the chunked head (chunks of 2 positions, so
/// GOLD's multi-token groups straddle chunks) against the same losses on full logits through
/// plain autograd (`micro_loss`): the same loss and the same gradients.
#[test]
fn chunked_uld_and_gold_gradients_equal_full_logits_autograd() {
    // A digit-splitting tokenizer (qwen2's, qwen3's) against one that packs digits (llama's): a
    // number is one token on one side and several on the other, one GOLD group, merged on the
    // student's side in the first pair and on the teacher's in the second.
    for (loss, student_path, teacher_path) in [("uld", "qwen2", "llama"), ("gold_hybrid", "qwen2", "llama"), ("gold_hybrid", "llama", "qwen3")] {
        let mut r = common::tiny_opd(&[&format!("loss={loss}"), "rollout.max_new_tokens=12", &format!("student.path=tests/fixtures/models/{student_path}")]);
        r.teacher.path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(teacher_path).display().to_string();
        let mut student = opd::load_side(&r.student, "cpu").unwrap();
        let teacher = opd::load_teacher(&r.teacher, "cpu").unwrap();
        student.model.logits_per_chunk = Some(2 * 6 * logits_width(&student));
        let examples = tokbridge::data::read(&r.data.train, Some(6)).unwrap();
        let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
        // The dataset's responses (arithmetic text; the untrained fixtures sample byte soup).
        let mut rollouts = opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &(0..6).collect::<Vec<_>>(), false, 3).unwrap();
        // The training path makes the teacher's rows from its hidden states; the reference
        // (micro_loss) takes its kept distributions.
        opd::score_teacher(&teacher, &mut rollouts, 6, opd::TeacherKeeps::Hidden).unwrap();
        opd::score_teacher(&teacher, &mut rollouts, 6, opd::TeacherKeeps::Distributions).unwrap();
        opd::old_logprobs(&student, &mut rollouts, 6, 0).unwrap();
        // GOLD merges every group that is not stuck (too long for DPCA's credit, not for GOLD).
        let multi = |side: fn(&tokbridge::align::Chunk) -> usize| rollouts.iter().flat_map(|x| &x.chunks).filter(|c| side(c) > 1 && c.masked != tokbridge::align::Masked::Stuck).count();
        let merged = if student_path == "llama" { multi(|c| c.teacher.len()) } else { multi(|c| c.student.len()) };
        assert!(loss == "uld" || merged >= 3, "{loss} {student_path} <- {teacher_path}: GOLD's merge needs multi-token groups: {merged}");
        let (sv, tv) = (student.tok.inner.get_vocab(true), teacher.tok.inner.get_vocab(true));
        let width = |m: &tokbridge::models::Model| m.config["vocab_size"].as_i64().unwrap();
        let vm = tokbridge::loss::VocabMatch::new(&sv, &tv, width(&student.model), width(teacher.model.local().unwrap()));
        let matches = (loss == "gold_hybrid").then_some(&vm);
        let norm = opd::Normaliser::of(r.loss, &rollouts);
        let (value, _) = opd::backward_batch(&r, &student, &teacher, matches, &rollouts, norm, None).unwrap();
        let chunked = grads(&student);

        let plain = |rollouts: &[opd::Rollout]| {
            let refs: Vec<&opd::Rollout> = rollouts.iter().collect();
            let (ids, starts) = opd::rows(&refs, student.tok.pad_id, tch::Device::Cpu);
            student.model.backward(&ids, false, |logits| Ok((opd::micro_loss(&r, &refs, matches, logits, &ids, &starts)? / norm.loss, ()))).unwrap().0
        };
        let full_value = plain(&rollouts);
        assert!((full_value - value).abs() < 1e-5 * value.abs().max(1.0), "{loss}: loss {value} vs plain {full_value}");
        assert!(value > 1e-3, "{loss}: the fixtures' distributions differ, the loss should not be ~0");
        let full = grads(&student);
        let d = max_relative_diff(&chunked, &full).unwrap();
        assert!(d <= 1e-4, "{loss} {student_path} <- {teacher_path}: gradients differ by {d} of their scale");
        if loss == "gold_hybrid" && student_path == "qwen2" {
            // A later PPO epoch: the weights moved, so GOLD's products of later-token
            // probabilities must come from refreshed log-probs (as the recipe's loop does).
            tch::no_grad(|| {
                for (_, mut t) in student.model.vs.variables() {
                    let _ = t.g_add_(&(t.randn_like() * 0.05));
                }
            });
            let stale = grads_of(&student, || opd::backward_batch(&r, &student, &teacher, matches, &rollouts, norm, None).unwrap());
            rollouts.iter_mut().for_each(|x| x.old_logp.clear());
            opd::old_logprobs(&student, &mut rollouts, 6, 0).unwrap();
            let fresh = grads_of(&student, || opd::backward_batch(&r, &student, &teacher, matches, &rollouts, norm, None).unwrap());
            let full = grads_of(&student, || plain(&rollouts));
            let (d_fresh, d_stale) = (max_relative_diff(&fresh, &full).unwrap(), max_relative_diff(&stale, &full).unwrap());
            assert!(d_fresh <= 1e-4 && d_stale > 10.0 * d_fresh.max(1e-5), "refreshed {d_fresh}, stale {d_stale}");
        }
    }
}

/// The gradients `f`'s backward leaves (and then clears).
fn grads_of<T>(side: &opd::Side, f: impl FnOnce() -> T) -> Vec<(String, Tensor)> {
    let _ = f();
    grads(side)
}

/// The largest difference between two sets of gradients, relative to each tensor's scale.
fn max_relative_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "the same parameters get gradients");
    a.iter().zip(b).map(|((_, a), (_, b))| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-6)).reduce(f64::max)
}

fn logits_width(side: &opd::Side) -> i64 {
    side.model.config["vocab_size"].as_i64().unwrap()
}

fn tokbridge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(root()).args(args).output().expect("runs")
}

fn last_metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|m: &serde_json::Value| m["train/loss"].is_number()).collect()
}

#[test]
fn full_distribution_losses_train_and_refuse_other_vocabularies() {
    let tmp = TempDir::new();
    for loss in ["forward_kl", "reverse_kl", "jsd"] {
        let dir = tmp.path().join(loss);
        let out = tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", dir.display()), "student.path=tests/fixtures/models/qwen2", &format!("loss={loss}"), "training.steps=3", "eval=null", "logging.progress=false", "distill.top_k=16"]);
        assert!(out.status.success(), "{loss}: {}", String::from_utf8_lossy(&out.stderr));
        let steps = last_metrics(&dir);
        assert_eq!(steps.len(), 3);
        for m in &steps {
            assert!(m["train/loss"].as_f64().unwrap() > 0.0 && m["train/grad_norm"].as_f64().unwrap() > 0.0, "{loss}: {m}");
        }
    }
    // The student distilled from itself: every divergence is zero (verl's debugging check).
    let dir = tmp.path().join("self");
    let out = tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", dir.display()), "student.path=tests/fixtures/models/qwen3", "loss=jsd", "training.steps=1", "eval=null", "logging.progress=false"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loss = last_metrics(&dir)[0]["train/loss"].as_f64().unwrap();
    assert!(loss.abs() < 1e-6, "student = teacher should give zero loss, got {loss}");
    // Across tokenizers: one line naming the loss and both models.
    let out = tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", tmp.path().join("cross").display()), "loss=forward_kl", "training.steps=1", "eval=null"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(last.contains("forward_kl") && last.contains("share a vocabulary") && last.contains("tests/fixtures/models/llama"), "{err}");
}

/// ULD and GOLD's hybrid loss against TRL's `ULDLoss` (as GOLDTrainer runs it) on one response
/// of the fixture tokenizers with fixed logits (scripts/fixtures/make_gold_reference.py): the
/// same alignment groups, the same matched vocabulary, the same matched JSD, unmatched sorted
/// L1 and total. The logits are given so that both sides merge the distribution over each
/// response token (see the script for TRL's "observed" slicing, one position later).
#[test]
fn uld_and_gold_hybrid_equal_trl() {
    use tokbridge::hf::tokenizer::Tokenizer;
    use tokbridge::loss::{generalized_jsd, gold_hybrid, merge_observed, sorted_l1, VocabMatch};
    let text = std::fs::read_to_string(root().join("tests/fixtures/distill/gold_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ints = |k: &str| -> Vec<i64> { r[k].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    let probs = |k: &str, shape: &str| {
        let v: Vec<f64> = r[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        Tensor::from_slice(&v).view(ints(shape).as_slice()).softmax(-1, Kind::Double)
    };
    let groups = |k: &str| -> Vec<std::ops::Range<usize>> {
        r[k].as_array().unwrap().iter().map(|g| {
            let g: Vec<usize> = g.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            g[0]..g[g.len() - 1] + 1
        }).collect()
    };
    let st = Tokenizer::load(&root().join("tests/fixtures/models/llama")).unwrap();
    let tt = Tokenizer::load(&root().join("tests/fixtures/models/qwen3")).unwrap();
    let response = r["text"].as_str().unwrap();
    let (sids, spieces) = st.text_pieces(response).unwrap();
    let (tids, tpieces) = tt.text_pieces(response).unwrap();
    assert_eq!((sids.clone(), tids.clone()), (ints("student_ids"), ints("teacher_ids")), "same token ids as transformers");
    // DPCA's chunks (no K limit) are TRL's byte-offset groups.
    let chunks = tokbridge::align::dpca(&spieces, &tpieces, usize::MAX);
    let (sg, tg) = (groups("student_groups"), groups("teacher_groups"));
    assert_eq!(chunks.iter().map(|c| c.student.clone()).collect::<Vec<_>>(), sg);
    assert_eq!(chunks.iter().map(|c| c.teacher.clone()).collect::<Vec<_>>(), tg);
    assert!(chunks.iter().any(|c| c.student.len() != c.teacher.len()), "the response must have multi-token groups");

    let (sp, tp) = (probs("student_logits", "shape_student"), probs("teacher_logits", "shape_teacher"));
    let close = |ours: f64, theirs: f64, what: &str| assert!((ours - theirs).abs() <= 1e-5 * theirs.abs().max(1e-3), "{what}: ours {ours} vs TRL {theirs}");
    // ULD: positional truncation to the shorter response, sorted L1 per position.
    let k = sp.size()[0].min(tp.size()[0]);
    close(sorted_l1(&sp.narrow(0, 0, k), &tp.narrow(0, 0, k)).double_value(&[]), r["uld"]["loss"].as_f64().unwrap(), "ULD");
    // GOLD hybrid on the merged groups.
    let (sm, tm) = (merge_observed(&sp, &sg, &sids), merge_observed(&tp, &tg, &tids));
    let vm = VocabMatch::new(&st.inner.get_vocab(true), &tt.inner.get_vocab(true), sp.size()[1], tp.size()[1]);
    let g = &r["gold_hybrid"];
    assert_eq!(vm.teacher.size()[0], g["matched_tokens"].as_i64().unwrap(), "matched vocabulary");
    close(generalized_jsd(&sm.index_select(1, &vm.student), &tm.index_select(1, &vm.teacher), 0.5).double_value(&[]), g["matched"].as_f64().unwrap(), "matched JSD");
    close(sorted_l1(&sm.index_select(1, &vm.student_rest), &tm.index_select(1, &vm.teacher_rest)).double_value(&[]), g["unmatched"].as_f64().unwrap(), "unmatched L1");
    close(gold_hybrid(&sm, &tm, &vm, 0.5, None).double_value(&[]), g["loss"].as_f64().unwrap(), "GOLD hybrid");
}

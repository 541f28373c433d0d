//! The `opd` recipe end to end on CPU fixtures: same-tokenizer OPD falls out of DPCA exactly;
//! cross-tokenizer OPD between a qwen3 teacher and a llama student (different families and
//! tokenizers) logs its diagnostics, narrows the teacher-student log-prob gap on held-out
//! prompts, and resumes; the baseline losses run on the same rollouts.
mod common;

use common::tempdir::TempDir;
use std::path::Path;
use std::process::{Command, Output};
use tch::{Kind, Tensor};
use tokbridge::recipes::opd;

fn tokbridge(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().expect("runs");
    assert!(out.status.success(), "tokbridge {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn series(run: &Path, key: &str) -> Vec<(u64, f64)> {
    let mut by_step = std::collections::BTreeMap::new();
    for m in metrics(run) {
        if let Some(v) = m[key].as_f64() {
            by_step.insert(m["step"].as_u64().unwrap(), v);
        }
    }
    by_step.into_iter().collect()
}

#[test]
fn same_tokenizer_dpca_is_per_token_reverse_kl() {
    // qwen2 and qwen3 fixtures share one tokenizer and chat template.
    let r = common::tiny_opd(&["student.path=tests/fixtures/models/qwen2", "dpca.adv_clamp=1000"]);
    let student = opd::load_side(&r.student, "cpu").unwrap();
    let mut teacher = opd::load_teacher(&r.teacher, "cpu").unwrap();
    teacher.same_vocab = true;
    let examples = tokbridge::data::read(&r.data.train, Some(8)).unwrap();
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
    let picks: Vec<usize> = (0..8).collect();
    let mut rollouts = opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &picks, true, 7).unwrap();
    opd::score_teacher(&teacher, &mut rollouts, 4, opd::TeacherKeeps::LogProbs).unwrap();
    opd::old_logprobs(&student, &mut rollouts, 4, 0).unwrap();
    let mut checked = 0;
    for x in &rollouts {
        assert!(x.chunks.iter().all(|c| c.student.len() == 1 && c.teacher.len() == 1), "{:?}", x.chunks);
        // An independent teacher forward on its prompt and the student's very tokens.
        let ids = Tensor::from_slice(&x.teacher_ids).unsqueeze(0);
        let lp = teacher.model.local().unwrap().logits(&ids).log_softmax(-1, Kind::Double);
        let adv = tokbridge::loss::chunk_advantages(&x.chunks, &x.old_logp, &x.logq, 1000.0);
        // The end-of-turn chunk pairs whichever end token the student chose with the teacher's.
        let body = x.chunks.len() - usize::from(x.finished);
        for c in x.chunks[..body].iter().filter(|c| !c.is_masked()) {
            let (i, j) = (c.student.start, x.teacher_start + c.teacher.start);
            assert_eq!(x.response[i], x.teacher_ids[j], "same token on both sides");
            let q = lp.double_value(&[0, j as i64 - 1, x.teacher_ids[j]]);
            assert!((x.logq[c.teacher.start] as f64 - q).abs() < 1e-4);
            assert!((adv[i] as f64 - (q - x.old_logp[i] as f64)).abs() < 1e-4, "A_i = log q_i - log p_i");
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} tokens checked");
}

/// A warm-started pair: a qwen3 teacher trained on the task, a llama student trained briefly.
fn warm_pair(tmp: &Path) -> (String, String) {
    let teacher = tmp.join("teacher");
    let student = tmp.join("student");
    let t = format!("output_dir={}", teacher.display());
    tokbridge(&["run", "recipes/sft/tiny.yaml", &t, "model.path=tests/fixtures/models/qwen3", "training.steps=150", "training.grad_accum=1", "eval=null", "logging.progress=false"]);
    let s = format!("output_dir={}", student.display());
    tokbridge(&["run", "recipes/sft/tiny.yaml", &s, "training.steps=30", "training.grad_accum=1", "eval=null", "logging.progress=false"]);
    // Checkpoint names follow the step count.
    let ck = |d: &Path| d.join("checkpoints").join(std::fs::read_to_string(d.join("checkpoints/latest")).unwrap()).display().to_string();
    (ck(&teacher), ck(&student))
}

#[test]
fn cross_tokenizer_opd_narrows_the_gap_and_resumes() {
    let tmp = TempDir::new();
    let (teacher, student) = warm_pair(tmp.path());
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["run".to_string(), "recipes/opd/tiny.yaml".into(), format!("output_dir={}", dir.display()), format!("teacher.path={teacher}"), format!("student.path={student}")];
        args.extend(["training.steps=10", "eval.every=10", "optimizer.lr=3.0e-4", "logging.progress=false"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tokbridge(&refs)
    };
    let full = tmp.path().join("opd");
    run(&full, &[]);
    let gap = series(&full, "eval/logq_minus_logp");
    assert_eq!(gap.len(), 2);
    assert!(gap[1].1 > gap[0].1, "the held-out teacher-student gap should narrow: {gap:?}");
    let last = metrics(&full).into_iter().rev().find(|m| m["train/loss"].is_number()).unwrap();
    for key in ["opd/masked_fraction", "opd/chunks_one_to_one", "opd/chunks_multi_token", "opd/logq_minus_logp", "opd/clip_fraction", "opd/response_length", "opd/eot_rate", "budget/teacher_forward_tokens"] {
        assert!(last[key].as_f64().is_some_and(f64::is_finite), "{key} missing in {last}");
    }
    assert!(last["opd/chunks_multi_token"].as_f64().unwrap() > 0.0, "digits should give multi-token chunks");
    assert!(last["opd/masked_fraction"].as_f64().unwrap() < 0.5, "{last}");

    let cut = tmp.path().join("cut");
    run(&cut, &["--stop-after", "3", "training.checkpoint_every=2"]);
    run(&cut, &["--resume", "training.checkpoint_every=2"]);
    let (a, b) = (series(&full, "train/loss"), series(&cut, "train/loss"));
    assert_eq!(a.len(), 10);
    assert_eq!(a.len(), b.len());
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {s}: {x} vs resumed {y}");
    }
}

#[test]
fn baselines_train_on_the_same_rollouts() {
    let tmp = TempDir::new();
    for loss in ["uld", "gold_hybrid", "alm"] {
        let dir = tmp.path().join(loss);
        tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", dir.display()), &format!("loss={loss}"), "training.steps=3", "eval=null", "logging.progress=false"]);
        let losses = series(&dir, "train/loss");
        assert_eq!(losses.len(), 3, "{loss}");
        assert!(losses.iter().all(|(_, l)| l.is_finite() && *l > 0.0), "{loss}: {losses:?}");
        let norms = series(&dir, "train/grad_norm");
        assert!(norms.iter().all(|(_, g)| *g > 0.0), "{loss}: no gradient {norms:?}");
    }
    // Tinker's shape of a step (4 samples per prompt) with a group-mean baseline: advantages
    // are centred within each prompt's samples.
    let dir = tmp.path().join("group");
    tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", dir.display()), "rollout.samples_per_prompt=4", "training.prompts_per_step=2", "dpca.baseline=group_mean", "training.steps=2", "eval=null", "logging.progress=false"]);
    let pos = series(&dir, "opd/positive_advantage_fraction");
    let neg = series(&dir, "opd/negative_advantage_fraction");
    assert!(pos.iter().zip(&neg).all(|((_, p), (_, n))| *p > 0.05 && *n > 0.05), "centred advantages take both signs: {pos:?} {neg:?}");
    // lmbda = 0: GKD's off-policy end, training on the dataset's responses instead of samples.
    let dir = tmp.path().join("offpolicy");
    tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", dir.display()), "lmbda=0.0", "training.steps=2", "eval=null", "logging.progress=false"]);
    assert!(series(&dir, "opd/on_policy").iter().all(|(_, v)| *v == 0.0));
    assert!(series(&dir, "opd/eot_rate").iter().all(|(_, v)| *v == 1.0), "dataset responses end their turn");
    // Off-policy, a prompt's sample slots would hold copies of its one response: it is scored
    // once, for the same loss and gradient, whatever samples_per_prompt says.
    let four = tmp.path().join("offpolicy-4");
    tokbridge(&["run", "recipes/opd/tiny.yaml", &format!("output_dir={}", four.display()), "lmbda=0.0", "rollout.samples_per_prompt=4", "training.steps=2", "eval=null", "logging.progress=false"]);
    for key in ["train/loss", "train/grad_norm"] {
        for ((_, a), (_, b)) in series(&dir, key).iter().zip(series(&four, key)) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{key}: one sample slot {a}, four {b}");
        }
    }
    let tokens = |d: &std::path::Path| series(d, "budget/teacher_forward_tokens").last().map(|x| x.1);
    assert_eq!(tokens(&dir), tokens(&four), "the teacher scores each dataset response once");
}

#[test]
fn sampled_rollouts_carry_the_log_probs_and_entropies_of_a_full_forward() {
    // The sampler's values (a left-padded batch through the KV cache) stand in for the old
    // log-probs' forward: they must be that forward's, up to float rounding.
    let r = common::tiny_opd(&[]);
    let student = opd::load_side(&r.student, "cpu").unwrap();
    let teacher = opd::load_teacher(&r.teacher, "cpu").unwrap();
    let examples = tokbridge::data::read(&r.data.train, Some(8)).unwrap();
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
    let picks: Vec<usize> = (0..8).collect();
    let mut rollouts = opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &picks, true, 3).unwrap();
    let sampled: Vec<(Vec<f32>, Vec<f32>)> = rollouts.iter_mut().map(|x| (std::mem::take(&mut x.old_logp), std::mem::take(&mut x.entropy))).collect();
    opd::old_logprobs(&student, &mut rollouts, 3, 0).unwrap();
    let (mut worst_lp, mut worst_h, mut n) = (0f32, 0f32, 0);
    for ((lp, h), x) in sampled.iter().zip(&rollouts) {
        assert_eq!((lp.len(), h.len(), x.old_logp.len()), (x.response.len(), x.response.len(), x.response.len()));
        for i in 0..lp.len() {
            worst_lp = worst_lp.max((lp[i] - x.old_logp[i]).abs());
            worst_h = worst_h.max((h[i] - x.entropy[i]).abs());
            n += 1;
        }
    }
    assert!(n > 50, "only {n} tokens");
    assert!(worst_lp < 1e-4 && worst_h < 1e-4, "sampler vs forward: log-prob {worst_lp:e}, entropy {worst_h:e}");
    eprintln!("sampler vs forward over {n} tokens: log-prob {worst_lp:e}, entropy {worst_h:e}");
}

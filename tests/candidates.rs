//! Candidate scoring across tokenizers (`dpca.candidates`) on the fixture pair: a llama student
//! that packs up to three digits per token and a qwen3 teacher that splits digits. The tree
//! pass equals scoring every candidate as its own sequence; the masking rules hold at the
//! boundaries; a teacher that knows an answer prefers the right 3-digit student token; a run
//! with candidates trains and reports its diagnostics and teacher cost.
mod common;

use common::tempdir::TempDir;
use std::path::Path;
use tch::{Kind, Tensor};
use tokbridge::data::Example;
use tokbridge::recipes::opd::config::Opd;
use tokbridge::recipes::opd::{self, candidates};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn recipe(extra: &[&str]) -> Opd {
    common::tiny_opd(&[&["dpca.candidates={k: 8}"], extra].concat())
}

fn sides(r: &Opd) -> (opd::Side, opd::Teacher) {
    let student = opd::load_side(&r.student, "cpu").unwrap();
    let teacher = opd::load_teacher(&r.teacher, "cpu").unwrap();
    (student, teacher)
}

/// Off-policy rollouts of given responses: the student's encoding of each, scored and aligned.
fn rollouts_of(r: &Opd, student: &opd::Side, teacher: &opd::Teacher, lines: &[(&str, &str)]) -> Vec<opd::Rollout> {
    let examples: Vec<Example> = lines
        .iter()
        .map(|(p, a)| Example { messages: vec![tokbridge::hf::chat::Message::new("user", p), tokbridge::hf::chat::Message::new("assistant", a)] })
        .collect();
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
    let picks: Vec<usize> = (0..examples.len()).collect();
    let mut rollouts = opd::make_rollouts(&opd::Plan::of(r), student, teacher, &examples, &prompts, &picks, false, 0).unwrap();
    opd::score_teacher(teacher, &mut rollouts, 8, opd::TeacherKeeps::LogProbs).unwrap();
    opd::old_logprobs(student, &mut rollouts, 8, 8).unwrap();
    opd::assign_advantages(r, &mut rollouts);
    rollouts
}

fn text_before(student: &opd::Side, x: &opd::Rollout, pos: usize) -> Vec<u8> {
    x.response[..pos].iter().flat_map(|&i| student.tok.pieces().bytes[i as usize].clone()).collect()
}

fn prefix_of(x: &opd::Rollout, pos: usize) -> usize {
    x.teacher_start + x.chunks.iter().find(|c| c.student.start == pos).unwrap().teacher.start
}

#[test]
fn tree_pass_equals_scoring_each_candidate_alone() {
    let r = recipe(&[]);
    let (student, teacher) = sides(&r);
    let examples = tokbridge::data::read(&r.data.train, Some(4)).unwrap();
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| tokbridge::data::prompt_ids(&student.tok, &student.chat, e.prompt()).unwrap()).collect();
    // Sampled responses of the random student, and the dataset's (digits, words, end of turn).
    let mut rollouts = opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &[0, 1], true, 5).unwrap();
    rollouts.extend(opd::make_rollouts(&opd::Plan::of(&r), &student, &teacher, &examples, &prompts, &[2, 3], false, 0).unwrap());
    opd::score_teacher(&teacher, &mut rollouts, 8, opd::TeacherKeeps::LogProbs).unwrap();
    opd::old_logprobs(&student, &mut rollouts, 8, 8).unwrap();
    opd::assign_advantages(&r, &mut rollouts);
    let spec = r.dpca.candidates.clone().unwrap();
    let mut cache = candidates::PathCache::default();
    let stats = candidates::score_candidates(&spec, &student, &teacher, &mut rollouts, 3, 6, false, &mut cache).unwrap();
    assert!(stats.positions > 20, "{stats:?}");
    let mut multi = 0;
    let mut checked = 0;
    for x in &rollouts {
        for s in &x.scored {
            let prefix = prefix_of(x, s.pos);
            let before = text_before(&student, x, s.pos);
            let mut paths = Vec::new();
            let mut logp = Vec::new();
            for &id in &s.ids {
                let path = candidates::candidate_path(&student, &teacher, x, prefix, &before, id, 6, &mut candidates::PathCache::default()).unwrap().expect("a scored candidate has a path");
                // The window encoding equals the whole conversation's.
                if !student.tok.eos_ids.contains(&id) && id != student.eot {
                    let text = format!("{}{}{}", x.teacher_prompt, String::from_utf8(before.clone()).unwrap(), String::from_utf8(student.tok.pieces().bytes[id as usize].clone()).unwrap());
                    let (full, _) = opd::teacher_encode(&teacher, &text).unwrap();
                    assert_eq!(full[..prefix], x.teacher_ids[..prefix]);
                    assert_eq!(full[prefix..], path[..], "window and whole text differ for {text:?}");
                }
                // The candidate as its own sequence: the teacher's prefix and the path.
                let seq: Vec<i64> = x.teacher_ids[..prefix].iter().chain(&path).copied().collect();
                let lp = teacher.model.local().unwrap().logits(&Tensor::from_slice(&seq).unsqueeze(0)).get(0).log_softmax(-1, Kind::Double);
                logp.push((0..path.len()).map(|d| lp.double_value(&[(prefix + d - 1) as i64, path[d]])).sum::<f64>());
                multi += usize::from(path.len() > 1);
                paths.push(path);
            }
            let excl = candidates::exclusive_logprobs(&paths, &logp);
            let norm = excl.iter().map(|v| v.exp()).sum::<f64>().ln();
            for (a, b) in s.logt.iter().zip(&excl) {
                assert!((*a as f64 - (b - norm)).abs() < 1e-5, "tree {a} vs alone {}", b - norm);
            }
            checked += s.ids.len();
        }
    }
    eprintln!("{stats:?}; {checked} candidates checked, {multi} with several teacher tokens");
    assert!(checked > 100 && multi > 10, "checked {checked} candidates, {multi} with several teacher tokens");
    // The merged pass (positions: all) also gives log q of every response token, as the
    // plain scoring pass does, in one teacher pass; and with the cache of the first pass it
    // finds the same candidates with the same teacher distribution.
    let plain: Vec<Vec<f32>> = rollouts.iter().map(|x| x.logq.clone()).collect();
    let first: Vec<Vec<(usize, Vec<i64>, Vec<f32>)>> = rollouts.iter().map(|x| x.scored.iter().map(|s| (s.pos, s.ids.clone(), s.logt.clone())).collect()).collect();
    for x in rollouts.iter_mut() {
        x.logq.clear();
        x.scored.clear();
    }
    let merged = candidates::score_candidates(&spec, &student, &teacher, &mut rollouts, 3, 6, true, &mut cache).unwrap();
    assert_eq!(merged.positions, stats.positions);
    for (x, want) in rollouts.iter().zip(&first) {
        assert_eq!(x.scored.len(), want.len());
        for (s, (pos, ids, logt)) in x.scored.iter().zip(want) {
            assert_eq!((s.pos, &s.ids), (*pos, ids));
            assert!(s.logt.iter().zip(logt).all(|(a, b)| (a - b).abs() < 1e-5), "{:?} vs {logt:?}", s.logt);
        }
    }
    for (x, want) in rollouts.iter().zip(&plain) {
        assert_eq!(x.logq.len(), want.len());
        assert!(x.logq.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?} vs {want:?}", x.logq);
    }
    let nodes = merged.teacher_tokens - rollouts.iter().map(|x| x.teacher_ids.len()).sum::<usize>();
    assert!(nodes > 0 && nodes < merged.teacher_tokens / 2, "tree nodes ({nodes}) are counted as teacher tokens");
}

#[test]
fn masking_rules_at_the_boundaries() {
    let r = recipe(&[]);
    let (student, teacher) = sides(&r);
    let rollouts = rollouts_of(&r, &student, &teacher, &[("Q", "Tom has 1234 apples. Café")]);
    let x = &rollouts[0];
    let id = |s: &str| student.tok.encode(s, false).unwrap();
    let path = |pos: usize, cand: i64| candidates::candidate_path(&student, &teacher, x, prefix_of(x, pos), &text_before(&student, x, pos), cand, 6, &mut candidates::PathCache::default()).unwrap();
    // The chunk of "12" (this fixture student packs up to two digits): a digit group becomes
    // the teacher's single digits.
    let p12 = x.response.iter().position(|&t| t == id("12")[0]).expect("the student packs 12");
    assert_eq!(student.tok.decode(&x.response[..p12], false).unwrap(), "Tom has ");
    let digits = |s: &str| teacher.tok.encode(s, false).unwrap();
    assert_eq!(path(p12, id("12")[0]), Some(digits("12")));
    assert_eq!(path(p12, id("9")[0]), Some(digits("9")));
    // More teacher tokens than K: left out.
    assert_eq!(candidates::candidate_path(&student, &teacher, x, prefix_of(x, p12), &text_before(&student, x, p12), id("12")[0], 1, &mut candidates::PathCache::default()).unwrap(), None);
    // Text that merges with the prefix in the teacher's tokenization: after "Tom has " the
    // candidate "s" makes the teacher write " s" as one token, so its prefix changes.
    assert_eq!(teacher.tok.encode(" s", false).unwrap().len(), 1, "the fixture teacher has the token ' s'");
    assert_eq!(path(p12, id("s")[0]), None);
    // A byte of a multi-byte character is not text: left out.
    let lone = (0..student.tok.pieces().bytes.len() as i64).find(|&i| student.tok.pieces().bytes[i as usize] == [0xA9u8]).expect("a byte token");
    assert_eq!(path(p12, lone), None);
    // Special tokens are left out, the student's end of turn is the teacher's.
    let special = (0..student.tok.pieces().special.len() as i64).find(|&i| student.tok.pieces().special[i as usize] && i != student.eot && !student.tok.eos_ids.contains(&i)).expect("a special token");
    assert_eq!(path(p12, special), None);
    assert_eq!(path(p12, student.eot), Some(vec![teacher.eot]));
}

/// A candidate's teacher path by the rule itself, on the whole conversation's text.
fn whole_text_path(student: &opd::Side, teacher: &opd::Teacher, x: &opd::Rollout, pos: usize, id: i64, k: usize) -> Option<Vec<i64>> {
    let piece = String::from_utf8(student.tok.pieces().bytes[id as usize].clone()).ok().filter(|p| !p.is_empty())?;
    let text = format!("{}{}{piece}", x.teacher_prompt, String::from_utf8(text_before(student, x, pos)).unwrap());
    let (full, _) = opd::teacher_encode(teacher, &text).unwrap();
    let prefix = prefix_of(x, pos);
    let path = full.get(prefix..).filter(|p| !p.is_empty() && full[..prefix] == x.teacher_ids[..prefix])?.to_vec();
    let spelled: Vec<u8> = path.iter().flat_map(|&t| teacher.tok.pieces().bytes[t as usize].clone()).collect();
    (path.len() <= k && spelled == piece.as_bytes()).then_some(path)
}

#[test]
fn windows_after_a_line_end_give_the_whole_texts_paths() {
    // Words the fixture teacher spells in many pieces right after a line end, where no
    // whitespace-led token lies within the window: every student token as a candidate at
    // every chunk start gets the path the whole conversation's encoding gives it, and with one
    // cache for all of them.
    let r = recipe(&[]);
    let (student, teacher) = sides(&r);
    let rollouts = rollouts_of(&r, &student, &teacher, &[("Q", "Tom has 12.\nXyzzyqwvkjhgf: Tom sells 3.\nQwvkjhgxyzzy")]);
    let x = &rollouts[0];
    let mut cache = candidates::PathCache::default();
    let (mut some, mut compared) = (0, 0);
    for c in x.chunks.iter().filter(|c| c.student.start > 0) {
        let pos = c.student.start;
        for id in 0..student.tok.pieces().bytes.len() as i64 {
            if student.tok.pieces().special[id as usize] || student.tok.eos_ids.contains(&id) || id == student.eot {
                continue;
            }
            let got = candidates::candidate_path(&student, &teacher, x, prefix_of(x, pos), &text_before(&student, x, pos), id, 6, &mut cache).unwrap();
            assert_eq!(got, whole_text_path(&student, &teacher, x, pos, id, 6), "candidate {id} at {pos}");
            some += usize::from(got.is_some());
            compared += 1;
        }
    }
    assert!(compared > 1000 && some > 100, "{compared} compared, {some} with a path");
}

#[test]
fn exclusive_probabilities_by_hand() {
    // A teacher sure of "123" after the prefix: q(1) = q(2|1) = q(3|12) = 0.9.
    let paths = vec![vec![1], vec![1, 2], vec![1, 2, 3], vec![4], vec![1, 5]];
    let l9 = 0.9f64.ln();
    let logp = vec![l9, 2.0 * l9, 3.0 * l9, 0.05f64.ln(), l9 + 0.01f64.ln()];
    let p: Vec<f64> = candidates::exclusive_logprobs(&paths, &logp).iter().map(|x| x.exp()).collect();
    // "1" loses its minimal extensions "12" and "15"; "12" loses "123"; "123", "4", "15" keep theirs.
    let want = [0.9 - 0.81 - 0.009, 0.81 - 0.729, 0.729, 0.05, 0.009];
    for (a, b) in p.iter().zip(want) {
        assert!((a - b).abs() < 1e-9, "{p:?}");
    }
    assert_eq!((0..5).max_by(|&a, &b| p[a].total_cmp(&p[b])), Some(2), "the right 3-digit token wins");
}

fn tokbridge(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(root()).args(args).output().expect("runs");
    assert!(out.status.success(), "tokbridge {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A teacher trained until it knows one answer ranks the right multi-digit student token first
/// among candidates that include its prefix ("5") and wrong numbers. (The fixture student packs
/// at most two digits per token; the demo's packs three.)
#[test]
fn a_teacher_that_knows_the_answer_prefers_the_right_multi_digit_token() {
    let tmp = TempDir::new();
    let data = tmp.path().join("one.jsonl");
    let line = serde_json::json!({"prompt": "What is 20 + 36?", "response": "20 + 36 = 56.\n#### 56"}).to_string();
    std::fs::write(&data, format!("{line}\n").repeat(32)).unwrap();
    let out = tmp.path().join("teacher");
    tokbridge(&["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", out.display()), "model.path=tests/fixtures/models/qwen3", &format!("data.train={}", data.display()), "training.steps=60", "training.grad_accum=1", "eval=null", "logging.progress=false", "export_to=null"]);
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let teacher_dir = out.join("checkpoints").join(latest.trim());
    let r = recipe(&[&format!("teacher.path={}", teacher_dir.display())]);
    let (student, teacher) = sides(&r);
    // The student wrote a wrong answer; put the right one and near misses among its candidates.
    let mut rollouts = rollouts_of(&r, &student, &teacher, &[("What is 20 + 36?", "20 + 36 = 92.\n#### 92")]);
    let id = |s: &str| student.tok.encode(s, false).unwrap()[0];
    let x = &mut rollouts[0];
    let pos = x.response.iter().position(|&t| t == id("92")).unwrap();
    x.top[pos] = ["92", "56", "5", "58", "65", "6", "8"].iter().map(|s| (id(s), -2.0f32)).collect();
    let spec = r.dpca.candidates.clone().unwrap();
    candidates::score_candidates(&spec, &student, &teacher, &mut rollouts, 1, 6, false, &mut candidates::PathCache::default()).unwrap();
    let s = rollouts[0].scored.iter().find(|s| s.pos == pos).expect("the answer's position is scored");
    let best = (0..s.ids.len()).max_by(|&a, &b| s.logt[a].total_cmp(&s.logt[b])).unwrap();
    let probs: Vec<(String, f32)> = s.ids.iter().zip(&s.logt).map(|(&i, &l)| (student.tok.decode(&[i], false).unwrap(), l.exp())).collect();
    eprintln!("teacher over candidates: {probs:?}");
    assert_eq!(s.ids[best], id("56"), "{probs:?}");
    assert!(s.logt[best].exp() > 0.5, "{probs:?}");
}

#[test]
fn dpca_with_candidates_trains_and_counts_its_teacher_cost() {
    let tmp = TempDir::new();
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut args = vec!["run".to_string(), "recipes/opd/tiny.yaml".into(), format!("output_dir={}", dir.display()), "training.steps=2".into(), "eval=null".into(), "logging.progress=false".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        tokbridge(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|m| m["train/loss"].is_number()).collect::<Vec<_>>()
    };
    let plain = run("plain", &[]);
    let cand = run("cand", &["dpca.candidates={k: 8, weight: 1.0}"]);
    for m in &cand {
        assert!(m["cand/positions"].as_f64().unwrap() > 10.0, "{m}");
        assert!(m["cand/candidates_per_position"].as_f64().unwrap() >= 2.0, "{m}");
        for k in ["cand/teacher_top_differs", "cand/teacher_mass", "cand/student_mass", "time/candidates_s"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k} in {m}");
        }
        assert!(m["train/grad_norm"].as_f64().unwrap() > 0.0);
    }
    // The same rollouts (same seed, first step): the candidate term adds loss, and the budget
    // counts the tree nodes on top of the one teacher pass that also scored the responses.
    let (p, c) = (&plain[0], &cand[0]);
    let tokens = |m: &serde_json::Value| m["budget/teacher_forward_tokens"].as_f64().unwrap();
    assert_eq!(p["opd/response_length"], c["opd/response_length"]);
    assert_eq!(p["opd/teacher_logprob"], c["opd/teacher_logprob"], "the merged pass scores the responses as the plain one");
    // The student's side: the sampler's log-probs in the plain run, a forward's (for the top-k)
    // with candidates; equal up to float rounding.
    let gap = |m: &serde_json::Value| m["opd/logq_minus_logp"].as_f64().unwrap();
    assert!((gap(p) - gap(c)).abs() < 1e-5, "{p} {c}");
    assert!(tokens(c) > tokens(p) && tokens(c) < 1.5 * tokens(p), "{p} {c}");
    assert!(c["train/loss"].as_f64().unwrap() > p["train/loss"].as_f64().unwrap(), "{p} {c}");
    // disagree scores fewer positions, after a plain scoring pass that the budget also counts.
    let few = run("disagree", &["dpca.candidates={k: 8, positions: disagree, threshold: -3.0}"]);
    assert!(few[0]["cand/positions"].as_f64().unwrap() < c["cand/positions"].as_f64().unwrap());
    assert!(tokens(&few[0]) > tokens(p) + few[0]["cand/teacher_tokens"].as_f64().unwrap() - 1.0);
}

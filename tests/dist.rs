//! Data parallelism over c10d's Gloo process group on the loopback address: two local ranks
//! (`tokbridge run --nproc 2`, or two processes with torchrun's variables) against one process
//! with the combined batch. A build without gloo's headers skips, loudly.
mod common;

use common::tempdir::TempDir;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One test at a time: each runs two ranks on the machine's two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v["train/loss"].as_f64()).collect()
}

fn run(recipe: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let out_arg = format!("output_dir={}", out.display());
    let mut args = vec!["run", recipe, out_arg.as_str(), "eval=null"];
    args.extend_from_slice(extra);
    common::tokbridge(&args)
}

/// Runs `recipe` with `extra` once in one process (into `tmp/NAME1`) and once over two ranks
/// (`tmp/NAME2`); returns the two output directories.
fn one_and_two(tmp: &TempDir, name: &str, recipe: &str, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (one, two) = (tmp.path().join(format!("{name}1")), tmp.path().join(format!("{name}2")));
    for (dir, nproc) in [(&one, &[][..]), (&two, &["--nproc", "2"][..])] {
        let out = format!("output_dir={}", dir.display());
        let mut args = vec!["run", recipe, out.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(nproc);
        common::ok(common::tokbridge(&args));
    }
    (one, two)
}

/// Whether this build trains over several processes (it was built with gloo's headers).
fn has_dist(tmp: &TempDir) -> bool {
    let out = run("recipes/sft/tiny.yaml", &tmp.path().join("probe"), &["training.steps=1", "--nproc", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("this build has no multi-process training") {
        eprintln!("\n*** SKIPPING multi-process test: {}", stderr.trim());
        return false;
    }
    common::ok(out);
    true
}

fn assert_same_curve(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{what} step {}: {x} vs {y}", i + 1);
    }
}

#[test]
fn two_ranks_train_as_one_process_on_the_combined_batch() {
    let _one = serial();
    let tmp = TempDir::new();
    if !has_dist(&tmp) {
        return;
    }
    // SFT: 12 steps of 2 micro-batches of 4; each rank takes 2 examples of each micro-batch.
    let (one, two) = (tmp.path().join("sft1"), tmp.path().join("sft2"));
    common::ok(run("recipes/sft/tiny.yaml", &one, &[]));
    common::ok(run("recipes/sft/tiny.yaml", &two, &["--nproc", "2"]));
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 12);
    assert_same_curve(&a, &b, "sft");
    // OPD across tokenizers, greedy rollouts (sampling is then the same whatever the batch).
    let (one, two) = (tmp.path().join("opd1"), tmp.path().join("opd2"));
    common::ok(run("recipes/opd/tiny.yaml", &one, &["rollout.temperature=0"]));
    common::ok(run("recipes/opd/tiny.yaml", &two, &["rollout.temperature=0", "--nproc", "2"]));
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 6);
    assert!(a.iter().filter(|&&l| l != 0.0).count() >= 3, "{a:?}");
    assert_same_curve(&a, &b, "opd");
    // The teacher's tokens are counted over both ranks.
    let budget = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().last().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["budget/teacher_forward_tokens"].clone());
    assert_eq!(budget(&one), budget(&two));
    // Rank 0 checked at every checkpoint that both ranks hold the same weights, and wrote it.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(two.join("checkpoints/step-000006/state.json")).unwrap()).unwrap();
    assert_eq!(state["counters"]["world_size"], 2.0, "{state}");
}

#[test]
fn a_stopped_two_rank_run_resumes_to_its_curve_and_only_with_two_ranks() {
    let _one = serial();
    let tmp = TempDir::new();
    if !has_dist(&tmp) {
        return;
    }
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    common::ok(run("recipes/sft/tiny.yaml", &whole, &["--nproc", "2"]));
    common::ok(run("recipes/sft/tiny.yaml", &parts, &["--nproc", "2", "--stop-after", "6"]));
    let out = run("recipes/sft/tiny.yaml", &parts, &["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim_end().ends_with("the checkpoint was written by 2 process(es) and this run has 1: resume with the same WORLD_SIZE (or --nproc)"), "{stderr}");
    common::ok(run("recipes/sft/tiny.yaml", &parts, &["--resume", "--nproc", "2"]));
    assert_same_curve(&losses(&whole), &losses(&parts), "resumed");
}

#[test]
fn a_rank_that_dies_stops_the_other_with_one_line() {
    let _one = serial();
    let tmp = TempDir::new();
    if !has_dist(&tmp) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let out = tmp.path().join("run");
    let rank = |r: &str| {
        Command::new(env!("CARGO_BIN_EXE_tokbridge"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", out.display()), "eval=null", "training.steps=100000", "training.checkpoint_every=null"])
            .envs([("RANK", r), ("LOCAL_RANK", r), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str()), ("OMP_NUM_THREADS", "1"), ("TOKBRIDGE_DIST_TIMEOUT_S", "60")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A rank whose rendezvous never answers gives up after the timeout, in one line.
    let lonely = Command::new(env!("CARGO_BIN_EXE_tokbridge"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", tmp.path().join("lonely").display()), "eval=null"])
        .envs([("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_PORT", port.as_str()), ("TOKBRIDGE_DIST_TIMEOUT_S", "2")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&lonely.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(!lonely.status.success() && last.starts_with(&format!("error: rank 1 of 2: joining the group at 127.0.0.1:{port}: ")) && last.contains("timed out"), "{err}");

    let (zero, mut one) = (rank("0"), rank("1"));
    let started = Instant::now();
    while losses(&out).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "no steps within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    one.kill().unwrap();
    one.wait().unwrap();
    let killed_at = Instant::now();
    let result = zero.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(!result.status.success(), "rank 0 went on alone: {stderr}");
    assert!(last.starts_with("error: rank 0 of 2: ") && last.ends_with("(did another rank stop?)"), "{last}");
    assert!(killed_at.elapsed() < Duration::from_secs(70), "rank 0 took {:?} to stop", killed_at.elapsed());
    eprintln!("rank 0 stopped {:?} after rank 1 was killed: {last}", killed_at.elapsed());
}

#[test]
fn teacher_responses_over_two_ranks_write_the_same_dataset() {
    let _one = serial();
    let tmp = TempDir::new();
    if !has_dist(&tmp) {
        return;
    }
    // Greedy answers: each rank answers half of every batch, rank 0 writes them in order.
    let (one, two) = one_and_two(&tmp, "answers", "recipes/teacher_responses/tiny.yaml", &["sampling.temperature=0"]);
    let read = |d: &Path| std::fs::read_to_string(d.join("responses.jsonl")).unwrap();
    assert_eq!(read(&one).lines().count(), 16);
    assert_eq!(read(&one), read(&two));
    let stats = |d: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(d.join("stats.json")).unwrap()).unwrap()["generated_tokens"].clone();
    assert_eq!(stats(&one), stats(&two));
}

#[test]
fn evaluations_over_two_ranks_equal_one_process() {
    let _one = serial();
    let tmp = TempDir::new();
    if !has_dist(&tmp) {
        return;
    }
    // The eval recipe: each rank scores half of the examples; rank 0 sums the counts, gathers
    // the generations in order and writes them.
    let (one, two) = one_and_two(&tmp, "eval", "recipes/eval/tiny.yaml", &[]);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&one.join("eval.json")), read(&two.join("eval.json")));
    let gens = read(&one.join("generations/step-000000.jsonl"));
    assert_eq!(gens.lines().count(), 8);
    assert_eq!(gens, read(&two.join("generations/step-000000.jsonl")));
    // Evaluations during SFT (every 6 steps, greedy exact match and NLL) likewise.
    let (one, two) = one_and_two(&tmp, "sft", "recipes/sft/tiny.yaml", &["eval.scorers=[exact_match, nll]"]);
    let evals = |run: &Path| -> Vec<(u64, f64, f64)> {
        read(&run.join("metrics.jsonl")).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("eval/nll").is_some()).map(|v| (v["step"].as_u64().unwrap(), v["eval/nll"].as_f64().unwrap(), v["eval/exact_match"].as_f64().unwrap())).collect()
    };
    let (a, b) = (evals(&one), evals(&two));
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 6, 12]);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && (x.1 - y.1).abs() <= 1e-5 * x.1.abs() && x.2 == y.2, "{x:?} vs {y:?}");
    }
    assert_eq!(read(&one.join("generations/step-000012.jsonl")), read(&two.join("generations/step-000012.jsonl")));
}

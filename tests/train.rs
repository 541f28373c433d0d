//! End-to-end recipe runs on the committed fixtures, through the `tokbridge` binary: SFT
//! lowers the loss and writes a complete run directory; an interrupted run resumed from its
//! checkpoint reproduces the uninterrupted loss curve; export reloads to identical logits;
//! a diverging run stops with the last good checkpoint; teacher responses resume; eval writes
//! its scores; packed sequences train as padded ones; a hub dataset in Parquet trains as its
//! JSONL; every shipped recipe validates.
mod common;

use common::tempdir::TempDir;
use common::{ok, tokbridge};
use std::path::Path;
use std::process::Output;
use tch::{Device, Kind, Tensor};


/// metrics.jsonl as (step, object) pairs.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The last logged training loss of every step, in step order.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let mut by_step = std::collections::BTreeMap::new();
    for m in metrics(run) {
        if let Some(l) = m["train/loss"].as_f64() {
            by_step.insert(m["step"].as_u64().unwrap(), l);
        }
    }
    by_step.into_iter().collect()
}

fn sft(out: &Path, extra: &[&str], flags: &[&str]) -> Output {
    let dir = format!("output_dir={}", out.display());
    let mut args = vec!["run", "recipes/sft/tiny.yaml", &dir, "logging.progress=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(flags);
    tokbridge(&args)
}

#[test]
fn sft_lowers_the_loss_and_writes_a_run_directory() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    ok(sft(&run, &["training.steps=8", "eval.every=8"], &[]));
    let l = losses(&run);
    assert_eq!(l.len(), 8);
    assert!(l[7].1 < 0.6 * l[0].1, "loss did not fall enough: {l:?}");
    let evals: Vec<f64> = metrics(&run).iter().filter_map(|m| m["eval/nll"].as_f64()).collect();
    assert_eq!(evals.len(), 2, "eval at step 0 and at the end");
    assert!(evals[1] < evals[0], "held-out NLL should fall: {evals:?}");
    let first = &metrics(&run)[1];
    for key in ["train/lr", "train/grad_norm", "train/tokens", "train/tokens_per_s"] {
        assert!(first[key].as_f64().unwrap() > 0.0, "{key} missing in {first}");
    }
    let resolved = std::fs::read_to_string(run.join("recipe.yaml")).unwrap();
    assert!(resolved.contains("steps: 8") && resolved.contains("every: 8"), "resolved recipe: {resolved}");
    let tb: Vec<_> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(tb.iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents.") && p.metadata().unwrap().len() > 100));
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest, "step-000008");
    // A second run into the same directory without --resume is refused.
    let again = sft(&run, &["training.steps=8"], &[]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_loss_curve() {
    let tmp = TempDir::new();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let extra = ["training.steps=8", "training.checkpoint_every=2", "eval=null"];
    ok(sft(&full, &extra, &[]));
    ok(sft(&cut, &extra, &["--stop-after", "3"]));
    assert_eq!(losses(&cut).len(), 3, "the interrupted run stops after 3 steps");
    assert_eq!(std::fs::read_to_string(cut.join("checkpoints/latest")).unwrap(), "step-000002");
    ok(sft(&cut, &extra, &["--resume"]));
    let (a, b) = (losses(&full), losses(&cut));
    assert_eq!(a.len(), 8);
    assert_eq!(a.len(), b.len());
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "step {s}: uninterrupted {x} vs resumed {y}");
    }
}

/// `training.stop_at` ends the run at the first evaluation that meets the target, and a
/// resumed stopped run trains no further; a metric the evaluation does not report is an error.
#[test]
fn sft_stops_at_the_first_evaluation_that_reaches_its_target() {
    let tmp = TempDir::new();
    let (full, stop) = (tmp.path().join("full"), tmp.path().join("stop"));
    let extra = ["training.steps=8", "eval.every=2", "eval.scorers=[nll]", "schedule.decay=constant"];
    ok(sft(&full, &extra, &[]));
    let nll: Vec<(u64, f64)> = metrics(&full).iter().filter_map(|m| Some((m["step"].as_u64()?, m["eval/nll"].as_f64()?))).collect();
    assert_eq!(nll.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
    assert!(nll[2].1 < nll[1].1, "held-out NLL should fall from step 2 to 4: {nll:?}");
    // A target between the step-2 and step-4 values: the run must stop at step 4.
    let target = format!("training.stop_at=[{{metric: eval/nll, at_most: {}}}]", (nll[1].1 + nll[2].1) / 2.0);
    let export = format!("export_to={}", stop.join("export").display());
    ok(sft(&stop, &[&extra[..], &[target.as_str(), export.as_str()]].concat(), &[]));
    assert_eq!(std::fs::read_to_string(stop.join("checkpoints/latest")).unwrap(), "step-000004");
    let (a, b) = (losses(&full), losses(&stop));
    assert_eq!(b.len(), 4, "four steps, then stopped: {b:?}");
    assert_eq!(a[..4], b[..], "the stopped run trains exactly as the full one until it stops");
    assert!(stop.join("export/config.json").exists(), "a run stopped at its target is finished and exported");
    ok(sft(&stop, &[&extra[..], &[target.as_str()]].concat(), &["--resume"]));
    assert_eq!(losses(&stop).len(), 4, "resuming a stopped run trains no further");
    // A metric the evaluation does not report names itself.
    let bad = sft(&tmp.path().join("bad"), &[&extra[..], &["training.stop_at=[{metric: eval/exact_match, at_least: 0.5}]"]].concat(), &[]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("training.stop_at.metric") && err.contains("eval/exact_match"), "{err}");
}

#[test]
fn activation_checkpointing_gives_the_same_loss_curve_and_logs_peak_memory() {
    let tmp = TempDir::new();
    let (plain, re) = (tmp.path().join("plain"), tmp.path().join("re"));
    let extra = ["training.steps=4", "eval=null"];
    ok(sft(&plain, &extra, &[]));
    ok(sft(&re, &[&extra[..], &["training.activation_checkpointing=true"]].concat(), &[]));
    let (a, b) = (losses(&plain), losses(&re));
    assert_eq!(a.len(), 4);
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {s}: plain {x} vs recomputed {y}");
    }
    let peak = metrics(&re)[0]["memory/peak_gib"].as_f64().expect("memory/peak_gib logged");
    assert!(peak > 0.01 && peak < 64.0, "peak resident memory {peak} GiB");
}

#[test]
fn export_reloads_to_identical_logits_in_every_layout() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    ok(sft(&run, &["training.steps=2", "eval=null"], &[]));
    let ckpt = run.join("checkpoints/step-000002");
    let ids = Tensor::from_slice(&[1i64, 40, 50, 60, 70, 80]).unsqueeze(0);
    let _g = tch::no_grad_guard();
    let reference = tokbridge::models::load(&ckpt, Device::Cpu, Kind::Float).unwrap().logits(&ids);
    let out = tmp.path().join("export");
    let out_s = out.to_str().unwrap();
    ok(tokbridge(&["export", run.to_str().unwrap(), "--out", out_s]));
    let exported = tokbridge::models::load(&out, Device::Cpu, Kind::Float).unwrap().logits(&ids);
    assert_eq!((exported - &reference).abs().max().double_value(&[]), 0.0, "f32 export must be exact");
    assert!(out.join("tokenizer.json").exists() && out.join("generation_config.json").exists());
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&st[8..8 + header_len]);
    assert!(header.contains("\"__metadata__\":{\"format\":\"pt\"}"), "{header}");
    assert!(!out.join("model.safetensors.tmp").exists());

    // Sharded bf16 export over the previous one: an index, and logits within bf16 rounding.
    ok(tokbridge(&["export", run.to_str().unwrap(), "--out", out_s, "--dtype", "bf16", "--max-shard-bytes", "60000"]));
    assert!(out.join("model.safetensors.index.json").exists() && !out.join("model.safetensors").exists());
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "bfloat16");
    let bf16 = tokbridge::models::load(&out, Device::Cpu, Kind::Float).unwrap().logits(&ids);
    let diff = (bf16 - &reference).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.5, "bf16 logits differ by {diff}");

    // A tied head stays tied: no lm_head tensor is written.
    let tied = tmp.path().join("tied");
    ok(tokbridge(&["export", "tests/fixtures/models/qwen2", "--out", tied.to_str().unwrap()]));
    let c = tokbridge::hf::safetensors::Checkpoint::open(&tied).unwrap();
    assert!(!c.contains("lm_head.weight") && c.contains("model.embed_tokens.weight"));

    // Never replace a directory that is not a model.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
    let refused = tokbridge(&["export", run.to_str().unwrap(), "--out", foreign.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "keep me");
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    let out = sft(&run, &["optimizer.lr=1.0e+30", "optimizer.grad_clip=null", "schedule.warmup_steps=0", "training.checkpoint_every=1", "eval=null"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Step 2's loss is NaN, so the weights of checkpoint 1 (after one update at lr 1e30, about
    // 1e29) produced it: that checkpoint is not good, and there is none before it.
    assert!(err.contains("non-finite loss") && err.contains("at step 2") && err.contains("The last good checkpoint is none"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(), "step-000001");
}

#[test]
fn teacher_responses_resume_to_the_same_dataset() {
    let tmp = TempDir::new();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let run = |dir: &Path| ok(tokbridge(&["run", "recipes/teacher_responses/tiny.yaml", &format!("output_dir={}", dir.display()), "logging.progress=false"]));
    run(&a);
    let full = std::fs::read_to_string(a.join("responses.jsonl")).unwrap();
    assert_eq!(full.lines().count(), 16);
    let examples = tokbridge::data::read_jsonl(&a.join("responses.jsonl"), None).unwrap();
    assert!(examples.iter().all(|e| e.response().is_some()), "each line is an SFT example");
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["prompts"], 16);
    assert!(stats["generated_tokens"].as_u64().unwrap() >= 16);

    // An interrupted run: one full batch of 8 plus a torn line (and the run's `.lock`, which
    // every run directory has from its start).
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join(".lock"), "").unwrap();
    let kept: String = full.split_inclusive('\n').take(9).collect();
    std::fs::write(b.join("responses.jsonl"), format!("{kept}{{\"prompt\": \"torn")).unwrap();
    run(&b);
    assert_eq!(std::fs::read_to_string(b.join("responses.jsonl")).unwrap(), full);

    // A later slice of the prompts: `data.skip` leaves out the first ones.
    let c = tmp.path().join("c");
    ok(tokbridge(&["run", "recipes/teacher_responses/tiny.yaml", &format!("output_dir={}", c.display()), "logging.progress=false", "data.skip=40"]));
    let prompts = tokbridge::data::read_jsonl(Path::new("tests/fixtures/data/arith_train.jsonl"), None).unwrap();
    let later = tokbridge::data::read_jsonl(&c.join("responses.jsonl"), None).unwrap();
    assert_eq!(later.len(), 8, "16 asked, 8 left after the first 40 of 48");
    for (got, want) in later.iter().zip(&prompts[40..]) {
        assert_eq!(got.messages[0], want.messages[0]);
    }
    let out = tokbridge(&["run", "recipes/teacher_responses/tiny.yaml", &format!("output_dir={}", c.display()), "data.skip=48"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.skip 48 leaves no prompts of the 48 in tests/fixtures/data/arith_train.jsonl"), "{err}");
}

#[test]
fn eval_recipe_writes_every_score() {
    let tmp = TempDir::new();
    let out = tmp.path().join("eval");
    ok(tokbridge(&["run", "recipes/eval/tiny.yaml", &format!("output_dir={}", out.display()), "logging.progress=false"]));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    for key in ["eval/exact_match", "eval/avg@4", "eval/nll", "eval/ppl", "eval/response_tokens"] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    // A random model's perplexity is near its vocabulary size, far from 1.
    assert!(v["eval/ppl"].as_f64().unwrap() > 50.0);
}

/// Packed rows (`data.packing`) train exactly as padded ones: each sequence keeps its
/// positions and sees only itself, so the loss curve is the padded one within float rounding,
/// with activation checkpointing and on families with sliding windows and soft-capping
/// (gemma2) and learned positions (gpt2).
#[test]
fn packed_sequences_train_as_padded_ones() {
    let tmp = TempDir::new();
    // Conversations of one to three turns with answers of one to four lines: 20-160 tokens,
    // so rows of up to 256 hold several and padding has something to save.
    let train = tmp.path().join("varied.jsonl");
    let lines: Vec<String> = (0..48)
        .map(|i| {
            let line = |k: usize| format!("{} + {} = {}.", 10 * i + k, k, 10 * i + 2 * k);
            let answer = (1..=1 + i % 4).map(line).collect::<Vec<_>>().join(" ");
            let turns = 1 + i % 3;
            let mut messages = vec![];
            for t in 0..turns {
                messages.push(serde_json::json!({"role": "user", "content": format!("Add {t} to {i}, line by line.")}));
                messages.push(serde_json::json!({"role": "assistant", "content": format!("{answer}\n#### {}", i + t)}));
            }
            serde_json::json!({"messages": messages}).to_string()
        })
        .collect();
    std::fs::write(&train, lines.join("\n")).unwrap();
    for (model, extra) in [("llama", "training.activation_checkpointing=false"), ("llama", "training.activation_checkpointing=true"), ("gemma2", "training.steps=4"), ("gpt2", "training.steps=4")] {
        let runs: Vec<_> = ["false", "true"]
            .iter()
            .map(|packing| {
                let out = tmp.path().join(format!("{model}-{extra}-{packing}"));
                let path = format!("model.path=tests/fixtures/models/{model}");
                let data = format!("data.train={}", train.display());
                ok(sft(&out, &[&path, extra, &data, "eval=null", "data.eval=null", &format!("data.packing={packing}")], &[]));
                let padding: Vec<f64> = metrics(&out).iter().filter_map(|m| m["train/padding"].as_f64()).collect();
                (losses(&out), padding)
            })
            .collect();
        let ((padded, pad_a), (packed, pad_b)) = (&runs[0], &runs[1]);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(pad_a) > 0.3 && mean(pad_b) < 0.5 * mean(pad_a), "{model}: padding {pad_a:?} -> {pad_b:?}");
        let runs = [padded.clone(), packed.clone()];
        assert!(runs[0].len() >= 4);
        for ((_, a), (_, b)) in runs[0].iter().zip(&runs[1]) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{model} {extra}: padded {:?} packed {:?}", runs[0], runs[1]);
        }
    }
}

/// A dataset on the hub (`hf://datasets/...`, Parquet shards with other field names, from the
/// hub cache offline) trains exactly as the same records in JSONL.
#[test]
fn a_hub_dataset_in_parquet_shards_trains_as_its_jsonl() {
    let tmp = TempDir::new();
    let cache = tmp.path().join("hub");
    let repo = cache.join("datasets--tiny--arith");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd/data");
    std::fs::create_dir_all(&snapshot).unwrap();
    for shard in ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"] {
        std::fs::copy(Path::new("tests/fixtures/data/hub/arith/data").join(shard), snapshot.join(shard)).unwrap();
    }
    let common = ["training.steps=4", "eval.every=4", "data.shuffle=false"];
    let (jsonl, hub) = (tmp.path().join("jsonl"), tmp.path().join("hub-run"));
    ok(sft(&jsonl, &common, &["data.max_examples=48"]));
    let run = |out: &Path, train: &str| {
        let mut args = vec!["run".to_string(), "recipes/sft/tiny.yaml".into(), format!("output_dir={}", out.display()), "logging.progress=false".into(), format!("data.train={train}")];
        args.extend(common.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(&args)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    ok(run(&hub, "{path: hf://datasets/tiny/arith/data/train-*.parquet, prompt: question, response: answer}"));
    let (a, b) = (losses(&jsonl), losses(&hub));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "the same 48 examples in the same order");
    let resolved = std::fs::read_to_string(hub.join("recipe.yaml")).unwrap();
    assert!(resolved.contains("path: hf://datasets/tiny/arith/data/train-*.parquet") && resolved.contains("prompt: question"), "{resolved}");
    let out = run(&tmp.path().join("absent"), "hf://datasets/tiny/absent/data/train.parquet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dataset hf://datasets/tiny/absent/data/train.parquet: HF_HUB_OFFLINE is set"), "{err}");
    let out = run(&tmp.path().join("typo"), "{path: hf://datasets/tiny/arith/data/train-*.parquet, prompts: question}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown field `prompts`") && err.lines().count() == 1, "{err}");
}

#[test]
fn every_shipped_recipe_validates() {
    let mut n = 0;
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                tokbridge::recipes::recipe::Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 5, "found only {n} recipes");
}

/// Resuming on a dataset smaller than the checkpoint's place in its epoch is one line, not an
/// index panic (#36 item 4).
#[test]
fn resuming_on_a_smaller_dataset_is_refused() {
    let tmp = TempDir::new();
    let dir = tmp.path().join("run");
    // The same recipe over a data file that shrank since (a changed recipe is refused before).
    let data = tmp.path().join("train.jsonl");
    std::fs::copy("tests/fixtures/data/arith_train.jsonl", &data).unwrap();
    let train = format!("data.train={}", data.display());
    ok(sft(&dir, &["training.steps=4", "training.checkpoint_every=2", "eval=null", &train], &["--stop-after", "2"]));
    let four: String = std::fs::read_to_string(&data).unwrap().lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(&data, four).unwrap();
    let out = sft(&dir, &["training.steps=4", "training.checkpoint_every=2", "eval=null", &train], &["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked") && err.trim_end().lines().last().unwrap_or_default().contains("the data now has 4 examples"), "{err}");
}

//! LoRA: on every fixture family, the adapters' gradients equal the chain rule through an
//! explicitly merged full weight (dL/dA = s B^T dL/dW, dL/dB = s dL/dW A^T, with W = W0 + s B A
//! trained as a full model); a LoRA SFT run lowers the loss with the base untouched, resumes
//! exactly, and exports a PEFT adapter directory that loads back to the same log-probs, and a
//! merged model equal to the adapters applied on the fly.
mod common;

use common::tempdir::TempDir;
use common::{ok, tokbridge};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokbridge::nn::lora::LoraSpec;

const TARGETS: [&str; 11] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj", "c_attn", "c_fc"];

fn spec() -> LoraSpec {
    LoraSpec { r: 3, alpha: 6.0, target_modules: TARGETS.iter().map(|s| s.to_string()).collect(), use_rslora: false, dropout: 0.0, modules_to_save: vec![] }
}

/// Summed log-prob of the fixture's reference text, back-propagated.
fn loss_backward(model: &tokbridge::models::Model, ids: &Tensor) {
    let lp = tokbridge::train::token_logprobs(&model.logits(ids), ids);
    (-lp.sum(Kind::Float)).backward();
}

#[test]
fn lora_gradients_equal_the_chain_rule_through_the_merged_weight() {
    for dir in common::model_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        tch::manual_seed(1);
        let lora = tokbridge::models::load_adapted(&dir, Device::Cpu, Kind::Float, None, Some(&spec())).unwrap();
        let ad = lora.adapters.as_ref().unwrap();
        // B starts at zero (PEFT); make it non-zero so both gradients carry signal.
        tch::no_grad(|| {
            for (n, mut t) in ad.vs.variables() {
                if n.contains("lora_B") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05));
                }
            }
        });
        let ids = Tensor::from_slice(&common::reference(&dir).ids).unsqueeze(0);
        loss_backward(&lora, &ids);
        // The same function as a full model with the merged weights.
        let mut full = tokbridge::models::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let merged: std::collections::HashMap<String, Tensor> = lora.merged_weights().into_iter().collect();
        tch::no_grad(|| {
            for (n, mut t) in full.vs.variables() {
                t.copy_(&merged[&n]);
            }
        });
        full.vs.unfreeze();
        loss_backward(&full, &ids);
        let base = full.vs.variables();
        let vars = ad.vs.variables();
        let s = ad.spec.scale();
        let mut checked = 0;
        for (n, a) in &vars {
            let Some(module) = n.strip_suffix(".lora_A.weight") else { continue };
            let b = &vars[&format!("{module}.lora_B.weight")];
            let mut g = base[&format!("{module}.weight")].grad();
            if name == "gpt2" {
                g = g.tr(); // Conv1D stores (in, out)
            }
            let want_a = b.tr().matmul(&g) * s;
            let want_b = g.matmul(&a.tr()) * s;
            for (got, want, what) in [(a.grad(), want_a, "A"), (b.grad(), want_b, "B")] {
                let err = (&got - &want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]).max(1e-6);
                assert!(err <= 1e-4 * scale, "{name} {module} d{what}: max error {err} against max {scale}");
            }
            checked += 1;
        }
        assert!(checked >= 2, "{name}: only {checked} adapted layers");
        // The base stays frozen.
        assert!(lora.vs.variables().values().all(|t| !t.requires_grad()), "{name}: base weights train under LoRA");
    }
}


/// Runs `recipe` with `overrides` uninterrupted and interrupted after 3 steps then resumed, and
/// checks both end at checkpoint `last` with the same adapters; the uninterrupted run's
/// directory.
fn full_and_resumed_agree(tmp: &Path, recipe: &str, overrides: &[&str], last: &str) -> std::path::PathBuf {
    let run = |dir: &Path, flags: &[&str]| {
        let out = format!("output_dir={}", dir.display());
        let mut args = vec!["run", recipe, out.as_str(), "logging.progress=false", "eval=null"];
        args.extend_from_slice(overrides);
        args.extend_from_slice(flags);
        ok(tokbridge(&args))
    };
    let (full, cut) = (tmp.join("full"), tmp.join("cut"));
    run(&full, &[]);
    run(&cut, &["--stop-after", "3"]);
    run(&cut, &["--resume"]);
    let adapters = |r: &Path| std::fs::read(r.join("checkpoints").join(last).join("adapter_model.safetensors")).unwrap();
    assert!(adapters(&full) == adapters(&cut), "{recipe}: the resumed LoRA run ends with different adapters");
    full
}

fn logprobs(model: &str, adapter: Option<&Path>) -> Vec<f64> {
    let mut args = vec!["score", "--model", model, "--text", "Tom has 12 apples and buys 30 more.", "--json"];
    let a = adapter.map(|a| a.display().to_string());
    if let Some(a) = &a {
        args.extend(["--adapter", a.as_str()]);
    }
    let out = ok(tokbridge(&args));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn a_lora_run_trains_resumes_exactly_and_exports_a_peft_adapter() {
    let tmp = TempDir::new();
    // With PEFT's lora_dropout: the masks are drawn again exactly on resume.
    let lora = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj], dropout: 0.1}";
    let full = full_and_resumed_agree(tmp.path(), "recipes/sft/tiny.yaml", &[lora, "training.steps=8", "training.checkpoint_every=2"], "step-000008");
    let no_dropout = tmp.path().join("no-dropout");
    ok(tokbridge(&["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", no_dropout.display()), "eval=null", "training.steps=8", "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj]}"]));
    let loss_at = |run: &Path, step: usize| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|v| v["step"] == step)?["train/loss"].as_f64();
    // Step 1 is the same (B starts at zero, so the adapters add nothing yet); after it dropout shows.
    assert_eq!(loss_at(&full, 1), loss_at(&no_dropout, 1));
    assert_ne!(loss_at(&full, 3), loss_at(&no_dropout, 3), "lora dropout changed nothing");
    let files: Vec<String> = std::fs::read_dir(full.join("checkpoints/step-000008")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!files.contains(&"model.safetensors".to_string()), "a LoRA checkpoint holds only adapters: {files:?}");
    let losses: Vec<f64> = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["train/loss"].as_f64()).collect();
    assert!(losses[7] < losses[0], "LoRA SFT should lower the loss: {losses:?}");

    // Export: a PEFT adapter directory, and the merged model.
    let (adapter, merged) = (tmp.path().join("adapter"), tmp.path().join("merged"));
    ok(tokbridge(&["export", full.to_str().unwrap(), "--out", adapter.to_str().unwrap()]));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_i64(), cfg["lora_alpha"].as_f64(), cfg["lora_dropout"].as_f64()), (Some("LORA"), Some(4), Some(8.0), Some(0.1)));
    let c = tokbridge::hf::safetensors::Checkpoint::open_file(&adapter.join("adapter_model.safetensors")).unwrap();
    assert!(c.names().any(|n| n == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "PEFT's tensor names");
    ok(tokbridge(&["export", full.to_str().unwrap(), "--out", merged.to_str().unwrap(), "--merge"]));
    let base = "tests/fixtures/models/llama";
    let (plain, applied, merged_lp) = (logprobs(base, None), logprobs(base, Some(&adapter)), logprobs(merged.to_str().unwrap(), None));
    assert!(close(&applied, &merged_lp, 1e-4), "adapter on the fly {applied:?} vs merged {merged_lp:?}");
    assert!(!close(&plain, &applied, 1e-3), "the trained adapter changes nothing");
}

type LogProbs = Vec<f64>;

/// Checks a fixture of scripts/fixtures/make_lora_reference.py both ways: `dir/peft-adapter`
/// (written by PEFT) gives PEFT's log-probs here, and `dir/ours-adapter` (exported by tokbridge)
/// gives here the log-probs PEFT computed with it (≤ 1e-4). Returns each adapter's log-probs
/// and the base's from the reference, when it records them.
fn peft_both_ways(dir: &Path, base: &Path) -> (Vec<(&'static str, LogProbs)>, Option<LogProbs>) {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let floats = |k: &str| -> Option<Vec<f64>> { reference[k].as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect()) };
    let ids: Vec<i64> = reference["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let mut out = vec![];
    for (adapter, key) in [("peft-adapter", "peft_adapter_logprobs"), ("ours-adapter", "ours_adapter_logprobs_by_peft")] {
        let m = tokbridge::models::load_adapted(base, Device::Cpu, Kind::Float, Some(&dir.join(adapter)), None).unwrap();
        let t = Tensor::from_slice(&ids).unsqueeze(0);
        let lp = tch::no_grad(|| tokbridge::train::token_logprobs(&m.logits(&t), &t)).squeeze_dim(0);
        let got: Vec<f64> = Vec::<f32>::try_from(lp).unwrap().into_iter().map(f64::from).collect();
        let want = floats(key).expect(key);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(got.len() == want.len() && err <= 1e-4, "{} {adapter}: max |ours - PEFT| = {err}", dir.display());
        out.push((adapter, got));
    }
    (out, floats("base_logprobs"))
}

/// Parity with PEFT itself (scripts/fixtures/make_lora_reference.py, peft 0.21.2): an adapter
/// PEFT wrote gives PEFT's log-probs here; the adapter tokbridge exported gives here the
/// log-probs PEFT computed with it; `export --merge` equals PEFT's merge_and_unload.
#[test]
fn adapters_match_peft_both_ways_and_merge_equals_merge_and_unload() {
    for name in ["llama", "gpt2"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(name);
        let base = common::fixtures().join(name);
        peft_both_ways(&dir, &base);
        // Our merge of PEFT's adapter against merge_and_unload.
        let m = tokbridge::models::load_adapted(&base, Device::Cpu, Kind::Float, Some(&dir.join("peft-adapter")), None).unwrap();
        let merged: std::collections::HashMap<String, Tensor> = m.merged_weights().into_iter().collect();
        let want = tokbridge::hf::safetensors::Checkpoint::open_file(&dir.join("merged.safetensors")).unwrap();
        let names: Vec<String> = want.names().map(String::from).collect();
        assert!(!names.is_empty());
        for n in names {
            let ours_name = if name == "gpt2" && !n.starts_with("transformer.") { format!("transformer.{n}") } else { n.clone() };
            let err = (&merged[&ours_name] - want.tensor(&n).unwrap()).abs().max().double_value(&[]);
            assert!(err <= 1e-6, "{name} {n}: merged weight differs by {err}");
        }
    }
}

/// OPD with a LoRA student: the student samples and is scored with its adapters, only they
/// train, and an interrupted run resumes to the same adapters.
#[test]
fn opd_trains_a_lora_student_and_resumes_exactly() {
    let tmp = TempDir::new();
    let lora = "student.lora={r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}";
    let full = full_and_resumed_agree(tmp.path(), "recipes/opd/tiny.yaml", &[lora], "step-000006");
    let c = tokbridge::hf::safetensors::Checkpoint::open_file(&full.join("checkpoints/step-000006/adapter_model.safetensors")).unwrap();
    let b = c.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert!(b.abs().max().double_value(&[]) > 0.0, "B left zero: the adapters did not train");
}

/// Lays a directory out as the hub cache does (refs/main -> snapshots/<sha>/).
fn cached(root: &Path, repo: &str, from: &Path) -> std::path::PathBuf {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), sha).unwrap();
    let snap = repo_dir.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
        }
    }
    snap
}

/// Hub ids work for adapters (`--adapter org/name`, from the cache, offline) and a LoRA run on
/// a hub-id base names that id as PEFT's base_model_name_or_path, not the cache path.
#[test]
fn adapters_and_bases_by_hub_id() {
    let tmp = TempDir::new();
    let cache = tmp.path().join("hub");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    cached(&cache, "tiny/llama", &fixtures.join("models/llama"));
    cached(&cache, "tiny/llama-lora", &fixtures.join("lora/llama/peft-adapter"));
    let env = [("HF_HUB_CACHE", cache.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    let score = |model: &str, adapter: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge"))
            .args(["score", "--model", model, "--adapter", adapter, "--text", "Tom has 12 apples and buys 30 more.", "--json"])
            .envs(env)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>()
    };
    let local = score(fixtures.join("models/llama").to_str().unwrap(), fixtures.join("lora/llama/peft-adapter").to_str().unwrap());
    assert_eq!(score("tiny/llama", "tiny/llama-lora"), local);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge")).args(["score", "--model", "tiny/llama", "--adapter", "tiny/absent", "--text", "x"]).envs(env).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("adapter tiny/absent") && err.contains("HF_HUB_OFFLINE"), "{err}");

    let run = tmp.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", run.display()), "eval=null", "training.steps=2", "model.path=tiny/llama", "model.lora={r: 2, alpha: 4, target_modules: [q_proj]}"])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step-000002/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny/llama");
}

/// modules_to_save (PEFT's name; here `lm_head`, trained whole beside the adapters): an adapter
/// PEFT wrote with it gives PEFT's log-probs here, and PEFT gives with the adapter tokbridge
/// exported from such a run the log-probs tokbridge gives (tests/fixtures/lora/llama-mts,
/// scripts/fixtures/make_lora_reference.py). A run with it trains the head and resumes exactly.
#[test]
fn modules_to_save_match_peft_and_train() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora/llama-mts");
    let base = common::fixtures().join("llama");
    let (adapters, base_lp) = peft_both_ways(&dir, &base);
    for (adapter, got) in adapters {
        assert!(!close(&got, &base_lp.clone().expect("base_logprobs"), 1e-3), "{adapter} changes nothing");
    }

    // Training: the head trains (it is in the adapter file and differs from the base's), and
    // the resumed run ends with the same adapter file.
    let tmp = TempDir::new();
    let lora = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj], modules_to_save: [lm_head]}";
    let full = full_and_resumed_agree(tmp.path(), "recipes/sft/tiny.yaml", &[lora, "training.steps=6", "training.checkpoint_every=2"], "step-000006");
    let c = tokbridge::hf::safetensors::Checkpoint::open_file(&full.join("checkpoints/step-000006/adapter_model.safetensors")).unwrap();
    let head = c.tensor("base_model.model.lm_head.weight").unwrap();
    let base_head = tokbridge::hf::safetensors::Checkpoint::open(&base).unwrap().tensor("lm_head.weight").unwrap();
    assert!((head - base_head).abs().max().double_value(&[]) > 1e-4, "lm_head did not train");
}

//! Bad input gives a one-line error on stderr that names the file, key or tensor, and a
//! non-zero exit, never a panic. Also: hub ids resolve from the Hugging Face cache offline.
mod common;

use std::path::Path;
use std::process::Command;

/// Runs `tokbridge score` on `model` and returns (success, stderr).
fn score(model: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokbridge"));
    cmd.args(["score", "--model", model, "--text", "Tom has 12 apples", "--json"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("tokbridge runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_fails_with(model: &Path, needles: &[&str]) {
    let (ok, err) = score(model.to_str().unwrap(), &[]);
    assert!(!ok, "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let tmp = common::scratch_copy("qwen2");
    edit_config(tmp.path(), |v| v["model_type"] = "mamba".into());
    assert_fails_with(tmp.path(), &["config.json", "unknown model_type \"mamba\"", "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2"]);
}

#[test]
fn missing_tensor_is_named() {
    let tmp = common::scratch_copy("qwen3");
    edit_config(tmp.path(), |v| v["num_hidden_layers"] = 3.into());
    assert_fails_with(tmp.path(), &["missing tensor model.layers.2."]);
}

#[test]
fn unexpected_tensor_is_named_with_its_file() {
    let tmp = common::scratch_copy("qwen3");
    edit_config(tmp.path(), |v| v["num_hidden_layers"] = 1.into());
    assert_fails_with(tmp.path(), &["model.safetensors", "unexpected tensor model.layers.1."]);
    // A stored lm_head.weight beside a tied head is the one tolerated extra (transformers ties over it).
    let tied = common::scratch_copy("llama");
    edit_config(tied.path(), |v| v["tie_word_embeddings"] = true.into());
    let (ok, err) = score(tied.path().to_str().unwrap(), &[]);
    assert!(ok, "{err}");
}

#[test]
fn misshaped_tensor_is_named() {
    let tmp = common::scratch_copy("gemma");
    edit_config(tmp.path(), |v| v["intermediate_size"] = 96.into());
    assert_fails_with(tmp.path(), &["model.safetensors", "tensor model.layers.0.mlp.", "has shape"]);
}

#[test]
fn truncated_safetensors_is_an_error_not_a_panic() {
    let tmp = common::scratch_copy("gpt2");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(tmp.path(), &["model.safetensors", "corrupt safetensors"]);
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert_fails_with(tmp.path(), &["model.safetensors", "corrupt safetensors"]);
}

#[test]
fn missing_shard_is_named() {
    let tmp = common::scratch_copy("mistral-sharded");
    std::fs::remove_file(tmp.path().join("model-00003-of-00012.safetensors")).unwrap();
    assert_fails_with(tmp.path(), &["model-00003-of-00012.safetensors"]);
}

#[test]
fn missing_config_and_bad_json_are_named() {
    let tmp = common::scratch_copy("phi3");
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert_fails_with(tmp.path(), &["config.json", "not valid JSON"]);
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    assert_fails_with(tmp.path(), &["config.json"]);
}

#[test]
fn unknown_device_and_dtype_are_refused() {
    let dir = common::fixtures().join("gpt2");
    let out = Command::new(env!("CARGO_BIN_EXE_tokbridge"))
        .args(["score", "--model", dir.to_str().unwrap(), "--text", "a b", "--dtype", "f8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dtype \"f8\""));
}

#[test]
fn cuda_is_refused_with_one_line_where_there_is_none() {
    let dir = common::fixtures().join("gpt2");
    let run = common::tempdir::TempDir::new();
    let out_dir = format!("output_dir={}", run.path().join("r").display());
    let cases: [Vec<&str>; 2] = [
        vec!["score", "--model", dir.to_str().unwrap(), "--text", "a b", "--device", "cuda"],
        vec!["run", "recipes/sft/tiny.yaml", "device=cuda:0", "training.steps=1", "logging.progress=false", &out_dir],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if tch::Cuda::is_available() {
            assert!(out.status.success(), "{args:?} on a CUDA machine: {err}");
            continue;
        }
        assert!(!out.status.success(), "{args:?} should fail without a GPU");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains("device cuda") && last.contains("no CUDA GPU"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Lays a fixture out as the hub cache does: refs/main -> snapshots/<sha>/.
fn fake_cache(root: &Path, repo: &str, fixture: &str) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let sha = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), sha).unwrap();
    let snap = repo_dir.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(common::fixtures().join(fixture)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
    }
}

#[test]
fn hub_ids_load_from_the_cache_offline() {
    let cache = common::tempdir::TempDir::new();
    fake_cache(cache.path(), "tiny/qwen3", "qwen3");
    let c = cache.path().to_str().unwrap();
    let (ok, err) = score("tiny/qwen3", &[("HF_HUB_CACHE", c), ("HF_HUB_OFFLINE", "1")]);
    assert!(ok, "cached hub id should load offline: {err}");

    let (ok, err) = score("tiny/absent", &[("HF_HUB_CACHE", c), ("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && err.contains("HF_HUB_OFFLINE") && err.contains("not cached"), "{err}");

    let snap = cache.path().join("models--tiny--qwen3/snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    let (ok, err) = score("tiny/qwen3", &[("HF_HUB_CACHE", c), ("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && err.contains("lacks tokenizer.json"), "{err}");
}

/// A hub path never leaves the cache or the repo: `..` parts, an absolute path after the repo,
/// a `%2F`-escaped climb in the revision, an empty revision and a planted ref are refused in one
/// line before any file is opened (offline, against a fake cache beside a readable "secret").
#[test]
fn hub_paths_that_leave_the_cache_are_refused() {
    let tmp = common::tempdir::TempDir::new();
    let cache = tmp.path().join("hub");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("datasets--org--name");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), sha).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(sha)).unwrap();
    // What a climb would reach: a valid dataset outside the cache.
    let secret = tmp.path().join("secret.jsonl");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/arith_train.jsonl"), &secret).unwrap();
    let depth = repo.join("snapshots").join(sha).components().count() - tmp.path().components().count();
    let climb = "../".repeat(depth);
    let preview = |train: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokbridge"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["preview", "recipes/sft/tiny.yaml", &format!("data.train={train}")])
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The fake cache is laid out right: the climb reaches the secret when taken literally.
    assert!(repo.join("snapshots").join(sha).join(&climb).join("secret.jsonl").is_file());
    for (train, says) in [
        (format!("hf://datasets/org/name/{climb}secret.jsonl"), "has an empty, . or .. part"),
        (format!("hf://datasets/org/name/{}", secret.display()), "has an empty, . or .. part"),
        (format!("hf://datasets/org/name@{}/secret.jsonl", vec![".."; depth - 1].join("%2F")), "is not a branch, tag or commit name"),
        ("hf://datasets/org/name@/secret.jsonl".to_string(), "is not a branch, tag or commit name"),
        ("hf://datasets/../name/secret.jsonl".to_string(), "not a directory and not a hub id"),
    ] {
        let (ok, stdout, err) = preview(&train);
        assert!(!ok && stdout.is_empty(), "{train} was read: {stdout}");
        assert_eq!(err.trim_end().lines().count(), 1, "{train}: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{train}: {err}");
    }
    // A ref file that names something other than a commit is not followed.
    let up = "../".repeat(depth - 1);
    assert!(repo.join("snapshots").join(&up).join("secret.jsonl").is_file());
    std::fs::write(repo.join("refs").join("main"), up.trim_end_matches('/')).unwrap();
    let (ok, _, err) = preview("hf://datasets/org/name/secret.jsonl");
    assert!(!ok && err.contains("HF_HUB_OFFLINE is set"), "{err}");
    // Model and adapter ids take the same rules.
    let (ok, err) = score("org/..@main", &[("HF_HUB_CACHE", cache.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && err.contains("not a hub id of the form org/name") && err.lines().count() == 1, "{err}");
    let (ok, err) = score("org/name@../../x", &[("HF_HUB_CACHE", cache.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")]);
    assert!(!ok && err.contains("is not a branch, tag or commit name"), "{err}");
}

/// `--stop-after 0` is refused, not ignored (#36 item 23).
#[test]
fn stop_after_zero_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(["run", "recipes/sft/tiny.yaml", "--stop-after", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim_end().lines().count() == 1 && err.contains("--stop-after must be at least 1"), "{err}");
}

//! Nothing lost, nothing clobbered, no panics: the defects of a crash-and-bad-input probe
//! (issue 17), each through the `tokbridge` binary. Exports replace only what tokbridge wrote
//! and never land inside a run's checkpoints; a run directory has one process at a time;
//! a diverged OPD run, NaN sampling settings, inputs past a model's positions, crafted GGUF
//! files, huge JSONL lines and endless chat templates end in one-line errors; resume cuts
//! metrics back to its checkpoint; `latest` cannot point outside its run.
mod common;

use common::tempdir::TempDir;
use common::{ok, tokbridge};
use std::path::Path;
use std::process::{Command, Output};


/// Asserts a failure with a one-line error (no panic) that contains every needle.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "exit status {:?} (101 is a panic): {err}", out.status.code());
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    for n in needles {
        assert!(last.contains(n), "error {last:?} should mention {n:?}");
    }
}


fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// metrics.jsonl's lines without what differs from run to run (wall times, memory).
fn stable_metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["time_s", "train/tokens_per_s", "memory/peak_gib"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v.to_string()
        })
        .collect()
}

fn sft(run: &Path, extra: &[&str], flags: &[&str]) -> Output {
    let dir = format!("output_dir={}", run.display());
    let mut args = vec!["run", "recipes/sft/tiny.yaml", &dir, "logging.progress=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(flags);
    tokbridge(&args)
}

#[test]
fn export_replaces_only_what_tokbridge_wrote() {
    let tmp = TempDir::new();
    let model = "tests/fixtures/models/llama";
    // A project folder that happens to hold a config.json is refused and kept whole.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("data")).unwrap();
    std::fs::write(project.join("config.json"), "{}").unwrap();
    std::fs::write(project.join("NOTES.md"), "notes").unwrap();
    std::fs::write(project.join("data/important.csv"), "a,b").unwrap();
    fails_with(&tokbridge(&["export", model, "--out", p(&project)]), &["project", "NOTES.md", "refusing"]);
    assert_eq!(std::fs::read_to_string(project.join("data/important.csv")).unwrap(), "a,b");
    // An export is replaced by the next export.
    let out = tmp.path().join("export");
    ok(tokbridge(&["export", model, "--out", p(&out)]));
    assert!(out.join(".tokbridge-export").exists());
    ok(tokbridge(&["export", model, "--out", p(&out), "--dtype", "bf16"]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp") || n.contains(".old")).collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn export_into_a_runs_checkpoints_or_its_source_is_refused() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    ok(sft(&run, &["training.steps=2", "training.checkpoint_every=1", "eval=null"], &[]));
    let ckpt = run.join("checkpoints/step-000001");
    let before = std::fs::read(ckpt.join("optimizer.safetensors")).unwrap();
    fails_with(&tokbridge(&["export", p(&run), "--out", p(&ckpt)]), &["checkpoints", "choose a directory outside it"]);
    fails_with(&tokbridge(&["export", "tests/fixtures/models/llama", "--out", "tests/fixtures/models/llama/sub"]), &["overlaps its source"]);
    assert_eq!(std::fs::read(ckpt.join("optimizer.safetensors")).unwrap(), before, "the checkpoint is intact");
    ok(sft(&run, &["training.steps=3", "training.checkpoint_every=1", "eval=null"], &["--resume"]));
}

#[test]
fn an_interrupted_replacement_is_restored_before_the_next_export() {
    let tmp = TempDir::new();
    let out = tmp.path().join("export");
    ok(tokbridge(&["export", "tests/fixtures/models/llama", "--out", p(&out)]));
    // As if killed between the two renames: the old export only at NAME.oldPID of a dead pid.
    let aside = tmp.path().join("export.old4194400");
    std::fs::rename(&out, &aside).unwrap();
    std::fs::create_dir_all(tmp.path().join("export.tmp4194400")).unwrap();
    ok(tokbridge(&["export", "tests/fixtures/models/qwen3", "--out", p(&out)]));
    assert!(!aside.exists() && !tmp.path().join("export.tmp4194400").exists(), "stale temporaries are cleaned");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen3", "the restored old export was then replaced by the new one");
}

#[test]
fn a_run_directory_has_one_process_at_a_time() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    let dir = format!("output_dir={}", run.display());
    let mut first = Command::new(env!("CARGO_BIN_EXE_tokbridge"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "recipes/sft/tiny.yaml", &dir, "logging.progress=false", "training.steps=100000", "training.checkpoint_every=null", "eval=null"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("metrics.jsonl").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = sft(&run, &["training.steps=2", "eval=null"], &["--resume"]);
    first.kill().unwrap();
    first.wait().unwrap();
    fails_with(&second, &["in use by another tokbridge process", &format!("pid {}", first.id())]);
    // The OS released the killed process's lock: the run resumes (here: from no checkpoint,
    // so it starts afresh, and the metrics of the killed attempt are dropped).
    ok(sft(&run, &["training.steps=2", "eval=null"], &["--resume"]));
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "one line per step of the finished run: {lines}");
}

#[test]
fn a_diverging_opd_run_and_nan_sampling_stop_with_an_error_not_a_panic() {
    let tmp = TempDir::new();
    let dir = format!("output_dir={}", tmp.path().join("opd").display());
    let out = tokbridge(&["run", "recipes/opd/tiny.yaml", &dir, "logging.progress=false", "optimizer.lr=1.0e+30", "optimizer.grad_clip=null", "eval=null", "training.checkpoint_every=1"]);
    fails_with(&out, &["non-finite", "last good checkpoint"]);
    let gen = |flag: &str, v: &str| tokbridge(&["generate", "--model", "tests/fixtures/models/llama", "--prompt", "Tom has", &format!("{flag}={v}")]);
    fails_with(&gen("--temperature", "NaN"), &["--temperature"]);
    fails_with(&gen("--temperature", "-1"), &["--temperature"]);
    fails_with(&gen("--top-p", "7"), &["--top-p"]);
    fails_with(&gen("--top-p", "0"), &["--top-p"]);
    fails_with(&gen("--top-k", "-3"), &["--top-k"]);
    fails_with(&tokbridge(&["align", "--student", "tests/fixtures/models/llama", "--teacher", "tests/fixtures/models/qwen3", "--text", "12", "--max-chunk-tokens", "0"]), &["--max-chunk-tokens"]);
}

#[test]
fn inputs_past_a_models_positions_are_refused_and_generation_stops_at_the_limit() {
    let gpt2 = "tests/fixtures/models/gpt2"; // n_positions 256
    let long = "word ".repeat(400);
    fails_with(&tokbridge(&["score", "--model", gpt2, "--text", &long]), &["exceed the 256 positions", "gpt2"]);
    let out = ok(tokbridge(&["generate", "--model", gpt2, "--prompt", &"word ".repeat(60), "--max-new-tokens", "100000000000", "--ignore-eos", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (prompt, new) = (v["ids"].as_array().unwrap().len(), v["new_ids"].as_array().unwrap().len());
    assert_eq!(prompt + new, 256, "generation fills the context and stops ({prompt} + {new})");
}

#[test]
fn crafted_gguf_files_are_errors() {
    let tmp = TempDir::new();
    let header = |n_kv: u64| [b"GGUF".as_slice(), &3u32.to_le_bytes(), &0u64.to_le_bytes(), &n_kv.to_le_bytes()].concat();
    let key = |k: &str| [&(k.len() as u64).to_le_bytes()[..], k.as_bytes()].concat();
    // Arrays of arrays 100,000 deep.
    let mut nested = [header(1), key("x"), 9u32.to_le_bytes().to_vec()].concat();
    for _ in 0..100_000 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    // An array that claims 2^40 strings.
    let huge = [header(1), key("x"), 9u32.to_le_bytes().to_vec(), 8u32.to_le_bytes().to_vec(), (1u64 << 40).to_le_bytes().to_vec()].concat();
    for (name, bytes, needle) in [("nested.gguf", nested, "nested more than"), ("huge.gguf", huge, "cannot fit in the file")] {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        fails_with(&tokbridge(&["convert", "--gguf", p(&path), "--out", p(&tmp.path().join("out"))]), &[name, needle]);
    }
}

#[test]
fn a_huge_jsonl_line_is_an_error() {
    let tmp = TempDir::new();
    let data = tmp.path().join("big.jsonl");
    std::fs::write(&data, format!("{{\"prompt\": \"{}\", \"response\": \"1\"}}\n", "x".repeat(2 << 20))).unwrap();
    let train = format!("data.train={}", data.display());
    fails_with(&sft(&tmp.path().join("run"), &[&train, "eval=null"], &[]), &["big.jsonl:1", "longer than 1 MiB"]);
}

#[test]
fn an_endless_chat_template_stops_with_its_path() {
    let tmp = common::scratch_copy("qwen3");
    std::fs::write(tmp.path().join("chat_template.jinja"), "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}").unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"1+1\", \"response\": \"2\"}\n").unwrap();
    let run = tmp.path().join("run");
    let (model, train) = (format!("model.path={}", tmp.path().display()), format!("data.train={}", data.display()));
    fails_with(&sft(&run, &[&model, &train, "eval=null"], &[]), &["chat_template.jinja", "fuel"]);
    // Within its fuel, a loop writing long literals would write gigabytes: refused past 16 MiB.
    std::fs::write(tmp.path().join("chat_template.jinja"), "{% for a in range(10000) %}{% for b in range(10000) %}{{ 'x' * 10000 }}{% endfor %}{% endfor %}").unwrap();
    fails_with(&sft(&tmp.path().join("run2"), &[&model, &train, "eval=null"], &[]), &["chat_template.jinja", "the output is longer than 16 MiB"]);
    // Strings and lists built in variables are bounded too, by the memory the render holds: each
    // doubles in a loop (40 steps ask for a terabyte); under a 3 GiB address-space limit (without
    // the bound: an abort, 'memory allocation ... failed').
    for (i, template) in ["{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}", "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}"].iter().enumerate() {
        std::fs::write(tmp.path().join("chat_template.jinja"), template).unwrap();
        let out = tmp.path().join(format!("run-grow{i}"));
        let cmd = format!("ulimit -v 3145728; exec {} run recipes/sft/tiny.yaml output_dir={} {model} {train} eval=null logging.progress=false", env!("CARGO_BIN_EXE_tokbridge"), p(&out));
        fails_with(&Command::new("sh").arg("-c").arg(cmd).output().unwrap(), &["chat_template.jinja", "rendering the chat template: it used more than 256 MiB of memory"]);
    }
}

#[test]
fn bad_output_dirs_and_numbers_are_refused_by_name() {
    let tmp = TempDir::new();
    for bad in ["output_dir=", "output_dir=null", "output_dir=/", "output_dir=\"\""] {
        fails_with(&tokbridge(&["run", "recipes/sft/tiny.yaml", bad]), &["output_dir"]);
    }
    let run = format!("output_dir={}", tmp.path().join("r").display());
    fails_with(&tokbridge(&["run", "recipes/sft/tiny.yaml", &run, "optimizer.eps=.inf"]), &["optimizer.eps"]);
    fails_with(&tokbridge(&["run", "recipes/sft/tiny.yaml", &run, "optimizer.weight_decay=.inf"]), &["optimizer.weight_decay"]);
    fails_with(&tokbridge(&["score", "--model", "bad/nonexistent_dir", "--text", "hi"]), &["no such directory", "bad/nonexistent_dir"]);
    // #36 item 23: a run cannot write into the model it trains (written as another spelling).
    fails_with(&tokbridge(&["run", "recipes/sft/tiny.yaml", "output_dir=./tests/fixtures/models/llama/"]), &["output_dir ./tests/fixtures/models/llama/ is model.path, the model the run trains"]);
    fails_with(&tokbridge(&["run", "recipes/opd/tiny.yaml", "output_dir=tests/fixtures/models/llama"]), &["is student.path"]);
}

#[test]
fn resume_cuts_metrics_back_to_its_checkpoint_and_latest_stays_inside_the_run() {
    let tmp = TempDir::new();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let extra = ["training.steps=6", "training.checkpoint_every=2", "eval.every=2", "eval.scorers=[nll]"];
    ok(sft(&full, &extra, &[]));
    ok(sft(&cut, &extra, &["--stop-after", "3"]));
    // As if killed after step 3's line was half-written: the checkpoint is at step 2.
    let mut text = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    text.push_str("{\"step\":4,\"train/lo");
    std::fs::write(cut.join("metrics.jsonl"), text).unwrap();
    ok(sft(&cut, &extra, &["--resume"]));
    assert_eq!(stable_metrics(&cut), stable_metrics(&full), "no duplicate, torn or missing line after the resume");
    // A second run without --resume is refused only because there are checkpoints.
    fails_with(&sft(&cut, &extra, &[]), &["--resume"]);
    std::fs::write(cut.join("checkpoints/latest"), p(&full.join("checkpoints/step-000006"))).unwrap();
    fails_with(&sft(&cut, &extra, &["--resume"]), &["latest", "not a checkpoint of this run"]);
}

#[test]
fn keep_last_checkpoints_prunes_the_oldest() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    ok(sft(&run, &["training.steps=5", "training.checkpoint_every=1", "training.keep_last_checkpoints=2", "eval=null"], &[]));
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["latest", "step-000004", "step-000005"]);
}

/// Crash safety as a repeatable test: the run is killed (abort, as kill -9) at every
/// checkpoint rename, every `latest` update and every metrics write, and each time a resume
/// gives the uninterrupted run's metrics (no duplicate or missing line) and identical weights.
#[test]
fn a_run_killed_at_any_write_resumes_to_the_uninterrupted_result() {
    let tmp = TempDir::new();
    let extra = ["training.steps=6", "training.checkpoint_every=2", "eval.every=2", "eval.scorers=[nll]", "logging.tensorboard=false"];
    let full = tmp.path().join("full");
    ok(sft(&full, &extra, &[]));
    let weights = |run: &Path| std::fs::read(run.join("checkpoints/step-000006/model.safetensors")).unwrap();
    let n_records = stable_metrics(&full).len();
    assert_eq!(n_records, 10, "6 steps and 4 evaluations");
    let points: Vec<String> = (1..=3).flat_map(|i| [format!("checkpoint:{i}"), format!("latest:{i}")]).chain((1..=n_records).map(|i| format!("metrics:{i}"))).collect();
    for point in &points {
        let run = tmp.path().join(point.replace(':', "-"));
        let dir = format!("output_dir={}", run.display());
        let mut args = vec!["run", "recipes/sft/tiny.yaml", dir.as_str(), "logging.progress=false"];
        args.extend_from_slice(&extra);
        let killed = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(&args).env("TOKBRIDGE_FAULT", point).output().unwrap();
        assert!(!killed.status.success() && String::from_utf8_lossy(&killed.stderr).contains("fault injected"), "{point}: no fault: {}", String::from_utf8_lossy(&killed.stderr));
        ok(sft(&run, &extra, &["--resume"]));
        assert_eq!(stable_metrics(&run), stable_metrics(&full), "{point}: metrics after the resume");
        assert!(weights(&run) == weights(&full), "{point}: final weights differ");
        let stale: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp")).collect();
        assert!(stale.is_empty(), "{point}: temporaries left: {stale:?}");
    }
    // An export killed just before it replaces its output leaves the old export whole.
    let out = tmp.path().join("export");
    ok(tokbridge(&["export", "tests/fixtures/models/llama", "--out", p(&out)]));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let killed = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(["export", p(&full), "--out", p(&out)]).env("TOKBRIDGE_FAULT", "export:1").output().unwrap();
    assert!(!killed.status.success());
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before, "the old export is intact");
    ok(tokbridge(&["export", p(&full), "--out", p(&out)]));
    assert_ne!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
}

/// A full disk while logging (simulated with a file-size limit: writes past it fail as on a
/// full disk) is a one-line error, not a panic in a TensorBoard writer thread.
#[test]
fn a_full_disk_while_logging_is_an_error() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    let script = format!(
        "trap '' XFSZ; ulimit -f 16; exec '{}' run recipes/sft/tiny.yaml output_dir='{}' logging.progress=false training.steps=100000 training.checkpoint_every=null eval=null",
        env!("CARGO_BIN_EXE_tokbridge"),
        run.display()
    );
    let out = Command::new("bash").current_dir(env!("CARGO_MANIFEST_DIR")).args(["-c", &script]).output().unwrap();
    fails_with(&out, &["writing", "run/"]);
}

/// A model folder that tokbridge did not write (`save_pretrained` leaves only the files an
/// export writes, and no marker) is not replaced by `export` or `export --merge` without
/// `--force`, which the refusal names; with it, the folder is replaced.
#[test]
fn export_replaces_a_model_folder_it_did_not_write_only_with_force() {
    let tmp = TempDir::new();
    let model = "tests/fixtures/models/llama";
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(Path::new(model).join(f), mine.join(f)).unwrap();
    }
    let weights = std::fs::read(mine.join("model.safetensors")).unwrap();
    for extra in [&[][..], &["--merge"][..]] {
        let args = [&["export", "tests/fixtures/models/gpt2", "--out", p(&mine)][..], extra].concat();
        fails_with(&tokbridge(&args), &["mine", "no .tokbridge-export marker", "--force"]);
        assert_eq!(std::fs::read(mine.join("model.safetensors")).unwrap(), weights, "the user's weights are kept");
        assert!(!mine.join(".tokbridge-export").exists());
    }
    ok(tokbridge(&["export", "tests/fixtures/models/gpt2", "--out", p(&mine), "--force"]));
    assert!(mine.join(".tokbridge-export").exists() && std::fs::read(mine.join("model.safetensors")).unwrap() != weights);
}

/// A run never overwrites a file it did not create: an `output_dir` that holds the user's own
/// files (here the recipe itself, with its comments, and a metrics.jsonl of theirs) and was
/// never a run directory is refused in one line, and both files are kept as they were.
#[test]
fn a_run_does_not_write_into_a_folder_of_the_users_files() {
    let tmp = TempDir::new();
    let folder = tmp.path().join("work");
    std::fs::create_dir_all(&folder).unwrap();
    let text = std::fs::read_to_string("recipes/sft/tiny.yaml").unwrap();
    let recipe_text = format!("# my notes on this run\n{}", text.replace("output_dir: runs/sft-tiny", &format!("output_dir: {}", folder.display())));
    let recipe = folder.join("recipe.yaml");
    std::fs::write(&recipe, &recipe_text).unwrap();
    std::fs::write(folder.join("metrics.jsonl"), "{\"mine\": 1}\n").unwrap();
    fails_with(&tokbridge(&["run", p(&recipe), "training.steps=1"]), &["work", "is not a tokbridge run directory", "choose a new or empty directory"]);
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), recipe_text, "the recipe file is untouched");
    assert_eq!(std::fs::read_to_string(folder.join("metrics.jsonl")).unwrap(), "{\"mine\": 1}\n");
    // A new directory, and a run directory run again, are fine.
    let run = tmp.path().join("run");
    ok(tokbridge(&["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", run.display()), "training.steps=1", "logging.progress=false"]));
    ok(tokbridge(&["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", run.display()), "training.steps=2", "logging.progress=false", "--resume"]));
}

/// A recipe path that is not a page of YAML (`/dev/zero`, a 2 MiB file) is refused after
/// reading at most 1 MiB, in one line naming it (#36 item 15); before, `/dev/zero` was read
/// forever.
#[test]
fn a_recipe_larger_than_a_page_of_settings_is_refused() {
    fails_with(&tokbridge(&["run", "/dev/zero"]), &["recipe /dev/zero: larger than 1 MiB"]);
    let tmp = TempDir::new();
    let big = tmp.path().join("big.yaml");
    std::fs::write(&big, format!("recipe: sft\n# {}\n", "x".repeat(2 << 20))).unwrap();
    fails_with(&tokbridge(&["run", p(&big)]), &["big.yaml: larger than 1 MiB"]);
}

/// A pipeline that contains itself, directly or under a new folder at each level, is refused by
/// its file (#36 item 14): before, the second nested 1,164 levels in a minute, and the first
/// was caught only by the run lock ("in use by pid" of its own process).
#[test]
fn a_pipeline_that_contains_itself_is_refused() {
    let tmp = TempDir::new();
    let nested = tmp.path().join("nested.yaml");
    let root = tmp.path().join("run");
    std::fs::write(&nested, format!("recipe: pipeline\nvars: {{root: {}}}\noutput_dir: ${{root}}\nstages:\n  - {{recipe: {}, overrides: [\"vars.root=${{root}}/deeper\"]}}\n", p(&root), p(&nested))).unwrap();
    fails_with(&tokbridge(&["run", p(&nested)]), &["nested.yaml runs itself", "a pipeline cannot contain itself"]);
    assert!(!root.join("deeper/deeper/deeper").exists(), "it nested before refusing");
    let direct = tmp.path().join("direct.yaml");
    std::fs::write(&direct, format!("recipe: pipeline\noutput_dir: {}\nstages:\n  - {}\n", p(&tmp.path().join("run2")), p(&direct))).unwrap();
    let out = tokbridge(&["run", p(&direct)]);
    fails_with(&out, &["direct.yaml"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("in use by pid"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Empty responses are counted and named in a warning (#36 item 22): each still trains its
/// end-of-turn token, so the model learns to answer with nothing; before, they trained silently.
#[test]
fn empty_responses_are_counted() {
    let tmp = TempDir::new();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, "{\"prompt\": \"1 + 1?\", \"response\": \"2\"}\n{\"prompt\": \"2 + 2?\", \"response\": \"\"}\n{\"prompt\": \"3 + 3?\", \"response\": \"  \"}\n").unwrap();
    let out = ok(sft(&tmp.path().join("run"), &[&format!("data.train={}", p(&data)), "training.steps=1", "eval=null"], &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("warning: 2 of 3 examples in {} have an empty response", p(&data))), "{err}");
}

/// A config.json or adapter whose sizes cannot be built fails by key before any allocation
/// (libtorch panics when one fails): zero heads divided by, a vocabulary past 2^31, parameters
/// past the host's free memory, a negative rotary base, LoRA ranks past 16384.
#[test]
fn model_and_adapter_sizes_are_checked_before_allocation() {
    let with = |edit: &dyn Fn(&mut serde_json::Value), base: &str| {
        let tmp = common::scratch_copy(base);
        let path = tmp.path().join(if base.starts_with("../lora/") { "adapter_config.json" } else { "config.json" });
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        tmp
    };
    let score = |model: &Path, adapter: &[&str]| tokbridge(&[&["score", "--model", p(model), "--text", "a b"], adapter].concat());
    let cases: [(&str, &str, serde_json::Value, &[&str]); 6] = [
        ("llama", "num_attention_heads", 0.into(), &["config.json", "num_attention_heads: 0 is not a size"]),
        ("llama", "vocab_size", 1e12.into(), &["vocab_size: 1000000000000.0 is not a size"]),
        ("llama", "num_hidden_layers", (1u64 << 31).into(), &["num_hidden_layers 2147483648", "GiB of float32 parameters, more than the"]),
        ("llama", "num_key_value_heads", 3.into(), &["num_attention_heads 4 is not a multiple of num_key_value_heads 3"]),
        ("llama", "rope_theta", (-1).into(), &["rope_theta: -1 must be a positive number"]),
        ("gpt2", "n_head", 5.into(), &["hidden_size 64 is not a multiple of num_attention_heads 5"]),
    ];
    for (base, key, value, needles) in cases {
        let dir = with(&|v| v[key] = value.clone(), base);
        fails_with(&score(dir.path(), &[]), needles);
    }
    let adapter = with(&|v| v["r"] = 1_000_000_000.into(), "../lora/gpt2/peft-adapter");
    fails_with(&score(Path::new("tests/fixtures/models/gpt2"), &["--adapter", p(adapter.path())]), &["adapter_config.json.r must be from 1 to 16384"]);
}

/// LoRA adapters that PEFT would read differently, or that compute nothing, are refused by
/// name: integer or NaN weights, a regular-expression target, per-layer selections, and a
/// recipe's `lora` that disagrees with the adapter it continues; weights that overflow end
/// `score` with an error instead of null log-probs.
#[test]
fn adapters_peft_would_read_differently_or_that_compute_nothing_are_refused() {
    use tokbridge::hf::safetensors::{save, Checkpoint};
    const PEFT: &str = "../lora/gpt2/peft-adapter"; // scratch_copy and fixtures() start in models/
    let base = "tests/fixtures/models/gpt2";
    let score = |adapter: &Path| tokbridge(&["score", "--model", base, "--adapter", p(adapter), "--text", "a b"]);
    let weights = |f: &dyn Fn(&str, tch::Tensor) -> tch::Tensor| {
        let tmp = common::scratch_copy(PEFT);
        let path = tmp.path().join("adapter_model.safetensors");
        let c = Checkpoint::open_file(&path).unwrap();
        let tensors: Vec<(String, tch::Tensor)> = c.names().map(|n| (n.to_string(), f(n, c.tensor(n).unwrap()))).collect();
        drop(c);
        save(&tensors, &path).unwrap();
        tmp
    };
    let config = |key: &str, value: serde_json::Value| {
        let tmp = common::scratch_copy(PEFT);
        let path = tmp.path().join("adapter_config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&path, v.to_string()).unwrap();
        tmp
    };
    let a = weights(&|_, t| t.to_kind(tch::Kind::Int64));
    fails_with(&score(a.path()), &["adapter_model.safetensors: tensor", "is Int64; adapter weights are floating point"]);
    let a = weights(&|n, t| if n.contains("lora_B") { t.fill(f64::NAN) } else { t });
    fails_with(&score(a.path()), &["adapter_model.safetensors: tensor", "lora_B", "holds NaN or infinite values"]);
    let a = weights(&|_, t| t.fill(3e38));
    fails_with(&score(a.path()), &[base, "log-probs are NaN or infinite"]);
    let a = config("target_modules", "c_attn".into());
    fails_with(&score(a.path()), &["adapter_config.json: target_modules as a regular expression is not supported"]);
    let a = config("layers_to_transform", serde_json::json!([0]));
    fails_with(&score(a.path()), &["adapter_config.json: layers_to_transform is not supported"]);
    let a = config("exclude_modules", serde_json::json!(["c_fc"]));
    fails_with(&score(a.path()), &["adapter_config.json: exclude_modules is not supported"]);

    // A recipe that continues an adapter with other settings.
    let tmp = TempDir::new();
    let adapter = common::fixtures().join(PEFT);
    let run = |lora: &str| {
        let out = tmp.path().join("run");
        let _ = std::fs::remove_dir_all(&out);
        tokbridge(&["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", p(&out)), "eval=null", "training.steps=1", &format!("model.path={base}"), &format!("model.adapter={}", p(&adapter)), lora])
    };
    fails_with(&run("model.lora={r: 8, alpha: 8, target_modules: [c_attn, c_fc]}"), &["lora.r 8 differs from the adapter's 4", "adapter_config.json"]);
    ok(run("model.lora={r: 4, alpha: 8, target_modules: [c_fc, c_attn], dropout: 0.1}"));
}

/// #36 item 20: a `vars.NAME=` override that no file of the run declares or uses is refused by
/// name before anything runs; a var only a pipeline's stage declares is accepted.
#[test]
fn a_var_no_recipe_reads_is_refused() {
    let tmp = TempDir::new();
    let out = format!("output_dir={}", p(&tmp.path().join("run")));
    fails_with(&tokbridge(&["run", "recipes/sft/tiny.yaml", &out, "vars.nothing=1"]), &["vars.nothing: no recipe that recipes/sft/tiny.yaml runs declares or uses it"]);
    fails_with(&tokbridge(&["run", "recipes/demo_b.yaml", "vars.teacher_step=4"]), &["vars.teacher_step: no recipe that recipes/demo_b.yaml runs", "teacher_steps"]);
    assert!(!tmp.path().join("run").exists(), "nothing ran");
    // teacher_more_steps is declared only by stage 03b; the run stops at its first stage's bad value.
    let root = format!("vars.root={}", p(&tmp.path().join("b")));
    let late = tokbridge(&["run", "recipes/demo_b.yaml", &root, "vars.teacher_more_steps=2", "vars.train_size=-1"]);
    let err = String::from_utf8_lossy(&late.stderr);
    assert!(!late.status.success() && err.contains("pipeline stage recipes/demo_b/01_task.yaml") && !err.contains("no recipe that"), "{err}");
}

/// A fake completions server on the loopback: every request, read whole, gets `answer`.
fn fake_server(answer: fn(&mut std::net::TcpStream)) -> String {
    use std::io::{BufRead, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                answer(&mut conn.try_clone().unwrap());
            });
        }
    });
    url
}

/// #36 items 10 and 23: a served teacher's answer is read only as far as its request can need
/// (64 KiB and 4 KiB a token). A 2 MB answer to `max_tokens: 32` and an endless chunked body at
/// eight requests in flight end in one line; under a 3 GiB address-space limit (the old 1 GiB
/// per request would need 8) the endless body cannot exhaust memory; nothing is stored.
#[test]
fn a_served_answer_is_read_only_as_far_as_its_request_needs() {
    use std::io::Write;
    let tmp = TempDir::new();
    let run = |url: &str| {
        let out = tmp.path().join("answers");
        let recipe = tmp.path().join("answers.yaml");
        std::fs::write(&recipe, format!(
            "recipe: teacher_responses\noutput_dir: {}\nteacher: {{tokenizer: tests/fixtures/models/qwen3, server: {{url: \"{url}\", max_concurrency: 8, retries: 0, timeout_s: 60}}}}\ndata: {{prompts: tests/fixtures/data/arith_train.jsonl, max_examples: 8}}\nsampling: {{temperature: 1.0, max_new_tokens: 32}}\nbatch_size: 8\n",
            p(&out)
        )).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        let child = Command::new("sh").arg("-c").arg(format!("ulimit -v 3145728; exec {} run {}", env!("CARGO_BIN_EXE_tokbridge"), p(&recipe))).output().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("responses.jsonl")).unwrap_or_default(), "", "no answer stored");
        child
    };
    let big = fake_server(|c| {
        let body = format!("{{\"choices\": [{{\"text\": \"{}\"}}], \"usage\": {{\"completion_tokens\": 32}}}}", "a".repeat(2 << 20));
        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    });
    fails_with(&run(&big), &["teacher server", "prompt 0", "is longer than the 196608 bytes this request can need"]);
    let endless = fake_server(|c| {
        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = format!("10000\r\n{}\r\n", "a".repeat(1 << 16));
        while c.write_all(chunk.as_bytes()).is_ok() {}
    });
    fails_with(&run(&endless), &["teacher server", "this request can need"]);
}

/// Writes a one-row-group Parquet file: `schema` in Parquet's message syntax, each column's
/// values as text (`binary`) or, where they parse, 32-bit integers.
fn write_parquet(path: &Path, schema: &str, columns: &[Vec<String>], compression: parquet::basic::Compression) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::{properties::WriterProperties, writer::SerializedFileWriter};
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(WriterProperties::builder().set_compression(compression).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = w.next_row_group().unwrap();
    let mut values = columns.iter();
    while let Some(mut col) = group.next_column().unwrap() {
        let v = values.next().unwrap();
        match v.iter().map(|x| x.parse::<i32>()).collect::<Result<Vec<_>, _>>() {
            Ok(ints) => col.typed::<Int32Type>().write_batch(&ints, None, None).map(drop).unwrap(),
            Err(_) => col.typed::<ByteArrayType>().write_batch(&v.iter().map(|s| ByteArray::from(s.as_str())).collect::<Vec<_>>(), None, None).map(drop).unwrap(),
        }
        col.close().unwrap();
    }
    group.close().unwrap();
    w.close().unwrap();
}

/// #36 items 5, 9 and 22: Parquet and JSON-array datasets keep the JSONL reader's 1 MiB bound
/// per record, checked on the page headers before the parquet crate decodes (a 64 MiB cell, a
/// zstd page of it), and a dictionary page that declares 0 bytes, which panicked inside the
/// crate, is an error; columns of bytes or decimals, and two columns of one name, are refused
/// instead of being trained on as base64 or "1.50". Each under a 3 GiB address-space limit.
#[test]
fn parquet_and_json_array_datasets_are_bounded_and_typed() {
    use parquet::basic::Compression;
    let tmp = TempDir::new();
    let train = |file: &Path| {
        let out = format!("output_dir={}", p(&tmp.path().join("run")));
        let cmd = format!("ulimit -v 3145728; exec {} run recipes/sft/tiny.yaml {out} eval=null training.steps=1 data.train={}", env!("CARGO_BIN_EXE_tokbridge"), p(file));
        Command::new("sh").arg("-c").arg(cmd).output().unwrap()
    };
    let texts = |a: &str, b: &str| vec![vec![a.to_string(), "What is 2 + 2?".into()], vec![b.to_string(), "4".into()]];
    let huge = "a".repeat(64 << 20);
    let file = tmp.path().join("huge.parquet");
    write_parquet(&file, "message m { required binary prompt (UTF8); required binary response (UTF8); }", &texts(&huge, "b"), Compression::ZSTD(Default::default()));
    assert!(std::fs::metadata(&file).unwrap().len() < 1 << 20, "the 64 MiB cell compresses");
    fails_with(&train(&file), &["huge.parquet", "values, more than 1 MiB a value"]);

    // A dictionary page that declares 0 bytes: its size varint rewritten in place, as 0 in as
    // many bytes (a non-minimal varint).
    let file = tmp.path().join("dict0.parquet");
    write_parquet(&file, "message m { required binary prompt (UTF8); required binary response (UTF8); }", &texts("Q", "A"), Compression::UNCOMPRESSED);
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let dict = parquet::file::reader::FileReader::metadata(&reader).row_group(0).column(0).dictionary_page_offset().expect("a dictionary page") as usize;
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes[dict + 2], 0x15, "field 2 (uncompressed_page_size) follows the page type");
    let size = dict + 3;
    let len = bytes[size..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    for (i, b) in bytes[size..size + len].iter_mut().enumerate() {
        *b = if i + 1 < len { 0x80 } else { 0x00 };
    }
    std::fs::write(&file, &bytes).unwrap();
    fails_with(&train(&file), &["dict0.parquet", "declares 2 values in 0 bytes"]);

    for (schema, columns, needle) in [
        ("message m { required binary prompt; required binary response (UTF8); }", texts("Q", "A"), "column \"prompt\" holds bytes, not text"),
        ("message m { required binary prompt (UTF8); required int32 response (DECIMAL(5,2)); }", vec![texts("Q", "A")[0].clone(), vec!["150".into(), "400".into()]], "column \"response\" holds decimals, not text"),
        ("message m { required binary prompt (UTF8); required binary prompt (UTF8); }", texts("Q", "A"), "two columns are named \"prompt\""),
    ] {
        let file = tmp.path().join("typed.parquet");
        write_parquet(&file, schema, &columns, Compression::UNCOMPRESSED);
        fails_with(&train(&file), &["typed.parquet", needle]);
    }

    let file = tmp.path().join("huge.json");
    std::fs::write(&file, format!("[{{\"prompt\": \"Q\", \"response\": \"A\"}}, {{\"prompt\": \"{huge}\", \"response\": \"A\"}}]")).unwrap();
    fails_with(&train(&file), &["huge.json: not a JSON array of records", "a record longer than 1 MiB"]);
}

/// #36 item 19 (resume): a resumed run names every key that changed. Steps, evaluation and
/// checkpointing may change, each said in a line; the learning rate or the model may not.
#[test]
fn a_resume_names_what_changed_and_refuses_another_run() {
    let tmp = TempDir::new();
    let run = tmp.path().join("run");
    ok(sft(&run, &["training.steps=4", "training.checkpoint_every=2", "eval=null"], &["--stop-after", "2"]));
    fails_with(&sft(&run, &["training.steps=4", "training.checkpoint_every=2", "eval=null", "optimizer.lr=1.0e-3"], &["--resume"]), &["--resume: the recipe changed since the run started (optimizer.lr 0.003 -> 0.001)", "start a new output_dir"]);
    fails_with(&sft(&run, &["training.steps=4", "eval=null", "model.path=tests/fixtures/models/qwen3"], &["--resume"]), &["model.path tests/fixtures/models/llama -> tests/fixtures/models/qwen3"]);
    let out = ok(sft(&run, &["training.steps=6", "training.checkpoint_every=3", "eval=null"], &["--resume"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("with training.steps changed: 4 -> 6") && err.contains("with training.checkpoint_every changed: 2 -> 3"), "{err}");
}

/// #36 item 1 (last part): a hub that answers `X-Repo-Commit: ../../…` is refused before
/// hf-hub (which joins that answer to the cache path unchecked) writes anything: one line
/// naming the header, for a model and a dataset, and nothing outside the cache.
#[test]
fn a_hub_commit_that_climbs_out_of_the_cache_is_refused() {
    use std::io::Write;
    let tmp = TempDir::new();
    let hub = fake_server(|c| {
        let _ = write!(c, "HTTP/1.1 200 OK\r\nX-Repo-Commit: ../../../../evil\r\nETag: \"abc\"\r\nContent-Range: bytes 0-0/10\r\nContent-Length: 0\r\n\r\n");
    });
    let cache = tmp.path().join("hub");
    let env = |cmd: &mut Command| {
        cmd.env("HF_ENDPOINT", &hub).env("HF_HUB_CACHE", &cache).env_remove("HF_HUB_OFFLINE").env("HF_TOKEN", "");
    };
    let mut score = Command::new(env!("CARGO_BIN_EXE_tokbridge"));
    score.args(["score", "--model", "tiny/model", "--text", "a b"]);
    env(&mut score);
    fails_with(&score.output().unwrap(), &["X-Repo-Commit \"../../../../evil\" for config.json of tiny/model", "not a commit name"]);
    let mut train = Command::new(env!("CARGO_BIN_EXE_tokbridge"));
    train.current_dir(env!("CARGO_MANIFEST_DIR")).args(["run", "recipes/sft/tiny.yaml", &format!("output_dir={}", p(&tmp.path().join("run"))), "data.train=hf://datasets/tiny/data/train.jsonl"]);
    env(&mut train);
    fails_with(&train.output().unwrap(), &["X-Repo-Commit \"../../../../evil\" for train.jsonl of datasets/tiny/data"]);
    let outside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != "hub" && n != "run").collect();
    assert!(outside.is_empty(), "written outside the cache: {outside:?}");
}

/// init_model replaces only a model folder it wrote (its marker): a user's folder named as its
/// output_dir was deleted whole; now it is refused and left as it was.
#[test]
fn init_model_replaces_only_what_it_wrote() {
    let tmp = TempDir::new();
    let init = |out: &Path| tokbridge(&["run", "recipes/demo_b/06_student_init.yaml", &format!("output_dir={}", p(out))]);
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("config.json"), "{}").unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    fails_with(&init(&mine), &["init_model: output_dir", "holds \"notes.txt\", which no export writes"]);
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "my notes");
    let fresh = tmp.path().join("fresh");
    ok(init(&fresh));
    assert!(fresh.join(".tokbridge-export").is_file() && fresh.join("model.safetensors").is_file());
    ok(init(&fresh));
}

/// make_task, train_tokenizer (and compare, by the same helper) write their output_dir in one
/// piece and replace only a folder they wrote: a user's train.jsonl or tokenizer.json of the
/// same name was overwritten in place; now the folder is refused and left as it was.
#[test]
fn task_and_tokenizer_outputs_replace_only_what_they_wrote() {
    let tmp = TempDir::new();
    let task = |out: &Path| tokbridge(&["run", "recipes/demo_b/01_task.yaml", &format!("output_dir={}", p(out)), "vars.train_size=50", "vars.val_size=5", "vars.test_size=5"]);
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("train.jsonl"), "{\"prompt\": \"mine\", \"response\": \"mine\"}\n").unwrap();
    fails_with(&task(&mine), &["make_task: output_dir", "holds \"train.jsonl\", which no export writes"]);
    assert_eq!(std::fs::read_to_string(mine.join("train.jsonl")).unwrap(), "{\"prompt\": \"mine\", \"response\": \"mine\"}\n");
    let data = tmp.path().join("data");
    ok(task(&data));
    assert_eq!(std::fs::read_to_string(data.join("train.jsonl")).unwrap().lines().count(), 50);
    ok(task(&data));
    assert!(data.join(".tokbridge-export").is_file());
    let recipe = tmp.path().join("tok.yaml");
    let tok = |out: &Path| {
        let text = format!("recipe: train_tokenizer\noutput_dir: {}\ndata: [{}]\nvocab_size: 320\nspaces: byte_level\ndigits: split\nchat: chatml\n", p(out), p(&data.join("train.jsonl")));
        std::fs::write(&recipe, text).unwrap();
        tokbridge(&["run", &p(&recipe)])
    };
    std::fs::write(mine.join("tokenizer.json"), "{}").unwrap();
    std::fs::remove_file(mine.join("train.jsonl")).unwrap();
    fails_with(&tok(&mine), &["train_tokenizer: output_dir", "holds a model that tokbridge did not write"]);
    assert_eq!(std::fs::read_to_string(mine.join("tokenizer.json")).unwrap(), "{}");
    let fresh = tmp.path().join("tok");
    ok(tok(&fresh));
    ok(tok(&fresh));
    assert!(fresh.join("tokenizer.json").is_file() && fresh.join("tokenizer_config.json").is_file());
}

/// #36 item 9: a gzip page that inflates far past the size its header declares. The parquet
/// crate reads gzip to the end of the stream whatever the page declares, so a 6 MB page of a
/// real file, its bytes replaced by a gzip member that inflates to 4 GiB (zeros after it fill
/// the page), took all memory under a 3 GiB limit. Now it is one line.
#[test]
fn a_gzip_page_that_inflates_past_its_declared_size_is_refused() {
    use parquet::file::{properties::WriterProperties, reader::FileReader, serialized_reader::SerializedFileReader, writer::SerializedFileWriter};
    use std::io::Write;
    let tmp = TempDir::new();
    let file = tmp.path().join("bomb.parquet");
    // Twelve rows of 800 KB of pseudo-random letters: one page, about 6 MB after gzip.
    let mut x = 88172645463325252u64;
    let mut letter = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (b'a' + (x % 26) as u8) as char
    };
    let prompts: Vec<String> = (0..12).map(|_| (0..800_000).map(|_| letter()).collect()).collect();
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type("message m { required binary prompt (UTF8); required binary response (UTF8); }").unwrap());
    let props = WriterProperties::builder().set_compression(parquet::basic::Compression::GZIP(Default::default())).set_dictionary_enabled(false).set_data_page_size_limit(32 << 20).build();
    let mut w = SerializedFileWriter::new(std::fs::File::create(&file).unwrap(), schema, std::sync::Arc::new(props)).unwrap();
    let mut group = w.next_row_group().unwrap();
    for column in [&prompts, &vec!["4".to_string(); 12]] {
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<parquet::data_type::ByteArray> = column.iter().map(|s| s.as_str().into()).collect();
        col.typed::<parquet::data_type::ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    w.close().unwrap();
    let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let chunk = reader.metadata().row_group(0).column(0);
    let (start, length) = (chunk.data_page_offset() as usize, chunk.compressed_size() as usize);
    // The header: field 1 (type), then field 2 (uncompressed size), field 3 (compressed size).
    let mut bytes = std::fs::read(&file).unwrap();
    let varint = |b: &[u8], at: &mut usize| {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            v |= ((b[*at] & 0x7f) as u64) << shift;
            *at += 1;
            if b[*at - 1] & 0x80 == 0 {
                break;
            }
        }
        (v >> 1) as usize
    };
    let mut at = start + 1;
    varint(&bytes, &mut at);
    assert_eq!(bytes[at], 0x15);
    at += 1;
    assert!(varint(&bytes, &mut at) > 9_000_000, "one page holds the twelve rows");
    at += 1;
    let compressed = varint(&bytes, &mut at);
    let data = start + length - compressed;
    // A gzip member of 4 GiB of zeros (a real one: its CRC and size), zeros after it to fill
    // the page's `compressed` bytes.
    let mut deflate = flate2::write::DeflateEncoder::new(vec![], flate2::Compression::best());
    let mut crc = flate2::Crc::new();
    let zeros = vec![0u8; 1 << 24];
    (0..256).for_each(|_| {
        deflate.write_all(&zeros).unwrap();
        crc.update(&zeros);
    });
    let deflate = deflate.finish().unwrap();
    assert!(deflate.len() + 18 < compressed, "the bomb ({} bytes) fits the page ({compressed})", deflate.len());
    let mut member = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    member.extend(&deflate);
    member.extend(crc.sum().to_le_bytes());
    member.extend(crc.amount().to_le_bytes());
    member.resize(compressed, 0);
    assert_eq!(member.len(), compressed);
    bytes[data..data + compressed].copy_from_slice(&member);
    std::fs::write(&file, &bytes).unwrap();
    let out = format!("output_dir={}", p(&tmp.path().join("run")));
    let cmd = format!("ulimit -v 3145728; exec {} run recipes/sft/tiny.yaml {out} eval=null training.steps=1 data.train={}", env!("CARGO_BIN_EXE_tokbridge"), p(&file));
    fails_with(&Command::new("sh").arg("-c").arg(cmd).output().unwrap(), &["bomb.parquet", "inflates past the"]);
}

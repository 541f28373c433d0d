//! The demo pipeline scaled down to seconds: every stage runs through the real recipes, the
//! report has every method with its plots as PNG and SVG, a second run reuses every stage, and
//! `tokbridge compare` works on the run directories.
mod common;

use common::tempdir::TempDir;
use std::process::Command;

fn tokbridge(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn scaled_down_demo_runs_end_to_end() {
    let tmp = TempDir::new();
    let root = tmp.path().join("demo");
    let vars = [
        format!("vars.root={}", root.display()),
        "vars.train_size=160".into(),
        "vars.test_size=8".into(),
        "vars.teacher_steps=4".into(),
        "vars.warmup_steps=3".into(),
        "vars.prompts=16".into(),
        "vars.steps=2".into(),
        "vars.prompts_per_step=4".into(),
        "vars.eval_every=2".into(),
        "vars.eval_examples=4".into(),
        "vars.max_new_tokens=24".into(),
    ];
    let mut args = vec!["run", "recipes/demo.yaml"];
    args.extend(vars.iter().map(String::as_str));
    let (ok, err) = tokbridge(&args);
    assert!(ok, "demo failed: {err}");

    let report = std::fs::read_to_string(root.join("report/report.md")).unwrap();
    for method in ["teacher (qwen3)", "student warm start (llama)", "SFT on teacher answers", "OPD (DPCA)", "OPD (GOLD hybrid)"] {
        let row = report.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap_or_else(|| panic!("no row for {method} in {report}"));
        assert_eq!(row.matches('|').count(), 10, "{row}");
        assert!(row.contains('%'), "{row}");
    }
    // SFT (with eval.teacher) and both OPD runs report the held-out gap from start to end.
    for method in ["SFT on teacher answers", "OPD (DPCA)", "OPD (GOLD hybrid)"] {
        let row = report.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap();
        assert!(row.split('|').nth(4).unwrap().contains('→'), "no gap for {method}: {row}");
    }
    // What the models wrote: generations at every evaluation, side by side in the report,
    // and OPD's rollouts with their alignment.
    for run in ["sft-on-teacher", "opd-dpca", "eval-student-warm"] {
        let first = std::fs::read_to_string(root.join(run).join("generations/step-000000.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 4, "{run}: one line per evaluated prompt");
        assert!(rows.iter().all(|r| r["prompt"].is_string() && r["response"].is_string() && r["reference"].is_string() && r["correct"].is_boolean()), "{run}: {first}");
    }
    assert!(root.join("opd-dpca/generations/step-000002.jsonl").exists());
    let dump = std::fs::read_to_string(root.join("opd-dpca/rollouts/step-000002.md")).unwrap();
    assert!(dump.contains("## rollout 0") && dump.contains("L_T") && dump.contains("1:1"), "{dump}");
    assert!(report.contains("## Held-out generations") && report.contains("**OPD (DPCA) (step 2)**") && report.contains("**student warm start (llama)**"), "{report}");
    for plot in ["accuracy_vs_steps", "accuracy_vs_time", "accuracy_vs_teacher_tokens"] {
        let png = std::fs::read(root.join(format!("report/{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png is not a PNG");
        assert!(png.len() > 5000, "{plot}.png looks empty");
        let svg = std::fs::read_to_string(root.join(format!("report/{plot}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("OPD (DPCA)"), "{plot}.svg lacks its legend");
        assert!(report.contains(&format!("({plot}.png)")), "the report embeds {plot}.png");
    }
    // Models went through the export path and load back.
    for m in ["teacher", "student-warm"] {
        tokbridge::models::load(&root.join(m), tch::Device::Cpu, tch::Kind::Float).unwrap();
    }

    // Run again: every stage is reused.
    let (ok, err) = tokbridge(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished before, reused").count(), 14, "{err}");

    // A redone stage reruns every stage after it, from empty directories (no stale answers).
    std::fs::remove_file(root.join("stages/10_teacher_responses.done")).unwrap();
    let stale = root.join("teacher-responses/responses.jsonl");
    std::fs::write(&stale, "{\"prompt\": \"stale\", \"response\": \"stale\"}\n").unwrap();
    let (ok, err) = tokbridge(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished before, reused").count(), 9, "{err}");
    assert!(err.contains("[14/14] 14_compare\n") && !err.contains("(resuming)"), "{err}");
    assert!(!std::fs::read_to_string(&stale).unwrap().contains("stale"), "teacher answers were not redone");

    // The compare command on the run directories.
    let out = tmp.path().join("cmp");
    let dirs: Vec<String> = ["sft-on-teacher", "opd-dpca"].iter().map(|d| root.join(d).display().to_string()).collect();
    let (ok, err) = tokbridge(&["compare", &dirs[0], &dirs[1], "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| sft-on-teacher |") && md.contains("| opd-dpca |"));
}

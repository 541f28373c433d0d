//! The demo pipeline scaled down to seconds: every stage runs through the real recipes, the
//! report has every method and control with its plots as PNG and SVG and the contrasts of each
//! method against SFT with and without the control's tokenizer, a second run reuses every
//! stage, the same command in another directory gives the same table, the sweep chooses on the
//! validation split, and `tokbridge compare` works on the run directories.
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
    let args = scaled_down(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, err) = tokbridge(&args);
    assert!(ok, "demo failed: {err}");

    let report = std::fs::read_to_string(root.join("report/report.md")).unwrap();
    for method in METHODS {
        let row = report.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap_or_else(|| panic!("no row for {method} in {report}"));
        assert_eq!(row.matches('|').count(), 10, "{row}");
        // Accuracy and words match (the response copies the format, names and objects).
        assert!(row.split('|').nth(2).unwrap().contains('%') && row.split('|').nth(3).unwrap().contains('%'), "{row}");
    }
    // SFT (with eval.teacher) and the OPD runs report the held-out gap from start to end.
    for method in ["SFT on teacher answers", "OPD (DPCA)", "OPD (DPCA + candidates)", "OPD (DPCA) after SFT (160 + 160 steps)", "control: same-tokenizer OPD"] {
        let row = report.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap();
        assert!(row.split('|').nth(5).unwrap().contains('→'), "no gap for {method}: {row}");
    }
    // SFT continued for as long as OPD after SFT is charged both sets of teacher answers.
    let generated = |method: &str| {
        let row = report.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap();
        let cell = row.split('|').nth(9).unwrap().trim().to_string();
        let (num, scale) = match cell.strip_suffix('k') {
            Some(n) => (n.to_string(), 1e3),
            None => (cell.clone(), 1.0),
        };
        num.parse::<f64>().unwrap_or_else(|_| panic!("{row}")) * scale
    };
    let stats = |dir: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join(dir).join("stats.json")).unwrap()).unwrap();
        v["generated_tokens"].as_f64().unwrap()
    };
    let (first, more) = (stats("teacher-responses"), stats("teacher-responses-more"));
    assert!((generated("SFT on teacher answers") - first).abs() <= 50.0, "{first}");
    assert!((generated("SFT on teacher answers (160 + 160 steps)") - (first + more)).abs() <= 50.0, "{first} + {more}");
    // What the models wrote: generations at every evaluation, side by side in the report,
    // and OPD's rollouts with their alignment.
    for run in ["sft", "opd-dpca", "eval-student-warm", "control-opd"] {
        let first = std::fs::read_to_string(root.join(run).join("generations/step-000000.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 4, "{run}: one line per evaluated prompt");
        assert!(rows.iter().all(|r| r["prompt"].is_string() && r["response"].is_string() && r["reference"].is_string() && r["correct"].is_boolean()), "{run}: {first}");
    }
    assert!(root.join("opd-dpca/generations/step-000002.jsonl").exists());
    let dump = std::fs::read_to_string(root.join("opd-dpca/rollouts/step-000002.md")).unwrap();
    assert!(dump.contains("## rollout 0") && dump.contains("L_T") && dump.contains("1:1"), "{dump}");
    assert!(report.contains("## Held-out generations") && report.contains("**OPD (DPCA) (step 2)**") && report.contains("**student warm start (llama tokenizer)**"), "{report}");
    // The sweeps have not run in this root: the report shows the committed tables of the run
    // that chose the shipped values, and says so.
    let sft_sweep = std::fs::read_to_string("recipes/demo/sweeps/sft.md").unwrap();
    assert!(report.contains(&format!("## Settings chosen on the validation split: SFT learning rate\n\n(Not run in `{}`: the sweep that chose the values the recipes ship, as committed in `recipes/demo/sweeps/sft.md`.)\n\n{sft_sweep}", root.join("sweep-sft").display())), "{report}");
    assert!(sft_sweep.contains("| 0.0003 |") && sft_sweep.contains("chosen"), "{sft_sweep}");
    assert!(report.contains("## Timing") && report.contains("a generated token costs about"), "{report}");
    // The contrasts: each method minus SFT, with the student's tokenizer and the teacher's.
    let rows = md_table(&report, "contrast");
    assert_eq!(rows.lines().count(), 7, "{report}");
    let opd = rows.lines().find(|l| l.starts_with("| OPD (DPCA) − SFT, same tokenizer (control) | control: same-tokenizer OPD | control: SFT on teacher answers | ")).unwrap_or_else(|| panic!("{rows}"));
    assert!(opd.split('|').nth(4).unwrap().trim().parse::<f64>().is_ok(), "{opd}");
    assert!(report.lines().find(|l| l.starts_with("| OPD (DPCA + candidates) |")).is_some());
    for plot in ["accuracy_vs_steps", "accuracy_vs_time", "accuracy_vs_teacher_tokens"] {
        let png = std::fs::read(root.join(format!("report/{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png is not a PNG");
        assert!(png.len() > 5000, "{plot}.png looks empty");
        let svg = std::fs::read_to_string(root.join(format!("report/{plot}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("OPD (DPCA)"), "{plot}.svg lacks its legend");
        assert!(report.contains(&format!("({plot}.png)")), "the report embeds {plot}.png");
    }
    // Models went through the export path and load back.
    for m in ["teacher", "student-warm", "control-warm", "sft-final"] {
        tokbridge::models::load(&root.join(m), tch::Device::Cpu, tch::Kind::Float).unwrap();
    }

    // Run again: every stage is reused.
    let (ok, err) = tokbridge(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished before, reused").count(), 22, "{err}");

    // A redone stage reruns every stage after it, from empty directories (no stale answers).
    std::fs::remove_file(root.join("stages/11_teacher_responses.done")).unwrap();
    let stale = root.join("teacher-responses/responses.jsonl");
    std::fs::write(&stale, "{\"prompt\": \"stale\", \"response\": \"stale\"}\n").unwrap();
    let (ok, err) = tokbridge(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished before, reused").count(), 10, "{err}");
    assert!(err.contains("[22/22] 22_compare\n") && !err.contains("(resuming)"), "{err}");
    assert!(!std::fs::read_to_string(&stale).unwrap().contains("stale"), "teacher answers were not redone");

    // The compare command on the run directories.
    let out = tmp.path().join("cmp");
    let dirs: Vec<String> = ["sft", "opd-dpca"].iter().map(|d| root.join(d).display().to_string()).collect();
    let (ok, err) = tokbridge(&["compare", &dirs[0], &dirs[1], "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| sft |") && md.contains("| opd-dpca |"));

    // The same command and seed in another directory: the same table, number for number.
    let again = tmp.path().join("again");
    let args = scaled_down(&again);
    let (ok, err) = tokbridge(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let [report, other] = [&root, &again].map(|r| std::fs::read_to_string(r.join("report/report.md")).unwrap());
    let first = md_table(&report, "run");
    assert_eq!(first, md_table(&other, "run"), "the demo's table must be the same every run");
    assert!(first.lines().count() == 14, "{first}");
    assert_eq!(md_table(&report, "contrast"), md_table(&other, "contrast"));

    // The sweep on the validation split, reusing the prepared stages of that root.
    let mut sweep = scaled_down(&again);
    sweep[1] = "recipes/demo_sweep.yaml".into();
    let (ok, err) = tokbridge(&sweep.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished before, reused").count(), 16, "the demo's first 16 stages are shared: {err}");
    let chosen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(again.join("sweep-opd/sweep.json")).unwrap()).unwrap();
    let runs = chosen["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    let best = runs.iter().map(|r| r["value"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(chosen["best"]["value"].as_f64().unwrap(), best);
    let recipe = std::fs::read_to_string(again.join("sweep-opd/run-00/recipe.yaml")).unwrap();
    assert!(recipe.contains("val.jsonl") && !recipe.contains("test.jsonl"), "the sweep evaluates on the validation split: {recipe}");
    // OPD's learning rate from the SFT checkpoint, on the same split.
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(again.join("sweep-opd-after-sft/sweep.json")).unwrap()).unwrap();
    assert_eq!(after["runs"].as_array().unwrap().len(), 3, "{after}");
    let recipe = std::fs::read_to_string(again.join("sweep-opd-after-sft/run-00/recipe.yaml")).unwrap();
    assert!(recipe.contains("sft-final") && recipe.contains("val.jsonl") && !recipe.contains("test.jsonl"), "{recipe}");
    // SFT's, continued from the same checkpoint on the next prompts' answers.
    let recipe = std::fs::read_to_string(again.join("sweep-sft-more/run-00/recipe.yaml")).unwrap();
    assert!(recipe.contains("sft-final") && recipe.contains("teacher-responses-more") && recipe.contains("val.jsonl") && !recipe.contains("test.jsonl"), "{recipe}");

    // Three seeds and the report over them: seed 0 is the finished root (every stage reused),
    // seeds 1 and 2 get roots of their own; the report's per-seed columns are each root's own
    // final accuracy, and the mean is theirs.
    let mut seeds = scaled_down(&root);
    seeds[1] = "recipes/demo_seeds.yaml".into();
    let (ok, err) = tokbridge(&seeds.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert!(err.matches("finished before, reused").count() >= 22, "{err}");
    let pooled = std::fs::read_to_string(root.with_file_name("demo-seeds/report/report.md")).unwrap();
    let acc = |report: &str, run: &str| md_table(report, "run").lines().find(|l| l.starts_with(&format!("| {run} |"))).map(|l| l.split('|').nth(2).unwrap().trim().trim_end_matches('%').parse::<f64>().unwrap()).unwrap();
    let own: Vec<String> = ["demo", "demo-seed1", "demo-seed2"].iter().map(|d| std::fs::read_to_string(root.with_file_name(d).join("report/report.md")).unwrap()).collect();
    let repeats = md_table(&pooled[pooled.find("## Repeats").unwrap()..], "run");
    assert!(repeats.starts_with("| run | seed 0 | seed 1 | seed 2 | mean |"), "{repeats}");
    for method in METHODS {
        let row = repeats.lines().find(|l| l.starts_with(&format!("| {method} |"))).unwrap_or_else(|| panic!("{repeats}"));
        let cells: Vec<f64> = row.split('|').skip(2).take(4).map(|c| c.trim().parse().unwrap()).collect();
        for (k, report) in own.iter().enumerate() {
            assert_eq!(cells[k], acc(report, method), "{method} at seed {k}: {row}");
        }
        assert!((cells[3] - (cells[0] + cells[1] + cells[2]) / 3.0).abs() < 0.1, "{row}");
    }
    let contrasts = md_table(&pooled[pooled.find("## Repeats").unwrap()..], "contrast");
    assert_eq!(contrasts.lines().count(), 7, "{contrasts}");
}

/// The report's table whose header starts `| {first} |`: "run" for the results (not the
/// timing, which comes later), "contrast" for the contrasts.
fn md_table(report: &str, first: &str) -> String {
    let header = format!("| {first} |");
    report.lines().skip_while(|l| !l.starts_with(&header)).take_while(|l| l.starts_with('|')).collect::<Vec<_>>().join("\n")
}

const METHODS: [&str; 12] = [
    "teacher (qwen3)",
    "student warm start (llama tokenizer)",
    "SFT on teacher answers",
    "OPD (DPCA)",
    "OPD (DPCA + candidates)",
    "OPD (DPCA) after SFT (160 + 160 steps)",
    "SFT on teacher answers (160 + 160 steps)",
    "control: warm start (teacher's tokenizer)",
    "control: SFT on teacher answers",
    "control: same-tokenizer OPD",
    "control: same-tokenizer OPD after SFT (160 + 160 steps)",
    "control: SFT on teacher answers (160 + 160 steps)",
];

/// The demo command at seconds' scale in `root`.
fn scaled_down(root: &std::path::Path) -> Vec<String> {
    let mut args = vec!["run".to_string(), "recipes/demo.yaml".into(), format!("vars.root={}", root.display())];
    for v in ["train_size=160", "val_size=8", "test_size=8", "teacher_steps=4", "warmup_steps=3", "control_warmup_steps=3", "prompts=16", "steps=2", "prompts_per_step=4", "eval_every=2", "eval_examples=4", "gap_examples=4", "max_new_tokens=24"] {
        args.push(format!("vars.{v}"));
    }
    args
}

/// Regime B (recipes/demo_b.yaml) at seconds' scale: every stage runs, the teacher's spread is
/// reported, the contrasts against SFT read back with their matched-teacher-cost column, and the
/// same command in another directory gives the same tables.
#[test]
fn scaled_down_regime_b_is_deterministic() {
    let tmp = TempDir::new();
    let run = |root: &std::path::Path| {
        let mut args = vec!["run".to_string(), "recipes/demo_b.yaml".into(), format!("vars.root={}", root.display())];
        for v in ["train_size=200", "val_size=8", "test_size=8", "teacher_steps=4", "teacher_more_steps=2", "warm_prompts=24", "warmup_steps=3", "prompts=16", "steps=2", "prompts_per_step=4", "eval_examples=4", "gap_examples=4", "max_new_tokens=24"] {
            args.push(format!("vars.{v}"));
        }
        let (ok, err) = tokbridge(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "regime B failed: {err}");
        std::fs::read_to_string(root.join("report/report.md")).unwrap()
    };
    let (report, other) = (run(&tmp.path().join("b")), run(&tmp.path().join("b-again")));
    let data = std::fs::read_to_string(tmp.path().join("b/data/train.jsonl")).unwrap();
    assert!(data.lines().count() == 200 && data.contains("On Saturday") && data.contains("\\n#### "), "{}", &data[..400]);
    let table = md_table(&report, "run");
    assert_eq!(table.lines().count(), 11, "{table}");
    assert_eq!(table, md_table(&other, "run"), "regime B's table must be the same every run");
    let contrasts = md_table(&report, "contrast");
    assert_eq!(contrasts, md_table(&other, "contrast"));
    assert_eq!(contrasts.lines().count(), 6, "{contrasts}");
    for row in contrasts.lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells[4].parse::<f64>().is_ok() && cells[5].parse::<f64>().is_ok(), "accuracy and avg@k: {row}");
        assert!(cells[8].contains("(at "), "matched teacher tokens: {row}");
    }
    let spread = md_table(&report, "run | distinct correct solutions");
    assert!(spread.lines().any(|l| l.starts_with("| teacher (qwen3) | ") && l.contains(" of 8 |")), "{report}");
    assert!(spread.lines().any(|l| l.starts_with("| OPD (DPCA) | ") && l.contains(" of 4 |")), "{report}");
}

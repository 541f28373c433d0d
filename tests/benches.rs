//! The benchmark programs still build and run (`cargo test` does not build benches/): the
//! training step on both loss paths and sampling on a tiny llama, and DPCA between the fixture
//! tokenizers through the `--real` entry that benches/compare.py uses.
#[allow(dead_code)]
#[path = "../benches/align.rs"]
mod align;
#[allow(dead_code)]
#[path = "../benches/step.rs"]
mod step;

fn step(args: &str) -> serde_json::Value {
    let argv: Vec<String> = args.split_whitespace().map(String::from).collect();
    step::run(&step::parse(&argv))
}

#[test]
fn benchmarks_run_on_tiny_sizes() {
    let tiny = "--hidden 32 --layers 1 --heads 2 --kv-heads 1 --inter 64 --vocab 100 --batch 2 --seq 16 --reps 1";
    // Embeddings 100 x 32 (tied); one block: q, o 32 x 32, k, v 16 x 32, MLP 3 x 32 x 64, two norms; final norm.
    let params = 100 * 32 + (2 * 1024 + 2 * 512 + 3 * 2048 + 64) + 32;
    for mode in ["train", "train --full-logits", "train --logits-per-chunk 500", "sample --new-tokens 4"] {
        let out = step(&format!("{mode} {tiny}"));
        assert_eq!(out["params"], params, "{mode}: {out}");
        let median = out["median_s"].as_f64().unwrap();
        assert!(median > 0.0 && out["min_s"].as_f64().unwrap() <= median && median <= out["max_s"].as_f64().unwrap(), "{mode}: {out}");
        assert!(out["peak_rss_gib"].as_f64().unwrap() > 0.0, "{mode}: {out}");
    }

    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models");
    let out = align::real(&format!("{models}/qwen3"), &format!("{models}/llama"));
    assert_eq!(out["responses"], 8);
    // Every student token is in some chunk, so there are at most as many chunks as tokens.
    let (chunks, tokens) = (out["chunks"].as_f64().unwrap(), out["student_tokens"].as_f64().unwrap() * 8.0);
    assert!(chunks > 100.0 && chunks <= tokens, "{out}");
}

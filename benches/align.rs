//! Alignment throughput: DPCA over realistic response pairs (~1k tokens of worked arithmetic)
//! between a tokenizer that packs digits (llama fixture, Llama 3 style) and one that splits them
//! (qwen3 fixture, Qwen style). Reports chunks per second for the alignment alone and for
//! tokenization + pieces + alignment. `cargo bench --bench align`.
//!
//! `cargo bench --bench align -- --real QWEN3_DIR LLAMA3_DIR` instead aligns ~1k-token responses
//! between the real Qwen3 (student) and Llama 3 (teacher) tokenizers and prints one JSON line,
//! for benches/compare.py to set beside benches/python/dpca_ref.py on the same texts.
use std::time::Instant;
use tokbridge::align::dpca;
use tokbridge::hf::tokenizer::Tokenizer;

fn response(seed: u64, chars: usize) -> String {
    let mut rng = tokbridge::data::Rng(seed);
    let mut out = String::new();
    while out.len() < chars {
        let (a, b) = (rng.next_u64() % 100_000, rng.next_u64() % 10_000);
        out.push_str(&format!("Tom has {a} apples and buys {b} more, so he has {a} + {b} = {} apples. ", a + b));
    }
    out.push_str("\n#### 42");
    out
}

/// DPCA of 8 responses of ~1,900 characters between the tokenizers in `student` and `teacher`.
pub fn real(student: &str, teacher: &str) -> serde_json::Value {
    let s = Tokenizer::load(std::path::Path::new(student)).expect("student tokenizer");
    let t = Tokenizer::load(std::path::Path::new(teacher)).expect("teacher tokenizer");
    let texts: Vec<String> = (0..8).map(|i| response(i, 1900)).collect();
    let pairs: Vec<_> = texts.iter().map(|x| (s.text_pieces(x).unwrap().1, t.text_pieces(x).unwrap().1)).collect();
    let mut times = Vec::new();
    let mut chunks = 0;
    for _ in 0..21 {
        let t0 = Instant::now();
        chunks = pairs.iter().map(|(a, b)| dpca(a, b, 6).len()).sum::<usize>();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tokens = pairs.iter().map(|(a, _)| a.len()).sum::<usize>() as f64 / pairs.len() as f64;
    serde_json::json!({"side": "tokbridge", "mode": "dpca", "responses": pairs.len(), "student_tokens": tokens, "chunks": chunks,
        "median_s": med, "min_s": times[0], "max_s": times[times.len() - 1], "us_per_response": med / pairs.len() as f64 * 1e6})
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if let Some(i) = args.iter().position(|a| a == "--real") {
        println!("{}", real(&args[i + 1], &args[i + 2]));
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let s = Tokenizer::load(&root.join("llama")).expect("llama tokenizer");
    let t = Tokenizer::load(&root.join("qwen3")).expect("qwen3 tokenizer");
    let texts: Vec<String> = (0..32).map(|i| response(i, 1450)).collect();
    let pairs: Vec<_> = texts.iter().map(|x| (s.text_pieces(x).unwrap().1, t.text_pieces(x).unwrap().1)).collect();
    let tokens: usize = pairs.iter().map(|(a, _)| a.len()).sum::<usize>() / pairs.len();
    let reps = 20;
    let mut best = f64::MAX;
    let mut chunks = 0;
    for _ in 0..reps {
        let t0 = Instant::now();
        chunks = pairs.iter().map(|(a, b)| dpca(a, b, 6).len()).sum::<usize>();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("dpca only: {} responses of ~{tokens} student tokens, {chunks} chunks in {:.3} ms: {:.2}M chunks/s, {:.1} µs per response",
        pairs.len(), best * 1e3, chunks as f64 / best / 1e6, best / pairs.len() as f64 * 1e6);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for x in &texts {
            let (a, b) = (s.text_pieces(x).unwrap().1, t.text_pieces(x).unwrap().1);
            std::hint::black_box(dpca(&a, &b, 6));
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("tokenize both + dpca: {:.3} ms for {} responses: {:.0} responses/s", best * 1e3, texts.len(), texts.len() as f64 / best);
}

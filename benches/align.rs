//! Alignment throughput: DPCA over realistic response pairs (~1k tokens of worked arithmetic)
//! between a tokenizer that packs digits (llama fixture, Llama 3 style) and one that splits them
//! (qwen3 fixture, Qwen style). Reports chunks per second for the alignment alone and for
//! tokenization + pieces + alignment. `cargo bench --bench align`.
use std::time::Instant;
use tokbridge::align::dpca;
use tokbridge::hf::tokenizer::Tokenizer;

fn response(seed: u64) -> String {
    let mut rng = tokbridge::data::Rng(seed);
    let mut out = String::new();
    while out.len() < 1450 {
        let (a, b) = (rng.next_u64() % 100_000, rng.next_u64() % 10_000);
        out.push_str(&format!("Tom has {a} apples and buys {b} more, so he has {a} + {b} = {} apples. ", a + b));
    }
    out.push_str("\n#### 42");
    out
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let s = Tokenizer::load(&root.join("llama")).expect("llama tokenizer");
    let t = Tokenizer::load(&root.join("qwen3")).expect("qwen3 tokenizer");
    let texts: Vec<String> = (0..32).map(response).collect();
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

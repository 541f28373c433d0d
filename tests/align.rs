//! DPCA on the real behaviour of the committed fixture tokenizers: byte-level BPE that packs
//! up to three digits (llama, Llama 3 style), byte-level BPE that splits digits (qwen3, Qwen
//! style), and SentencePiece-style BPE with byte fallback and `▁` spaces (gemma, mistral).
mod common;

use common::check_alignment as check;
use tokbridge::align::{dpca, Masked};
use tokbridge::hf::tokenizer::Tokenizer;

fn tok(name: &str) -> Tokenizer {
    Tokenizer::load(&common::fixtures().join(name)).unwrap()
}

const TEXTS: [&str; 6] = [
    "Tom has 1234567 apples and buys 89 more: 1234567 + 89 = 1234656.",
    "Café au lait, naïve déjà vu, über ☕ and 😀 emoji!",
    "def f(x):\n    return x * 3  # triple\n\n\tdone",
    "Question: what is 17 + 25?\nAnswer: 42\n#### 42",
    "  leading spaces and trailing   ",
    "数学 is 'math' in Chinese; ДА means yes.",
];

#[test]
fn every_fixture_pair_aligns_every_text() {
    let names = ["llama", "qwen3", "gemma", "mistral-sharded", "phi3", "gpt2"];
    for a in names {
        for b in names {
            for text in TEXTS {
                check(&tok(a), &tok(b), text);
            }
        }
    }
}

#[test]
fn identical_tokenizers_give_only_one_to_one_chunks() {
    for name in ["llama", "qwen3", "gemma"] {
        for text in TEXTS {
            let c = check(&tok(name), &tok(name), text);
            assert!(c.iter().all(|c| c.student.len() == 1 && c.teacher.len() == 1 && !c.is_masked()), "{name}: {c:?}");
        }
    }
}

#[test]
fn packed_digits_meet_split_digits() {
    // llama packs up to three digits per token, qwen3 one per token.
    let (s, t) = (tok("llama"), tok("qwen3"));
    let text = "1234567";
    let c = check(&s, &t, text);
    let (_, sp) = s.text_pieces(text).unwrap();
    assert!(sp.iter().any(|p| p.len() >= 2), "llama should pack digits: {sp:?}");
    // Every chunk pairs a packed group with one teacher token per digit.
    for ch in &c {
        let digits = sp[ch.student.clone()].concat().len();
        assert_eq!(ch.teacher.len(), digits, "{ch:?}");
    }
}

#[test]
fn a_character_whole_on_one_side_and_in_bytes_on_the_other() {
    // gemma holds "ï" as one piece; llama's byte-level vocabulary spells it as two byte tokens.
    let (s, t) = (tok("gemma"), tok("llama"));
    let text = "naive ï and ☕";
    let (_, tp) = t.text_pieces(text).unwrap();
    assert!(tp.iter().any(|p| p.len() == 1 && p[0] >= 0x80), "llama should split a character into bytes: {tp:?}");
    let c = check(&s, &t, text);
    let (_, sp) = s.text_pieces(text).unwrap();
    let i = c.iter().find(|ch| sp[ch.student.clone()].concat().ends_with("ï".as_bytes())).expect("a chunk ends with ï");
    assert!(!i.is_masked() && i.teacher.len() >= 2, "{i:?}");
    // Where both sides fall back to the same bytes (☕), the identical pieces stay 1:1.
    let cup: Vec<_> = c.iter().filter(|ch| sp[ch.student.clone()].iter().all(|p| p.len() == 1 && p[0] >= 0x80)).collect();
    assert_eq!(cup.len(), 3, "{c:?}");
    assert!(cup.iter().all(|ch| ch.student.len() == 1 && ch.teacher.len() == 1));
}

#[test]
fn special_tokens_align_by_their_text() {
    // qwen3 reads <|im_start|> as one special token; llama spells it out in pieces.
    let text = "<|im_start|>user\nhi<|im_end|>";
    let c = check(&tok("llama"), &tok("qwen3"), text);
    assert!(c.iter().any(|ch| ch.teacher.len() == 1 && ch.student.len() > 1));
}

#[test]
fn different_texts_get_stuck() {
    let (s, t) = (tok("llama"), tok("qwen3"));
    let (_, sp) = s.text_pieces("Tom has 12 pears.").unwrap();
    let (_, tp) = t.text_pieces("Tom has 12 apples.").unwrap();
    let c = dpca(&sp, &tp, 6);
    let last = c.last().unwrap();
    assert_eq!(last.masked, Masked::Stuck);
    assert!(c[..c.len() - 1].iter().all(|ch| !ch.is_masked()));
}

#[test]
fn the_k_limit_masks_long_chunks() {
    let (s, t) = (tok("gemma"), tok("llama"));
    // A run of characters gemma spells out byte by byte: more than K pieces on its side.
    let text = "😀😀😀";
    let (_, sp) = s.text_pieces(text).unwrap();
    let (_, tp) = t.text_pieces(text).unwrap();
    let tight = dpca(&sp, &tp, 2);
    assert!(tight.iter().any(|c| c.masked == Masked::TooLong), "{tight:?}");
    assert!(dpca(&sp, &tp, 64).iter().all(|c| !c.is_masked()));
}

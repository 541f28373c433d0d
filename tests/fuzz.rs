//! Fuzzing with proptest: the GGUF, safetensors, Parquet and JSON-array readers and the
//! served-answer parsers on mutations of the committed real files (byte edits, truncations,
//! insertions; Parquet's also from its end, where its metadata lives), the hub-URL parser on
//! paths built from hostile pieces, the recipe parser on mutated
//! shipped recipes with random overrides, and DPCA on random byte pieces. Each must return an
//! error or a value, never panic, hang or allocate without bound; DPCA must also keep its
//! contract (chunks cover both sequences in order, each of identical text). CI runs a bounded
//! number of cases (about a minute in all); `PROPTEST_CASES=N` runs N per target.
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tokbridge::align::dpca;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// A mutation of a file: byte edits, then an optional insertion and truncation.
#[derive(Debug, Clone)]
struct Mutation {
    edits: Vec<(usize, u8)>,
    insert: Option<(usize, Vec<u8>)>,
    truncate: Option<usize>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        prop::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))),
        prop::option::weighted(0.2, any::<usize>()),
    )
        .prop_map(|(edits, insert, truncate)| Mutation { edits, insert, truncate })
}

impl Mutation {
    /// Edits land mostly in the first 1 KiB, where headers and metadata live.
    fn apply(&self, original: &[u8]) -> Vec<u8> {
        let mut b = original.to_vec();
        let head = b.len().min(1024);
        for (i, (at, v)) in self.edits.iter().enumerate() {
            let span = if i % 4 == 3 { b.len() } else { head };
            if span > 0 {
                b[at % span] = *v;
            }
        }
        if let Some((at, bytes)) = &self.insert {
            let at = at % (head + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        if let Some(t) = self.truncate {
            b.truncate(t % (b.len() + 1));
        }
        b
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokbridge-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A mutation applied from the file's end (where Parquet keeps its metadata) when `tail`.
fn mutated(m: &Mutation, original: &[u8], tail: bool) -> Vec<u8> {
    if !tail {
        return m.apply(original);
    }
    let mut b = original.to_vec();
    b.reverse();
    let mut out = m.apply(&b);
    out.reverse();
    out
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// Parquet datasets (a zstd file and one of nested message lists) and JSON-array datasets:
    /// an error or examples, never a panic or unbounded memory.
    #[test]
    fn dataset_readers_survive_mutated_files(m in mutation(), tail in any::<bool>(), which in 0usize..3) {
        let (rel, ext) = [
            ("tests/fixtures/data/hub/arith/data/train-zstd.parquet", "parquet"),
            ("tests/fixtures/data/hub/chat/conversations.parquet", "parquet"),
            ("tests/fixtures/data/hub/chat/conversations.json", "json"),
        ][which];
        let path = scratch(&format!("case{which}.{ext}"));
        std::fs::write(&path, mutated(&m, &fixture(rel), tail)).unwrap();
        let ds = tokbridge::spec::Dataset { path: path.display().to_string(), prompt: (which == 0).then(|| "question".into()), response: (which == 0).then(|| "answer".into()), ..Default::default() };
        if let Ok(examples) = tokbridge::data::read(&ds, None) {
            prop_assert!(!examples.is_empty());
        }
    }

    /// A served teacher's answers (recorded from vLLM, SGLang and llama-cpp-python), mutated:
    /// parsed to log-probs or refused, never a panic.
    #[test]
    fn served_answer_parsers_survive_mutated_answers(m in mutation(), which in 0usize..5) {
        use tokbridge::served::{parse_generation, parse_scores, Api};
        let names = ["vllm_prompt_logprobs", "vllm_echo", "vllm_echo_token_ids", "sglang_generate", "llama_cpp_python_smollm2"];
        let original = fixture(&format!("tests/fixtures/served/{}.json", names[which]));
        let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&mutated(&m, &original, false)) else { return Ok(()) };
        static TOK: std::sync::OnceLock<tokbridge::hf::tokenizer::Tokenizer> = std::sync::OnceLock::new();
        let tok = TOK.get_or_init(|| tokbridge::hf::tokenizer::Tokenizer::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/demo/tokenizers/teacher").as_path()).unwrap());
        let ids = [1, 355, 307, 223, 23, 22, 22, 22, 340, 16];
        for api in [Api::Vllm, Api::OpenaiCompletions, Api::Sglang, Api::LlamaCppPython] {
            if let Ok(scores) = parse_scores(api, &answer, &ids, tok) {
                prop_assert_eq!(scores.len(), ids.len());
            }
            let _ = parse_generation(api, &answer);
        }
    }
}

/// Pieces that hub paths are made of, the hostile ones included.
fn hub_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("org".to_string()), Just("name".to_string()), Just("data".to_string()), Just("train.jsonl".to_string()), Just("*.parquet".to_string()),
        Just("..".to_string()), Just(".".to_string()), Just("".to_string()), Just("%2F".to_string()), Just("%2f..".to_string()), Just("@".to_string()),
        Just("\\".to_string()), Just("~".to_string()), Just("--".to_string()), Just("\n".to_string()), "[a-z.@%/\\-]{0,6}",
    ]
}

proptest! {
    #![proptest_config(cases(5_000))]

    /// The hub-URL parser: whatever `hf://datasets/...` it accepts, its repo, revision and
    /// path joined to a cache stay inside it (no empty, `.` or `..` part, no backslash or
    /// control character, no absolute path).
    #[test]
    fn hub_dataset_paths_never_leave_the_cache(pieces in prop::collection::vec((hub_piece(), prop_oneof![Just("/"), Just("@"), Just("")]), 2..9)) {
        let rest: String = std::iter::once("datasets/".to_string()).chain(pieces.iter().map(|(p, sep)| format!("{p}{sep}"))).collect();
        let spec = format!("hf://{rest}");
        if let Ok((repo, revision, file)) = tokbridge::hf::hub::hub_dataset(&spec, &rest) {
            let joined = format!("{}/{revision}/{file}", repo);
            for part in joined.split('/') {
                prop_assert!(!part.is_empty() && part != "." && part != ".." && !part.contains('\\') && !part.chars().any(char::is_control), "{spec} -> {joined}");
            }
            prop_assert_eq!(repo.matches('/').count(), 1, "{} -> {}", spec, repo);
        }
    }
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn gguf_reader_survives_mutated_files(m in mutation()) {
        let original = fixture("tests/fixtures/gguf/quants.gguf");
        let path = scratch("case.gguf");
        std::fs::write(&path, m.apply(&original)).unwrap();
        if let Ok(g) = tokbridge::gguf::Gguf::open(&path) {
            for t in &g.tensors {
                let v = g.values(t);
                prop_assert_eq!(v.len() as i64, t.shape.iter().product::<i64>());
            }
        }
    }

    #[test]
    fn safetensors_reader_survives_mutated_files(m in mutation()) {
        let original = fixture("tests/fixtures/gguf/quants_expected.safetensors");
        let path = scratch("case.safetensors");
        std::fs::write(&path, m.apply(&original)).unwrap();
        if let Ok(c) = tokbridge::hf::safetensors::Checkpoint::open_file(&path) {
            let names: Vec<String> = c.names().map(String::from).collect();
            for n in names {
                let _ = c.tensor(&n);
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn recipe_parser_survives_mutated_recipes(
        which in 0usize..4,
        m in mutation(),
        overrides in prop::collection::vec(("[a-z_.]{0,24}", "[ -~]{0,24}").prop_map(|(k, v)| format!("{k}={v}")), 0..3),
    ) {
        let file = ["recipes/sft/tiny.yaml", "recipes/opd/tiny.yaml", "recipes/demo.yaml", "recipes/demo/05_student_warmup.yaml"][which];
        let text = m.apply(&fixture(file));
        let text = String::from_utf8_lossy(&text);
        let _ = tokbridge::recipes::recipe::Recipe::parse(&text, &overrides);
    }
}

proptest! {
    #![proptest_config(cases(20_000))]

    /// One random text split into pieces two ways aligns completely: the chunks cover both
    /// sides in order and each chunk's pieces spell the same bytes.
    #[test]
    fn dpca_aligns_any_two_splits_of_one_text(
        text in prop::collection::vec(any::<u8>(), 0..64),
        cuts_s in prop::collection::vec(any::<usize>(), 0..24),
        cuts_t in prop::collection::vec(any::<usize>(), 0..24),
        k in 1usize..6,
    ) {
        let split = |cuts: &[usize]| -> Vec<Vec<u8>> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
            at.push(0);
            at.push(text.len());
            at.sort();
            at.dedup();
            at.windows(2).map(|w| text[w[0]..w[1]].to_vec()).collect()
        };
        let (s, t) = (split(&cuts_s), split(&cuts_t));
        let chunks = dpca(&s, &t, k);
        let (mut se, mut te) = (0, 0);
        for c in &chunks {
            prop_assert_eq!((c.student.start, c.teacher.start), (se, te));
            prop_assert!(!c.student.is_empty() && !c.teacher.is_empty());
            prop_assert_eq!(s[c.student.clone()].concat(), t[c.teacher.clone()].concat());
            (se, te) = (c.student.end, c.teacher.end);
        }
        prop_assert_eq!((se, te), (s.len(), t.len()));
    }

    /// Unrelated pieces (different texts) never panic, and what aligns stays in order.
    #[test]
    fn dpca_survives_unrelated_pieces(
        s in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..16),
        t in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..16),
    ) {
        let chunks = dpca(&s, &t, 4);
        let (mut se, mut te) = (0, 0);
        for c in &chunks {
            prop_assert!(c.student.start >= se && c.teacher.start >= te);
            (se, te) = (c.student.end, c.teacher.end);
        }
        prop_assert!(se <= s.len() && te <= t.len());
    }
}

//! Fuzzing with proptest: the GGUF reader and the safetensors reader on mutations of the
//! committed real files (byte edits, truncations, insertions), the recipe parser on mutated
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

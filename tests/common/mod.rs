//! Shared helpers for the integration tests: the committed fixtures and their references.
#![allow(dead_code)]
use serde::Deserialize;
use tokbridge::align::{dpca, Chunk, Masked};
use tokbridge::hf::tokenizer::Tokenizer;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("models")
}

/// Every fixture model directory, sorted by name.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/models exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("reference.json").exists())
        .collect();
    dirs.sort();
    dirs
}

/// What transformers computed for a fixture (scripts/fixtures/make_fixtures.py).
#[derive(Deserialize)]
pub struct Reference {
    pub text: String,
    pub ids: Vec<i64>,
    pub logprobs: Vec<f64>,
    pub prompt: String,
    pub prompt_ids: Vec<i64>,
    pub greedy_new_ids: Vec<i64>,
}

pub fn reference(dir: &std::path::Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("valid reference.json")
}

/// Every invariant that must hold for any pair on any text.
pub fn check_alignment(s: &Tokenizer, t: &Tokenizer, text: &str) -> Vec<Chunk> {
    let (sids, sp) = s.text_pieces(text).unwrap();
    let (tids, tp) = t.text_pieces(text).unwrap();
    let chunks = dpca(&sp, &tp, 6);
    // Chunks cover both sides in order, without gaps.
    let (mut si, mut ti) = (0, 0);
    for c in &chunks {
        assert_eq!((c.student.start, c.teacher.start), (si, ti), "gap before {c:?}");
        (si, ti) = (c.student.end, c.teacher.end);
    }
    assert_eq!((si, ti), (sids.len(), tids.len()));
    // Each side's pieces concatenate back to the text, and every aligned chunk is the same
    // bytes on both sides, ending on a character boundary.
    assert_eq!(sp.concat(), text.as_bytes(), "student pieces of {text:?}");
    assert_eq!(tp.concat(), text.as_bytes(), "teacher pieces of {text:?}");
    for c in chunks.iter().filter(|c| c.masked != Masked::Stuck) {
        let a = sp[c.student.clone()].concat();
        assert_eq!(a, tp[c.teacher.clone()].concat(), "chunk {c:?} of {text:?}");
        let one_to_one = c.student.len() == 1 && c.teacher.len() == 1;
        assert!(one_to_one || std::str::from_utf8(&a).is_ok(), "chunk {c:?} cuts a character");
        // Minimal: no proper prefix pair of the chunk is itself aligned.
        for k in c.student.start + 1..c.student.end {
            let prefix = sp[c.student.start..k].concat();
            for j in c.teacher.start + 1..c.teacher.end {
                if tp[c.teacher.start..j].concat() == prefix {
                    assert!(std::str::from_utf8(&prefix).is_err(), "chunk {c:?} is not minimal");
                }
            }
        }
    }
    assert!(chunks.iter().all(|c| c.masked != Masked::Stuck), "{text:?} got stuck: {chunks:?}");
    chunks
}

/// Runs the `tokbridge` binary from the repository root.
pub fn tokbridge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokbridge")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().expect("tokbridge runs")
}

/// Asserts the run succeeded (its stderr otherwise) and hands its output back.
pub fn ok(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "tokbridge failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Copies a fixture into a fresh temporary directory that the test may damage.
pub fn scratch_copy(name: &str) -> tempdir::TempDir {
    let tmp = tempdir::TempDir::new();
    for entry in std::fs::read_dir(fixtures().join(name)).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
    }
    tmp
}

pub mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory under the target dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::temp_dir().join(format!("tokbridge-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
            std::fs::create_dir_all(&base).expect("temp dir");
            Self(base)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `recipes/opd/tiny.yaml` with `overrides`, its fixture paths made absolute (tests run from
/// any directory).
pub fn tiny_opd(overrides: &[&str]) -> tokbridge::recipes::opd::config::Opd {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("recipes/opd/tiny.yaml")).expect("tiny recipe");
    let over: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let Ok(tokbridge::recipes::recipe::Recipe::Opd(mut r)) = tokbridge::recipes::recipe::Recipe::parse(&text, &over) else { panic!("an opd recipe") };
    r.data.train.path = root.join(&r.data.train.path).display().to_string();
    r.student.path = root.join(&r.student.path).display().to_string();
    r.teacher.path = root.join(&r.teacher.path).display().to_string();
    r
}

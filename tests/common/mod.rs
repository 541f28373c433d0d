//! Shared helpers for the integration tests: the committed fixtures and their references.
#![allow(dead_code)]
use serde::Deserialize;
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

//! The GGUF reader and dequantization against gguf-py (the code transformers loads GGUF files
//! with): tests/fixtures/gguf/quants.gguf holds one random tensor of each of the 13 supported
//! types and one metadata value of each value type, and quants_expected.safetensors the values
//! gguf-py dequantizes them to (scripts/fixtures/make_gguf_fixture.py). Bad files are
//! one-line errors. The real SmolLM2 and Gemma 3 files are checked by scripts/check_gguf.py.
mod common;

use std::process::Command;
use tokbridge::gguf::{Gguf, Value};
use tokbridge::hf::safetensors::Checkpoint;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

#[test]
fn every_type_dequantizes_exactly_as_gguf_py() {
    let g = Gguf::open(&fixture("quants.gguf")).unwrap();
    let expected = Checkpoint::open_file(&fixture("quants_expected.safetensors")).unwrap();
    let names: Vec<&str> = expected.names().collect();
    assert_eq!(names.len(), 13);
    for name in names {
        let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.shape, expected.shape(name).unwrap(), "{name} shape");
        let want = Vec::<f32>::try_from(expected.tensor(name).unwrap().flatten(0, -1)).unwrap();
        let got = g.values(t);
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(bad, 0, "{name}: {bad} values differ, e.g. {:?} vs {:?}", &got[..4], &want[..4]);
    }
}

#[test]
fn every_metadata_type_reads() {
    let g = Gguf::open(&fixture("quants.gguf")).unwrap();
    let int = |k: &str| g.get(k).and_then(Value::as_i64).unwrap();
    assert_eq!((int("t.u8"), int("t.i8"), int("t.u16"), int("t.i16")), (200, -5, 60000, -30000));
    assert_eq!((int("t.u32"), int("t.i32"), int("t.u64"), int("t.i64")), (4_000_000_000, -2_000_000_000, 1 << 40, -(1 << 40)));
    assert_eq!(g.get("t.f32").and_then(Value::as_f64), Some(0.25));
    assert_eq!(g.get("t.f64").and_then(Value::as_f64), Some(-1.5));
    assert_eq!(g.get("t.bool").and_then(Value::as_bool), Some(true));
    assert_eq!(g.get("t.str").and_then(Value::as_str), Some("héllo"));
    assert_eq!(g.get("t.arr"), Some(&Value::Array(vec![Value::Str("a".into()), Value::Str("bc".into())])));
}

fn convert(gguf: &std::path::Path, out: &std::path::Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tokbridge"))
        .args(["convert", "--gguf", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn bad_files_are_one_line_errors_and_leave_nothing() {
    let tmp = common::tempdir::TempDir::new();
    let out = tmp.path().join("out");
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated.gguf", bytes[..bytes.len() - 100].to_vec(), "runs past the end of the file"),
        ("magic.gguf", [b"GGML".as_slice(), &bytes[4..]].concat(), "bad magic"),
        // A readable file whose metadata lacks the llama keys a model needs.
        ("nomodel.gguf", bytes.clone(), "llama.embedding_length is missing"),
    ];
    for (name, data, needle) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, data).unwrap();
        let (ok, err) = convert(&path, &out);
        assert!(!ok, "{name} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: not one line: {err}");
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| !n.to_string_lossy().ends_with(".gguf")).collect();
        assert!(left.is_empty(), "{name}: left {left:?} behind");
    }
}

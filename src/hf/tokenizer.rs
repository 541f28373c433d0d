//! A model's tokenizer (tokenizer.json through the `tokenizers` crate) and its end tokens.
//!
//! End-of-sequence ids are the union of `eos_token_id` in config.json and generation_config.json
//! (an id or a list), as transformers' generate stops on generation_config's list.
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// Ids that end a generation.
    pub eos_ids: Vec<i64>,
    /// An id to pad batches with (pad, else the first end id, else 0); padded positions are masked.
    pub pad_id: i64,
}

fn ids_of(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => vec![],
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?))
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            anyhow::bail!("{}: no tokenizer.json", dir.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let mut eos_ids = ids_of(gen.get("eos_token_id"));
        for id in ids_of(config.get("eos_token_id")) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let pad_id = ids_of(gen.get("pad_token_id"))
            .into_iter()
            .chain(ids_of(config.get("pad_token_id")))
            .chain(eos_ids.iter().copied())
            .next()
            .unwrap_or(0);
        Ok(Self { inner, eos_ids, pad_id })
    }

    /// Token ids of `text`, with the special tokens the post-processor adds when `special`.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, special).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, skip_special).map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }
}

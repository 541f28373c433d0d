//! A model's tokenizer (tokenizer.json through the `tokenizers` crate) and its end tokens.
//!
//! End-of-sequence ids are the union of `eos_token_id` in config.json and generation_config.json
//! (an id or a list), as transformers' generate stops on generation_config's list.
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Each token's (start, end) byte offsets in the text it was encoded from.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// Per-id byte pieces and special flags, built on first use.
    pieces: std::sync::OnceLock<Pieces>,
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
        Ok(Self { inner, pieces: Default::default(), eos_ids, pad_id })
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

/// The bytes each token id contributes to the text, and which ids are special tokens.
#[derive(Debug, Clone, Default)]
pub struct Pieces {
    pub bytes: Vec<Vec<u8>>,
    pub special: Vec<bool>,
}

/// GPT-2's byte-level alphabet: the printable char that stands for each byte, by byte.
pub fn byte_level_alphabet() -> [char; 256] {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table = ['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

impl Tokenizer {
    /// The byte piece of every id, read from the vocabulary (no decoding round trips):
    /// byte-level vocabularies map their alphabet back to bytes; SentencePiece-style ones turn
    /// `▁` into a space and `<0xHH>` byte-fallback tokens into that byte; added tokens are their
    /// content (with `▁` as a space in SentencePiece-style vocabularies).
    pub fn pieces(&self) -> &Pieces {
        self.pieces.get_or_init(|| {
            let json: Value = serde_json::from_str(&self.inner.to_string(false).unwrap_or_default()).unwrap_or(Value::Null);
            let decoder = json.get("decoder").map(|d| d.to_string()).unwrap_or_default();
            let byte_level = decoder.contains("\"ByteLevel\"");
            let byte_fallback = json["model"]["byte_fallback"].as_bool().unwrap_or(false);
            let table: std::collections::HashMap<char, u8> = byte_level_alphabet().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
            let added = self.inner.get_added_tokens_decoder();
            let n = self.inner.get_vocab_size(true).max(added.keys().map(|&k| k as usize + 1).max().unwrap_or(0));
            let mut p = Pieces { bytes: vec![vec![]; n], special: vec![false; n] };
            for id in 0..n {
                if let Some(a) = added.get(&(id as u32)) {
                    // Added tokens are matched on the normalized text: in SentencePiece-style
                    // vocabularies `▁` stands for a space there too (Gemma 3's whitespace runs).
                    p.bytes[id] = if byte_level { a.content.as_bytes().to_vec() } else { a.content.replace('\u{2581}', " ").into_bytes() };
                    p.special[id] = a.special;
                    continue;
                }
                let Some(tok) = self.inner.id_to_token(id as u32) else { continue };
                p.bytes[id] = if byte_level {
                    tok.chars().map(|c| table.get(&c).copied().unwrap_or(b'?')).collect()
                } else if byte_fallback && tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') {
                    u8::from_str_radix(&tok[3..5], 16).map(|b| vec![b]).unwrap_or_else(|_| tok.as_bytes().to_vec())
                } else {
                    tok.replace('\u{2581}', " ").into_bytes()
                };
            }
            p
        })
    }

    /// Encodes `text` without special tokens, with each token's (start, end) byte offsets in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<i64>, Offsets)> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok((enc.get_ids().iter().map(|&i| i as i64).collect(), enc.get_offsets().to_vec()))
    }

    /// Encodes a stand-alone `text` without special tokens and returns ids with their byte
    /// pieces. SentencePiece-style normalizers prepend a space marker to the text; that space is
    /// not part of `text`, so it is removed from the first piece.
    pub fn text_pieces(&self, text: &str) -> Result<(Vec<i64>, Vec<Vec<u8>>)> {
        let ids = self.encode(text, false)?;
        let table = self.pieces();
        let mut pieces: Vec<Vec<u8>> = ids.iter().map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
        if pieces.first().is_some_and(|p| p.first() == Some(&b' ')) {
            let all = pieces.concat();
            if all.len() == text.len() + 1 && &all[1..] == text.as_bytes() {
                pieces[0].remove(0);
            }
        }
        Ok((ids, pieces))
    }
}

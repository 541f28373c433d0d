//! The `train_tokenizer` recipe: a BPE tokenizer trained with the tokenizers crate on the text
//! of JSONL datasets, in one of two families' conventions, written as tokenizer.json plus
//! tokenizer_config.json with a chat template.
//!
//! - `byte_level`: GPT-2 byte alphabet with `Ġ` spaces (Llama 3, Qwen).
//! - `metaspace`: `▁` spaces with byte-fallback tokens `<0x00>`..`<0xFF>` (Llama 2, Gemma).
//!
//! Digits are `split` one per token (Qwen) or grouped up to three per token (`group3`, Llama 3).
use crate::data;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::AddedToken;
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SpaceStyle {
    ByteLevel,
    Metaspace,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DigitStyle {
    Split,
    Group3,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ChatStyle {
    Chatml,
    Llama3,
}

/// `recipe: train_tokenizer`: a BPE tokenizer trained on JSONL text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTokenizer {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub output_dir: PathBuf,
    pub data: Vec<Dataset>,
    pub vocab_size: usize,
    pub spaces: SpaceStyle,
    pub digits: DigitStyle,
    pub chat: ChatStyle,
    /// Characters kept in the initial alphabet of metaspace vocabularies (the rest fall back to bytes).
    #[serde(default = "d_alphabet")]
    pub limit_alphabet: usize,
}

fn d_alphabet() -> usize {
    100
}

impl crate::spec::Schema for TrainTokenizer {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.data.is_empty(), "data must list at least one dataset");
        ensure!(self.vocab_size >= 300, "vocab_size must be at least 300 (specials and 256 bytes come first)");
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// The pre-tokenizer split of each convention: words, then digits (one or up to three), then
/// punctuation and whitespace runs, as Llama 3's and Qwen's regexes do.
fn split_regex(digits: DigitStyle) -> String {
    let n = match digits {
        DigitStyle::Split => r"\p{N}",
        DigitStyle::Group3 => r"\p{N}{1,3}",
    };
    format!(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{n}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
}

pub fn run(r: &TrainTokenizer) -> Result<()> {
    let mut texts = Vec::new();
    for path in &r.data {
        for ex in data::read(path, None)? {
            texts.extend(ex.messages.into_iter().map(|m| m.content));
        }
    }
    let (specials, template, bos, eos, pad): (Vec<&str>, &str, Option<&str>, &str, &str) = match r.chat {
        ChatStyle::Chatml => (vec!["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, None, "<|im_end|>", "<|endoftext|>"),
        ChatStyle::Llama3 => (
            vec!["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            LLAMA3,
            Some("<|begin_of_text|>"),
            "<|eot_id|>",
            "<|end_of_text|>",
        ),
    };
    let split = json!({"type": "Split", "pattern": {"Regex": split_regex(r.digits)}, "behavior": "Isolated", "invert": false});
    let (pre, decoder) = match r.spaces {
        SpaceStyle::ByteLevel => (
            json!({"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}),
        ),
        SpaceStyle::Metaspace => (
            json!({"type": "Sequence", "pretokenizers": [split, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true}]}),
            json!({"type": "Sequence", "decoders": [{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true}, {"type": "ByteFallback"}, {"type": "Fuse"}]}),
        ),
    };
    let skeleton = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": pre, "post_processor": null, "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {}, "merges": []}
    });
    let mut tok = tokenizers::Tokenizer::from_bytes(skeleton.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
    // Specials first, then the byte alphabet (byte-level) or the 256 byte-fallback tokens.
    let mut reserved: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    if r.spaces == SpaceStyle::Metaspace {
        reserved.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    }
    let mut builder = BpeTrainerBuilder::new()
        .vocab_size(r.vocab_size)
        .show_progress(false)
        .special_tokens(reserved.iter().map(|s| AddedToken::from(s.clone(), true)).collect());
    if r.spaces == SpaceStyle::ByteLevel {
        builder = builder.initial_alphabet(tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect());
    } else {
        builder = builder.limit_alphabet(r.limit_alphabet);
    }
    let mut trainer = TrainerWrapper::BpeTrainer(builder.build());
    tok.train(&mut trainer, texts.iter()).map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;

    // Byte-fallback tokens are ordinary vocabulary entries, not added tokens; bos gets a
    // post-processor so plain encodings start with it.
    let mut v: Value = serde_json::from_str(&tok.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?)?;
    if r.spaces == SpaceStyle::Metaspace {
        v["model"]["byte_fallback"] = true.into();
        if let Some(added) = v["added_tokens"].as_array_mut() {
            added.retain(|t| !t["content"].as_str().is_some_and(|c| c.starts_with("<0x")));
        }
    }
    let id_of = |s: &str| v["model"]["vocab"][s].as_u64().with_context(|| format!("{s} missing from the trained vocabulary"));
    if let Some(b) = bos {
        let id = id_of(b)?;
        v["post_processor"] = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [id], "tokens": [b]}}});
    }
    let mut cfg = json!({"eos_token": eos, "pad_token": pad, "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096});
    if let Some(b) = bos {
        cfg["bos_token"] = b.into();
    }
    let mut summary = (0, 0);
    crate::atomic::publish_new(&r.output_dir, |dir| {
        std::fs::write(dir.join("tokenizer.json"), serde_json::to_string_pretty(&v)?)?;
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)?)?;
        // Check the result loads and round-trips the training text.
        let check = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let sample = texts.first().map(String::as_str).unwrap_or("");
        let ids = check.encode(sample, false).map_err(|e| anyhow::anyhow!("{e}"))?;
        summary = (check.get_vocab_size(true), ids.len());
        Ok(())
    })
    .with_context(|| format!("train_tokenizer: output_dir {}", r.output_dir.display()))?;
    let (vocab, first) = summary;
    crate::info!("train_tokenizer: {vocab} tokens in {}; the first text takes {first} tokens", r.output_dir.display());
    Ok(())
}

//! `tokbridge convert --gguf FILE --out DIR`: a GGUF file as a Hugging Face model directory.
//!
//! Weights are dequantized and renamed to the Hugging Face names; llama.cpp's changes are
//! undone as transformers' GGUF loader undoes them (`modeling_gguf_pytorch_utils.py`): the
//! q/k row permutation of llama-architecture files, and the `+1` that Gemma files add to norm
//! weights. config.json comes from the `{arch}.*` metadata. tokenizer.json is built from the
//! `tokenizer.ggml.*` vocabulary: byte-level BPE with the file's merges and the pre-tokenizer
//! its `tokenizer.ggml.pre` names (`gpt2` model), or SentencePiece-style BPE with byte fallback
//! and merges recovered from the vocabulary (`llama` model), the way transformers'
//! `gguf_tokenizer_mapping.py` rebuilds them. The directory is assembled under a temporary
//! name, loaded back through the strict loader, and renamed into place.
use super::{Gguf, Value};
use crate::models::Family;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The Hugging Face family of a GGUF `general.architecture`.
fn family(arch: &str) -> Result<Family> {
    Ok(match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gemma" => Family::Gemma,
        "gemma2" => Family::Gemma2,
        "gemma3" => Family::Gemma3,
        other => bail!("GGUF architecture {other:?} is not supported (llama, qwen2, qwen3, gemma, gemma2, gemma3)"),
    })
}

/// `force`: replace a model folder tokbridge did not write (`atomic::check_replaceable`).
pub fn convert(path: &Path, out: &Path, kind: Kind, force: bool) -> Result<()> {
    let g = Gguf::open(path)?;
    let ctx = |what: &str| format!("{}: {what}", path.display());
    let arch = g.get("general.architecture").and_then(Value::as_str).with_context(|| ctx("no general.architecture"))?.to_string();
    let fam = family(&arch).with_context(|| ctx("architecture"))?;
    let config = config(&g, &arch, fam).with_context(|| ctx("config"))?;
    let (tokenizer, tok_config) = tokenizer(&g, fam).with_context(|| ctx("tokenizer"))?;
    crate::atomic::clean_around(out)?;
    crate::atomic::check_output(out, path)?;
    crate::atomic::check_replaceable(out, force)?;

    let stage = crate::atomic::tmp_path(out);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let result = (|| -> Result<()> {
        let mut cfg = config.clone();
        cfg["dtype"] = crate::export::dtype_name(kind).into();
        std::fs::write(stage.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
        std::fs::write(stage.join("tokenizer.json"), serde_json::to_string(&tokenizer)?)?;
        std::fs::write(stage.join("tokenizer_config.json"), serde_json::to_string_pretty(&tok_config)?)?;
        let gen = json!({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]});
        std::fs::write(stage.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
        let weights = weights(&g, fam, &config, kind).with_context(|| ctx("weights"))?;
        crate::hf::safetensors::save(&weights, &stage.join("model.safetensors"))?;
        drop(weights);
        // The strict loader checks every name and shape against the config we wrote.
        crate::models::load(&stage, Device::Cpu, kind).context("the converted directory does not load")?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    // Replace an older conversion only once the new one is complete.
    let published = crate::atomic::publish_dir(&stage, out, force);
    if published.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    published
}

fn meta_i64(g: &Gguf, key: &str) -> Result<i64> {
    g.get(key).and_then(Value::as_i64).with_context(|| format!("metadata {key} is missing"))
}

fn config(g: &Gguf, arch: &str, fam: Family) -> Result<Json> {
    let k = |s: &str| format!("{arch}.{s}");
    let int = |s: &str| g.get(&k(s)).and_then(Value::as_i64);
    let float = |s: &str| g.get(&k(s)).and_then(Value::as_f64);
    let hidden = meta_i64(g, &k("embedding_length"))?;
    let heads = meta_i64(g, &k("attention.head_count"))?;
    let layers = meta_i64(g, &k("block_count"))?;
    let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
    let head_dim = int("attention.key_length").or(int("rope.dimension_count")).unwrap_or(hidden / heads);
    let vocab = g.get("tokenizer.ggml.tokens").and_then(Value::as_array).context("no tokenizer.ggml.tokens")?.len();
    ensure!(g.tensor("rope_freqs.weight").is_none(), "rope_freqs.weight (Llama 3.1-style rope scaling baked into a tensor) is not supported");
    let tied = g.tensor("output.weight").is_none();
    let id = |key: &str| g.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_i64);
    let mut eos: Vec<i64> = ["eos_token_id", "eot_token_id", "eom_token_id"].iter().filter_map(|key| id(key)).collect();
    eos.dedup();
    let theta_default = match fam {
        Family::Gemma3 => 1_000_000.0,
        _ => 10_000.0,
    };
    let theta = float("rope.freq_base").unwrap_or(theta_default);
    let scaling = match g.get(&k("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => None,
        Some("linear") => Some(json!({"rope_type": "linear", "factor": float("rope.scaling.factor").context("rope.scaling.factor")?})),
        Some("yarn") => Some(json!({"rope_type": "yarn", "factor": float("rope.scaling.factor").context("rope.scaling.factor")?,
            "original_max_position_embeddings": int("rope.scaling.original_context_length")})),
        Some(other) => bail!("rope scaling {other:?} is not supported (linear, yarn)"),
    };
    let mut c = json!({
        "architectures": [format!("{}ForCausalLM", match fam {
            Family::Qwen2 => "Qwen2", Family::Qwen3 => "Qwen3", Family::Gemma => "Gemma", Family::Gemma2 => "Gemma2",
            Family::Gemma3 => "Gemma3", _ => "Llama" })],
        "model_type": fam.model_type(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta_i64(g, &k("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "max_position_embeddings": int("context_length").unwrap_or(4096),
        "tie_word_embeddings": tied,
        "bos_token_id": id("bos_token_id"),
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "pad_token_id": id("padding_token_id"),
    });
    let obj = c.as_object_mut().expect("an object");
    let rope = |theta: f64, scaling: &Option<Json>| {
        let mut r = scaling.clone().unwrap_or_else(|| json!({"rope_type": "default"}));
        r["rope_theta"] = theta.into();
        r
    };
    match fam {
        Family::Gemma | Family::Gemma2 | Family::Gemma3 => {
            obj.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
            // llama.cpp's attention scale: hidden / heads for the 27B models, head_dim otherwise.
            let big = (fam == Family::Gemma2 && layers == 46) || (fam == Family::Gemma3 && layers == 62);
            obj.insert("query_pre_attn_scalar".into(), (if big { hidden / heads } else { head_dim }).into());
            if let Some(w) = int("attention.sliding_window") {
                obj.insert("sliding_window".into(), w.into());
            }
            if fam == Family::Gemma2 {
                obj.insert("attn_logit_softcapping".into(), float("attn_logit_softcapping").into());
                obj.insert("final_logit_softcapping".into(), float("final_logit_softcapping").into());
                obj.insert("rope_parameters".into(), rope(theta, &scaling));
                let types: Vec<&str> = (0..layers).map(|i| if i % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect();
                obj.insert("layer_types".into(), json!(types));
            } else if fam == Family::Gemma3 {
                let types: Vec<&str> = (0..layers).map(|i| if (i + 1) % 6 != 0 { "sliding_attention" } else { "full_attention" }).collect();
                obj.insert("layer_types".into(), json!(types));
                obj.insert("rope_parameters".into(), json!({"full_attention": rope(theta, &scaling), "sliding_attention": rope(10_000.0, &None)}));
            } else {
                obj.insert("rope_parameters".into(), rope(theta, &scaling));
            }
        }
        _ => {
            obj.insert("hidden_act".into(), "silu".into());
            obj.insert("rope_parameters".into(), rope(theta, &scaling));
            obj.insert("attention_bias".into(), (fam == Family::Llama && g.tensor("blk.0.attn_q.bias").is_some()).into());
        }
    }
    Ok(c)
}

/// Hugging Face name of a GGUF tensor name, or None for names we do not know.
fn hf_name(name: &str, fam: Family) -> Option<String> {
    let gemma_v2 = matches!(fam, Family::Gemma2 | Family::Gemma3);
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" if gemma_v2 => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if gemma_v2 => "post_attention_layernorm",
        "post_ffw_norm" if gemma_v2 => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's permutation of q/k rows (`reverse_permute_weights` in transformers):
/// within each head, GGUF row `2i + half` is Hugging Face row `half * d/2 + i`.
fn unpermute(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for half in 0..2 {
                let src = (h * d + 2 * i + half) * cols;
                let dst = (h * d + half * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

fn weights(g: &Gguf, fam: Family, config: &Json, kind: Kind) -> Result<Vec<(String, Tensor)>> {
    let heads = config["num_attention_heads"].as_i64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_i64().unwrap_or(1) as usize;
    let gemma = matches!(fam, Family::Gemma | Family::Gemma2 | Family::Gemma3);
    let mut out = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        let name = hf_name(&t.name, fam).with_context(|| format!("tensor {} has no Hugging Face counterpart in a {} model", t.name, fam.model_type()))?;
        let mut v = g.values(t);
        if fam == Family::Llama && (t.name.contains(".attn_q.") || t.name.contains(".attn_k.")) {
            let h = if t.name.contains(".attn_q.") { heads } else { kv_heads };
            v = unpermute(&v, t.shape[0] as usize, h);
        }
        if gemma && name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        out.push((name, Tensor::from_slice(&v).view(t.shape.as_slice()).to_kind(kind)));
    }
    Ok(out)
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Merges implied by a SentencePiece vocabulary (transformers' `generate_merges`): every split
/// of a token into two tokens, best token first (highest `score`), longer left part first.
fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (tok, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(f64, usize, usize, &str, &str)> = tok
            .char_indices()
            .skip(1)
            .map(|(b, _)| tok.split_at(b))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (score, l.chars().count(), r.chars().count(), l, r))
            .collect();
        local.sort_by_key(|m| (vocab[m.3], vocab[m.4]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|m| (m.3.to_string(), m.4.to_string())).collect()
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>> {
    let a = g.get(key).and_then(Value::as_array).with_context(|| format!("metadata {key} is missing"))?;
    a.iter().map(|v| v.as_str().map(str::to_string).with_context(|| format!("{key} holds a non-string"))).collect()
}

fn tokenizer(g: &Gguf, fam: Family) -> Result<(Json, Json)> {
    let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).context("no tokenizer.ggml.model")?;
    let mut tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| g.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_i64).map(|i| i as usize);
    let byte_level = match model {
        "gpt2" => true,
        "llama" => false,
        other => bail!("tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"),
    };
    let gemma = matches!(fam, Family::Gemma | Family::Gemma2 | Family::Gemma3);
    let merges: Vec<(String, String)> = if byte_level {
        let table = crate::hf::tokenizer::byte_level_alphabet();
        let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
        for t in tokens.iter_mut() {
            if !t.chars().all(|c| alphabet.contains(&c)) {
                *t = t.bytes().map(|b| table[b as usize]).collect();
            }
        }
        strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).with_context(|| format!("merge {m:?} is not two tokens")))
            .collect::<Result<_>>()?
    } else if gemma {
        // Gemma files spell whitespace-run tokens with real spaces; the tokenizer looks them
        // up as `▁` runs. Their merges follow the order of the file, not the scores.
        for t in tokens.iter_mut() {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                *t = "\u{2581}".repeat(t.chars().count());
            }
        }
        let order: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
        generate_merges(&tokens, &order)
    } else {
        let scores = g.get("tokenizer.ggml.scores").and_then(Value::as_array).context("no tokenizer.ggml.scores")?;
        let scores: Vec<f64> = scores.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect();
        generate_merges(&tokens, &scores)
    };
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i.into());
    }
    // Control tokens are special; user-defined ones are added tokens matched whole.
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == 3 || ty == 4)
        .map(|(i, (t, &ty))| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": ty == 3}))
        .collect();
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(!byte_level);
    let bos = id("bos_token_id").and_then(|i| tokens.get(i)).cloned();
    let post = match (&bos, add_bos) {
        (Some(b), true) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [id("bos_token_id")], "tokens": [b]}}}),
        _ => Json::Null,
    };
    let merges: Vec<Json> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    let unk = id("unknown_token_id").and_then(|i| tokens.get(i)).cloned();
    let (normalizer, pre, decoder, bpe_extra) = if byte_level {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let pre_name = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let (norm, pre) = match pre_name {
            "default" | "gpt2" | "gpt-2" => (Json::Null, byte_level(true)),
            "smollm" | "starcoder" => (Json::Null, json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]})),
            "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => (Json::Null, json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})),
            "qwen2" | "deepseek-r1-qwen" => (json!({"type": "NFC"}), json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})),
            other => bail!("tokenizer.ggml.pre {other:?} is not supported (default, gpt2, smollm, starcoder, llama-bpe, llama3, qwen2)"),
        };
        (norm, pre, json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}), json!({"byte_fallback": false, "fuse_unk": false}))
    } else if gemma {
        (
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            json!({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}),
            json!({"byte_fallback": true, "fuse_unk": true}),
        )
    } else {
        let prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
        (
            Json::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": if prefix { "first" } else { "never" }, "split": false}),
            json!({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": usize::from(prefix), "stop": 0}]}),
            json!({"byte_fallback": true, "fuse_unk": true}),
        )
    };
    let mut bpe = json!({"type": "BPE", "dropout": null, "unk_token": if byte_level { Json::Null } else { json!(unk) },
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "ignore_merges": false, "vocab": vocab, "merges": merges});
    for (k, v) in bpe_extra.as_object().expect("an object") {
        bpe[k] = v.clone();
    }
    let tokenizer = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": bpe});
    let name = |key: &str| id(key).and_then(|i| tokens.get(i)).cloned();
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("bos_token_id"),
        "eos_token": name("eos_token_id"),
        "unk_token": name("unknown_token_id"),
        "pad_token": name("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": g.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool).unwrap_or(false),
    });
    if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = t.into();
    }
    Ok((tokenizer, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2): HF row (h, half, i) -> GGUF row (h, i, half).
        let (heads, d, cols) = (2usize, 4usize, 3usize);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for half in 0..2 {
                for i in 0..d / 2 {
                    let src = (h * d + half * d / 2 + i) * cols;
                    let dst = (h * d + 2 * i + half) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute(&gguf, heads * d, heads), hf);
    }

    #[test]
    fn merges_from_a_vocabulary_rank_best_tokens_first() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = generate_merges(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("blk.3.ffn_norm.weight", Family::Llama).unwrap(), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(hf_name("blk.3.ffn_norm.weight", Family::Gemma3).unwrap(), "model.layers.3.pre_feedforward_layernorm.weight");
        assert_eq!(hf_name("blk.0.post_ffw_norm.weight", Family::Gemma3).unwrap(), "model.layers.0.post_feedforward_layernorm.weight");
        assert_eq!(hf_name("blk.0.attn_k_norm.weight", Family::Qwen3).unwrap(), "model.layers.0.self_attn.k_norm.weight");
        assert!(hf_name("blk.0.ssm_in.weight", Family::Llama).is_none());
        assert!(family("mamba").unwrap_err().to_string().contains("not supported"));
    }
}

//! A side of a distillation: a model with the text tools of its family (tokenizer, chat
//! template, the token that ends its turn), and the one loader of a recipe's model spec. The
//! student, an SFT model, an evaluated model and an in-process teacher are all sides; a served
//! teacher is a side whose model is a client (`opd::teacher`).
use crate::hf::chat::{ChatTemplate, Message};
use crate::hf::tokenizer::Tokenizer;
use crate::models::Model;
use crate::spec::ModelSpec;
use anyhow::{Context, Result};
use tch::Device;

/// A model with the text tools of its family. The student's model is in this process; the
/// teacher's may be served (`Teacher`).
pub struct Side<M = Model> {
    pub model: M,
    pub tok: Tokenizer,
    pub chat: ChatTemplate,
    /// The token that ends an assistant turn in this model's template.
    pub eot: i64,
    /// The teacher side only: its vocabulary is the student's, so the student's response ids
    /// are scored as they are (same-tokenizer OPD) instead of being re-tokenized from text.
    pub same_vocab: bool,
}

impl Side {
    pub fn device(&self) -> Device {
        self.model.device()
    }
}

/// The token that closes an assistant turn: the first token after the content when the
/// template renders an assistant message, if it is special or an end id; else the first end id.
pub fn end_of_turn(tok: &Tokenizer, chat: &ChatTemplate) -> Result<i64> {
    let fallback = *tok.eos_ids.first().context("the model declares no eos_token_id (config.json or generation_config.json)")?;
    if !chat.has_template() {
        return Ok(fallback);
    }
    let marker = "TOKBRIDGE_ANSWER";
    let msgs = [Message::new("user", "Hi"), Message::new("assistant", marker)];
    let full = chat.render(&msgs, false)?;
    let Some(pos) = full.rfind(marker) else { return Ok(fallback) };
    let suffix = &full[pos + marker.len()..];
    let ids = tok.encode(suffix, false)?;
    Ok(match ids.first() {
        Some(&id) if tok.eos_ids.contains(&id) || tok.pieces().special.get(id as usize) == Some(&true) => id,
        _ => fallback,
    })
}

/// A recipe's model (`spec`) as a side: loaded on its device (`spec.device`, else `device`),
/// with its tokenizer, chat template and end-of-turn token.
pub fn load(spec: &ModelSpec, device: &str) -> Result<Side> {
    let device = crate::device::parse_device(spec.device.as_deref().unwrap_or(device))?;
    let (model, tok, chat) = load_model(spec, device)?;
    let eot = end_of_turn(&tok, &chat).with_context(|| format!("model {}", spec.path))?;
    Ok(Side { model, tok, chat, eot, same_vocab: false })
}

/// A model spec's tokenizer and chat template (with its `chat_template_kwargs`), without its
/// weights: a served teacher's from its `tokenizer`, any other's from its `path`.
pub fn tokenizer_of(spec: &ModelSpec) -> Result<(Tokenizer, ChatTemplate)> {
    let name = spec.tokenizer.as_deref().unwrap_or(&spec.path);
    let dir = crate::hf::hub::resolve_tokenizer(name)?;
    let chat = ChatTemplate::load(&dir)?.with_kwargs(&spec.chat_template_kwargs)?;
    Ok((Tokenizer::load(&dir)?, chat))
}

/// Loads a recipe's model with its tokenizer and chat template.
pub fn load_model(spec: &ModelSpec, device: Device) -> Result<(Model, Tokenizer, ChatTemplate)> {
    let kind = crate::device::parse_dtype(&spec.dtype).context("model.dtype")?;
    let (model, tok) = crate::models::load_spec(&spec.path, device, kind, spec.adapter.as_deref(), spec.lora.as_ref())?;
    let lora = match &model.adapters {
        Some(a) => format!(", LoRA r {} on {}{}", a.spec.r, a.spec.target_modules.join(","), if a.vs.trainable_variables().is_empty() { ", frozen" } else { "" }),
        None => String::new(),
    };
    crate::info!("model {} ({}, {}{lora}) on {}", spec.path, model.family.model_type(), spec.dtype, crate::device::describe(device));
    let chat = ChatTemplate::load(&model.dir)?.with_kwargs(&spec.chat_template_kwargs)?;
    Ok((model, tok, chat))
}

/// The device a model spec runs on (its own `device`, else the recipe's).
pub fn device_of(spec: &ModelSpec, device: &str) -> Result<Device> {
    crate::device::parse_device(spec.device.as_deref().unwrap_or(device))
}

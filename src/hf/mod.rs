//! Hugging Face file formats: safetensors checkpoints, tokenizers, the hub cache.
pub mod chat;
pub mod hub;
pub mod safetensors;
pub mod tokenizer;

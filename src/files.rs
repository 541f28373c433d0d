//! The names of the files that make a directory a Hugging Face model besides its weights:
//! what checkpoints and exports copy, and what an export directory may hold. Shared by
//! `atomic` (which directories it may replace) and `train::checkpoint` (what it copies).
/// The files besides weights that make a directory a loadable model.
pub const MODEL_FILES: [&str; 6] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"];

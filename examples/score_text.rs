//! Library use in a few lines: load a Hugging Face model directory (or a cached hub id) and
//! print the mean log-probability per token of a text.
//!
//!     cargo run --release --example score_text -- tests/fixtures/models/qwen3 "Tom has 12 apples."
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().context("usage: score_text MODEL TEXT")?;
    let text = args.next().context("usage: score_text MODEL TEXT")?;
    let (model, tok) = tokbridge::models::load_spec(&spec, Device::Cpu, Kind::Float, None, None)?;
    let ids = tok.encode(&text, true)?;
    anyhow::ensure!(ids.len() >= 2, "the text needs at least two tokens");
    let _guard = tch::no_grad_guard();
    let input = Tensor::from_slice(&ids).unsqueeze(0);
    let logp = tokbridge::train::token_logprobs(&model.logits(&input), &input);
    let mean = logp.mean(Kind::Float).double_value(&[]);
    println!("{} ({}): {} tokens, mean log-prob {mean:.4}", spec, model.family.model_type(), ids.len());
    Ok(())
}

//! Parsing the `--device` and `--dtype` choices users give, and loading a model spec with its
//! tokenizer in one call.
use crate::hf::{hub, tokenizer::Tokenizer};
use crate::models::{self, Model};
use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" | "gpu" => cuda(0)?,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n)?,
            _ => bail!("unknown device {other:?} (use cpu, cuda, cuda:N or auto)"),
        },
    })
}

fn cuda(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if count == 0 {
        bail!("device cuda was asked for, but libtorch sees no CUDA GPU (a CPU-only libtorch, or no GPU/driver)");
    }
    if n >= count {
        bail!("device cuda:{n} was asked for, but only {count} CUDA device(s) exist");
    }
    Ok(Device::Cuda(n))
}

/// `f32`, `bf16` or `f16` (and their long names).
pub fn parse_dtype(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" | "float32" | "fp32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" | "fp16" => Kind::Half,
        other => bail!("unknown dtype {other:?} (use f32, bf16 or f16)"),
    })
}

/// Resolves `spec` (directory or hub id) and loads the model and its tokenizer.
pub fn load(spec: &str, device: Device, kind: Kind) -> Result<(Model, Tokenizer)> {
    let dir = hub::resolve(spec)?;
    let model = models::load(&dir, device, kind).with_context(|| format!("loading model {spec}"))?;
    let tok = Tokenizer::load(&dir)?;
    Ok((model, tok))
}

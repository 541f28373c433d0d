//! The `tokbridge` command line. Output formats of `score` and `generate` are a stable contract
//! (DESIGN.md section 3); errors go to stderr as one line with a non-zero exit.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use tch::Tensor;
use tokbridge::align::{dpca, show_pieces};
use tokbridge::generate::{generate, Sampling};
use tokbridge::hf::tokenizer::Tokenizer;
use tokbridge::device;

/// The system allocator, with a per-thread budget for untrusted work such as chat templates.
#[global_allocator]
static ALLOCATOR: tokbridge::membound::Bounded = tokbridge::membound::Bounded;

#[derive(Parser)]
#[command(name = "tokbridge", version, about = "Cross-tokenizer on-policy distillation of Hugging Face models on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A model directory in Hugging Face layout, or a hub id (org/name[@revision]) from the local cache.
    #[arg(long)]
    model: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A PEFT LoRA adapter directory applied on top of the model.
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe file: `tokbridge run recipes/sft/tiny.yaml training.steps=20`.
    Run {
        recipe: std::path::PathBuf,
        /// Overrides `key.path=value` (value parsed as YAML).
        overrides: Vec<String>,
        /// Continue the run in the recipe's output_dir from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop after N optimizer steps of this invocation, as an interruption would.
        #[arg(long)]
        stop_after: Option<usize>,
        /// Pipelines: redo stages that finished before.
        #[arg(long)]
        fresh: bool,
        /// Start N local processes (ranks) that train data-parallel over Gloo, as torchrun
        /// --nproc-per-node N would.
        #[arg(long, default_value_t = 1)]
        nproc: usize,
    },
    /// What a recipe's models will see: its first examples rendered with each model's chat
    /// template, loss tokens marked ⟦so⟧ (tokenizers only; nothing trains).
    Preview {
        recipe: std::path::PathBuf,
        /// Overrides `key.path=value`, as for `run`.
        overrides: Vec<String>,
        /// How many examples.
        #[arg(long, default_value_t = 2)]
        n: usize,
    },
    /// Compare runs: report.md with the final table and accuracy plots (PNG and SVG).
    Compare {
        runs: Vec<std::path::PathBuf>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Align two tokenizations of TEXT into DPCA chunks and show them side by side.
    Align {
        /// Student model or tokenizer directory (or hub id).
        #[arg(long)]
        student: String,
        /// Teacher model or tokenizer directory (or hub id).
        #[arg(long)]
        teacher: String,
        #[arg(long)]
        text: String,
        /// Mask chunks with more than K tokens on a side.
        #[arg(long, default_value_t = 6)]
        max_chunk_tokens: usize,
        /// Print {"chunks": [{"student": [ids], "teacher": [ids], "masked": bool}, ...]}.
        #[arg(long)]
        json: bool,
    },
    /// Write a run's latest checkpoint (or any model) as a Hugging Face model directory.
    Export {
        /// A run directory or a model (directory or hub id).
        src: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// f32, bf16 or f16 (default: the dtype config.json declares).
        #[arg(long)]
        dtype: Option<String>,
        /// Shard above this many bytes per file.
        #[arg(long, default_value_t = 5_000_000_000)]
        max_shard_bytes: u64,
        /// Where to load and convert the weights: cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// For a LoRA run or adapter: write the merged full model instead of the adapter.
        #[arg(long)]
        merge: bool,
        /// Replace a model folder at --out that tokbridge did not write (one without its
        /// .tokbridge-export marker, e.g. from save_pretrained).
        #[arg(long)]
        force: bool,
    },
    /// Convert a GGUF file (llama.cpp) into a Hugging Face model directory.
    Convert {
        #[arg(long)]
        gguf: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        /// f32, bf16 or f16 for the dequantized weights.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Replace a model folder at --out that tokbridge did not write.
        #[arg(long)]
        force: bool,
    },
    /// Log-probability of every token of TEXT given the tokens before it.
    Score {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: String,
        /// Print {"ids": [...], "logprobs": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Continue PROMPT with the KV cache.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        top_k: i64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep going past end tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Print {"ids": [...], "new_ids": [...], "text": "..."}.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    device::keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        // One line: the chain of contexts, outermost first.
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn open(args: &ModelArgs) -> Result<(tokbridge::models::Model, tokbridge::hf::tokenizer::Tokenizer)> {
    let device = device::parse_device(&args.device)?;
    let kind = device::parse_dtype(&args.dtype)?;
    tokbridge::models::load_spec(&args.model, device, kind, args.adapter.as_deref(), None)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { recipe, overrides, resume, stop_after, fresh, nproc } => {
            let r = tokbridge::recipes::recipe::Recipe::load(&recipe, &overrides)?;
            tokbridge::recipes::recipe::check_var_overrides(&recipe, &overrides)?;
            if nproc > 1 {
                // The same command for each rank, less --nproc.
                let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                if let Some(i) = args.iter().position(|a| a == "--nproc") {
                    args.drain(i..(i + 2).min(args.len()));
                }
                args.retain(|a| !a.to_string_lossy().starts_with("--nproc="));
                return tokbridge::train::dist::launch(nproc, &args);
            }
            anyhow::ensure!(nproc == 1, "--nproc must be at least 1");
            anyhow::ensure!(stop_after != Some(0), "--stop-after must be at least 1 (it counts the optimizer steps this invocation takes)");
            use tokbridge::recipes::recipe::Recipe;
            let _running = matches!(r, Recipe::Pipeline(_) | Recipe::Sweep(_)).then(|| tokbridge::recipes::pipeline::Nesting::enter(&recipe)).transpose()?;
            tokbridge::recipes::run(&r, &tokbridge::train::run::RunOptions { resume, stop_after, fresh })?;
        }
        Command::Preview { recipe, overrides, n } => {
            let r = tokbridge::recipes::recipe::Recipe::load(&recipe, &overrides)?;
            print!("{}", tokbridge::recipes::preview::preview(&r, n)?);
        }
        Command::Compare { runs, out } => {
            anyhow::ensure!(!runs.is_empty(), "compare needs at least one run directory");
            tokbridge::recipes::compare::from_dirs(&runs, &out)?;
        }
        Command::Align { student, teacher, text, max_chunk_tokens, json } => {
            anyhow::ensure!(max_chunk_tokens > 0, "--max-chunk-tokens must be positive");
            let load = |spec: &str| -> Result<Tokenizer> { Tokenizer::load(&tokbridge::hf::hub::resolve_tokenizer(spec)?) };
            let (st, tt) = (load(&student)?, load(&teacher)?);
            let (sids, sp) = st.text_pieces(&text)?;
            let (tids, tp) = tt.text_pieces(&text)?;
            let chunks = dpca(&sp, &tp, max_chunk_tokens);
            if json {
                let out: Vec<_> = chunks
                    .iter()
                    .map(|c| json!({ "student": sids[c.student.clone()], "teacher": tids[c.teacher.clone()], "masked": c.is_masked() }))
                    .collect();
                println!("{}", json!({ "chunks": out }));
            } else {
                println!("{:>5}  {:<40}  {:<40}  ", "chunk", "student pieces", "teacher pieces");
                for (i, c) in chunks.iter().enumerate() {
                    println!("{i:>5}  {:<40}  {:<40}  {}", show_pieces(&sp[c.student.clone()]), show_pieces(&tp[c.teacher.clone()]), c.label(max_chunk_tokens));
                }
                let one = chunks.iter().filter(|c| !c.is_masked() && c.student.len() == 1 && c.teacher.len() == 1).count();
                let masked: usize = chunks.iter().filter(|c| c.is_masked()).map(|c| c.student.len()).sum();
                println!("{} chunks ({one} 1:1); {} student / {} teacher tokens; {masked} student tokens masked", chunks.len(), sids.len(), tids.len());
            }
        }
        Command::Export { src, out, dtype, max_shard_bytes, device, merge, force } => {
            let kind = dtype.as_deref().map(device::parse_dtype).transpose()?;
            tokbridge::export::export(&src, &out, kind, max_shard_bytes, device::parse_device(&device)?, merge, force)?;
            eprintln!("exported {src} to {}", out.display());
        }
        Command::Convert { gguf, out, dtype, force } => {
            tokbridge::gguf::convert::convert(&gguf, &out, device::parse_dtype(&dtype)?, force)?;
            eprintln!("converted {} to {}", gguf.display(), out.display());
        }
        Command::Score { model, text, json } => {
            let (m, tok) = open(&model)?;
            let ids = tok.encode(&text, true)?;
            anyhow::ensure!(ids.len() >= 2, "text {text:?} has {} token(s); scoring needs at least 2", ids.len());
            m.check_positions(ids.len())?;
            let _guard = tch::no_grad_guard();
            let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(m.device());
            let lp = tokbridge::train::token_logprobs(&m.logits(&input), &input).squeeze_dim(0);
            let logprobs = Vec::<f32>::try_from(lp.to_device(tch::Device::Cpu)).context("reading log-probs")?;
            anyhow::ensure!(logprobs.iter().all(|x| x.is_finite()), "{}: the log-probs are NaN or infinite (the weights, the adapter or config.json's numbers make the model compute nothing)", model.model);
            if json {
                println!("{}", json!({ "ids": ids, "logprobs": logprobs }));
            } else {
                let total: f64 = logprobs.iter().map(|&x| x as f64).sum();
                for (i, lp) in logprobs.iter().enumerate() {
                    let piece = tok.inner.id_to_token(ids[i + 1] as u32).unwrap_or_default();
                    println!("{:>6} {:>10.4}  {piece:?}", ids[i + 1], lp);
                }
                println!("total {total:.4} nats over {} tokens, mean {:.4}", logprobs.len(), total / logprobs.len() as f64);
            }
        }
        Command::Generate { model, prompt, max_new_tokens, temperature, top_k, top_p, seed, ignore_eos, json } => {
            let s = Sampling { max_new_tokens, temperature, top_k, top_p, ignore_eos, seed, entropy: false };
            s.check().map_err(|e| {
                let m = e.to_string();
                let (field, rest) = m.split_once(' ').unwrap_or((&m, ""));
                anyhow::anyhow!("--{} {rest}", field.replace('_', "-"))
            })?;
            let (m, tok) = open(&model)?;
            let ids = tok.encode(&prompt, true)?;
            let g = generate(&m, std::slice::from_ref(&ids), &s, &tok.eos_ids, tok.pad_id)?.remove(0);
            let text = tok.decode(&g.new_ids, true)?;
            if json {
                println!("{}", json!({ "ids": ids, "new_ids": g.new_ids, "text": text }));
            } else {
                println!("{prompt}{text}");
            }
        }
    }
    Ok(())
}

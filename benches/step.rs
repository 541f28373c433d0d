//! The Rust side of the benchmarks against PyTorch/transformers (benches/python/step.py does
//! the same work there; benches/compare.py runs both in alternation and prints the ratios).
//!
//!   cargo bench --bench step -- train  [--hidden 384 --layers 8 ...]   forward + backward + AdamW
//!   cargo bench --bench step -- train --full-logits                     the same on unchunked logits
//!   cargo bench --bench step -- sample                                  8 prompts, 128 new tokens
//!   cargo bench --bench step -- train --lora 16                         LoRA rank 16 on every projection
//!   cargo bench --bench step -- sample --model DIR --batch 1            a real model (float32)
//!   cargo bench --bench step -- sample --model DIR --device cuda --dtype bf16   on a GPU
//!
//! The model is a randomly initialised llama (about 30M parameters by default: hidden 384,
//! 8 layers, 6 heads / 2 KV heads, MLP 1536, vocabulary 32000, tied), float32, on the CPU with
//! `--threads` threads. Prints one JSON line: median and spread of the timed repetitions, the
//! throughput and the process's peak resident memory. Training goes through
//! `Model::backward_tokens` as the SFT recipe does (the head in chunks of positions), with the
//! allocator set up as the `tokbridge` binary sets it (`device::keep_freed_memory`).
//! `--device cuda` and `--dtype bf16` run it on a GPU (timings end with a device synchronise);
//! sampling then also reports the decode forward alone (no host round trip per token).
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tokbridge::generate::{generate, Sampling};
use tokbridge::nn::attention::Context;
use tokbridge::spec::OptimizerSpec;
use tokbridge::train::{optim::AdamW, token_logprobs};

pub struct Args {
    mode: String,
    hidden: i64,
    layers: i64,
    heads: i64,
    kv_heads: i64,
    inter: i64,
    vocab: i64,
    batch: i64,
    seq: i64,
    new_tokens: usize,
    reps: usize,
    threads: i32,
    /// Train on the full logits (`Model::backward`) instead of the chunked head (`backward_tokens`).
    full_logits: bool,
    /// `Model::logits_per_chunk` (0: the default).
    chunk: i64,
    /// LoRA rank on all seven projections, base frozen (0: full training).
    lora: i64,
    /// A model directory to load instead of the random llama.
    model: Option<String>,
    device: Device,
    kind: Kind,
}

pub fn parse(argv: &[String]) -> Args {
    let mut a = Args { mode: "train".into(), hidden: 384, layers: 8, heads: 6, kv_heads: 2, inter: 1536, vocab: 32000, batch: 8, seq: 256, new_tokens: 128, reps: 10, threads: 2, full_logits: false, chunk: 0, lora: 0, model: None, device: Device::Cpu, kind: Kind::Float };
    let mut it = argv.iter().filter(|x| *x != "--bench");
    while let Some(k) = it.next() {
        if k == "--model" {
            a.model = Some(it.next().expect("a directory after --model").clone());
            continue;
        }
        if k == "--device" {
            a.device = tokbridge::device::parse_device(it.next().expect("a device after --device")).unwrap();
            continue;
        }
        if k == "--sdp" {
            // The attention kernels SDPA may use on CUDA: a comma list of flash, efficient, math, cudnn.
            let on = it.next().expect("a list after --sdp").clone();
            let has = |n: &str| on.split(',').any(|x| x == n);
            tokbridge::ops::sdp_backends(has("flash"), has("efficient"), has("math"), has("cudnn"));
            continue;
        }
        if k == "--dtype" {
            a.kind = tokbridge::device::parse_dtype(it.next().expect("a dtype after --dtype")).unwrap();
            continue;
        }
        let mut v = || it.next().expect("a value after the flag").parse::<i64>().expect("an integer");
        match k.as_str() {
            "train" | "sample" => a.mode = k.clone(),
            "--full-logits" => a.full_logits = true,
            "--hidden" => a.hidden = v(),
            "--layers" => a.layers = v(),
            "--heads" => a.heads = v(),
            "--kv-heads" => a.kv_heads = v(),
            "--inter" => a.inter = v(),
            "--vocab" => a.vocab = v(),
            "--batch" => a.batch = v(),
            "--seq" => a.seq = v(),
            "--new-tokens" => a.new_tokens = v() as usize,
            "--reps" => a.reps = v() as usize,
            "--threads" => a.threads = v() as i32,
            "--logits-per-chunk" => a.chunk = v(),
            "--lora" => a.lora = v(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn model(a: &Args) -> tokbridge::models::Model {
    if let Some(dir) = &a.model {
        return tokbridge::models::load_spec(dir, a.device, a.kind, None, None).unwrap().0;
    }
    let dir = std::env::temp_dir().join(format!("tokbridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.inter,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let spec = tokbridge::nn::lora::LoraSpec {
        r: a.lora.max(1),
        alpha: 2.0 * a.lora.max(1) as f64,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec(),
        use_rslora: false,
        dropout: 0.0,
        modules_to_save: vec![],
    };
    let (mut m, adapters) = if a.lora > 0 {
        let (built, vs) = tokbridge::nn::lora::with_adapters(&spec, a.device, || tokbridge::models::build(&dir, a.device));
        (built.unwrap().0, Some(vs))
    } else {
        (tokbridge::models::build(&dir, a.device).unwrap().0, None)
    };
    std::fs::remove_dir_all(&dir).unwrap();
    tch::manual_seed(0);
    let _g = tch::no_grad_guard();
    for (name, mut t) in m.vs.variables() {
        if name.ends_with("norm.weight") {
            let _ = t.fill_(1.0);
        } else {
            t.copy_(&(Tensor::randn(t.size(), (Kind::Float, a.device)) * 0.02));
        }
    }
    if a.kind != Kind::Float {
        m.vs.set_kind(a.kind);
    }
    if let Some(vs) = adapters {
        m.vs.freeze();
        m.adapters = Some(tokbridge::models::Adapters { spec, vs });
    }
    m
}

fn main() {
    tokbridge::device::keep_freed_memory();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = parse(&argv);
    tch::set_num_threads(a.threads);
    println!("{}", run(&a));
}

/// Runs the benchmark `a` describes; its result as one JSON object.
pub fn run(a: &Args) -> serde_json::Value {
    let mut m = model(a);
    m.logits_per_chunk = (a.chunk > 0).then_some(a.chunk);
    let params: i64 = m.vs.variables().values().map(|t| t.numel() as i64).sum();
    let mut times = Vec::new();
    let tokens;
    match a.mode.as_str() {
        "train" => {
            let spec = OptimizerSpec { lr: 1e-4, weight_decay: 0.01, betas: [0.9, 0.999], eps: 1e-8, grad_clip: None };
            let mut opt = AdamW::new(m.trainable(), &spec);
            let ids = Tensor::randint(a.vocab, [a.batch, a.seq], (Kind::Int64, a.device));
            let mut parts = [0f64; 2];
            for rep in 0..a.reps + 2 {
                let t0 = Instant::now();
                opt.zero_grad();
                let n = (a.batch * (a.seq - 1)) as f64;
                if a.full_logits {
                    m.backward(&ids, false, |logits| Ok((-token_logprobs(logits, &ids).sum(Kind::Float) / n, ()))).unwrap();
                } else {
                    m.backward_tokens(&ids, 0, false, |lp, _| Ok(-lp.sum(Kind::Float) / n)).unwrap();
                }
                let t1 = Instant::now();
                opt.step(1e-4).unwrap();
                sync(a.device);
                if rep >= 2 {
                    times.push(t0.elapsed().as_secs_f64());
                    parts[0] += (t1 - t0).as_secs_f64();
                    parts[1] += t1.elapsed().as_secs_f64();
                }
            }
            let n = a.reps as f64;
            eprintln!("per step: forward and backward {:.3} s, AdamW {:.3} s", parts[0] / n, parts[1] / n);
            tokens = a.batch * a.seq;
        }
        "sample" => {
            let mut rng = tokbridge::data::Rng(1);
            let vocab = m.config["vocab_size"].as_i64().unwrap_or(a.vocab).min(32000) as u64;
            let prompts: Vec<Vec<i64>> = (0..a.batch).map(|_| (0..16).map(|_| (rng.next_u64() % vocab) as i64).collect()).collect();
            let s = Sampling { max_new_tokens: a.new_tokens, temperature: 0.0, ignore_eos: true, ..Sampling::default() };
            for rep in 0..a.reps.min(5) + 1 {
                let t0 = Instant::now();
                let g = generate(&m, &prompts, &s, &[], 0).unwrap();
                assert!(g.iter().all(|x| x.new_ids.len() == a.new_tokens));
                if rep >= 1 {
                    times.push(t0.elapsed().as_secs_f64());
                } else {
                    eprintln!("first call (every shape new to the process): {:.2} ms per step", 1e3 * t0.elapsed().as_secs_f64() / a.new_tokens as f64);
                }
            }
            tokens = a.batch * a.new_tokens as i64;
            // The decode forward alone: the same steps with no host round trip per token (greedy
            // on the device), so the gap to the loop above is what sampling's bookkeeping costs.
            let _g = tch::no_grad_guard();
            let ids = Tensor::from_slice(&prompts.concat()).view([a.batch, 16]).to_device(a.device);
            let mut cache = m.new_cache();
            let last = |logits: Tensor| logits.select(1, -1).argmax(-1, false).unsqueeze(1);
            let mut next = last(m.forward(&ids, &Context::dense(a.batch, 16, 0, a.device), Some(&mut cache)));
            sync(a.device);
            let t0 = Instant::now();
            for step in 0..a.new_tokens as i64 - 1 {
                next = last(m.forward(&next, &Context::dense(a.batch, 1, 16 + step, a.device), Some(&mut cache)));
            }
            sync(a.device);
            eprintln!("decode forward alone: {:.2} ms per step; the whole loop {:.2} ms per step", 1e3 * t0.elapsed().as_secs_f64() / (a.new_tokens - 1) as f64, 1e3 * times.iter().copied().fold(f64::INFINITY, f64::min) / a.new_tokens as f64);
        }
        other => panic!("unknown mode {other} (train, sample)"),
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
    serde_json::json!({
        "side": "tokbridge", "mode": a.mode, "params": params, "median_s": median,
        "min_s": times[0], "max_s": times[times.len() - 1], "tokens_per_s": tokens as f64 / median,
        "peak_rss_gib": tokbridge::device::peak_memory_gib(Device::Cpu),
        "peak_device_gib": tokbridge::device::peak_memory_gib(a.device),
    })
}

/// Waits for the GPU's queued work (a no-op on the CPU).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

//! The `teacher_responses` recipe: the teacher answers every training prompt with batched
//! KV-cache sampling, writing `responses.jsonl` (an SFT dataset in the input's own shape) and
//! `stats.json` (prompts, generated tokens, wall time). The teacher may be served
//! (`teacher.server`): the server then samples each answer from the same prompt ids. Over
//! several processes each rank answers every `world`-th prompt of a batch and rank 0 writes
//! the batch in order. Resumable: finished lines are kept and
//! the batches after them are generated with the seeds they would have had.
use crate::data;
use crate::generate::{generate, Sampling};
use crate::recipes::opd::teacher::Engine;
use crate::train::dist::Dist;
use crate::train::metrics::progress;
use anyhow::{Context, Result};
use serde_json::json;
use std::io::Write;
use std::time::Instant;
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `recipe: teacher_responses`: the teacher answers every prompt; the result is an SFT dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherResponses {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    /// Where the JSONL dataset goes (and its progress, for resuming).
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub teacher: ModelSpec,
    pub data: PromptsSpec,
    #[serde(default)]
    pub sampling: SamplingSpec,
    #[serde(default = "d_eval_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub logging: LoggingSpec,
}

impl crate::spec::Schema for TeacherResponses {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        self.teacher.validate("teacher", true)?;
        validate_sampling(&self.sampling, "sampling")?;
        ensure!(self.batch_size > 0, "batch_size must be positive");
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

pub fn run(r: &TeacherResponses, dist: Option<&Dist>) -> Result<()> {
    let (rank, world, main) = dist.map_or((0, 1, true), |d| (d.rank, d.world, d.is_main()));
    let teacher = crate::recipes::opd::teacher::load_teacher(&r.teacher, &r.device)?;
    let (tok, chat) = (&teacher.tok, &teacher.chat);
    let skip = r.data.skip;
    let mut examples = data::read(&r.data.prompts, r.data.max_examples.map(|m| m + skip))?;
    anyhow::ensure!(examples.len() > skip, "data.skip {skip} leaves no prompts of the {} in {}", examples.len(), r.data.prompts);
    examples.drain(..skip);
    let out_path = r.output_dir.join("responses.jsonl");
    let stats_path = r.output_dir.join("stats.json");

    // Rank 0 keeps complete lines from an earlier, interrupted run (dropping a torn last line)
    // and tells the other ranks how far it got.
    let (mut done, mut generated, mut elapsed, mut file) = (0, 0u64, 0.0, None);
    if main {
        let existing = std::fs::read_to_string(&out_path).unwrap_or_default();
        let done_lines: Vec<&str> = existing.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
        done = if done_lines.len() >= examples.len() { examples.len() } else { done_lines.len() - done_lines.len() % r.batch_size };
        let kept: String = done_lines[..done].concat();
        crate::atomic::write(&out_path, &kept)?;
        let prior: serde_json::Value = std::fs::read_to_string(&stats_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(json!({}));
        (generated, elapsed) = if done == 0 {
            (0, 0.0)
        } else if prior["prompts"].as_u64() == Some(done as u64) {
            (prior["generated_tokens"].as_u64().unwrap_or(0), prior["time_s"].as_f64().unwrap_or(0.0))
        } else {
            // Killed between writing lines and stats: recount the kept responses' tokens.
            let kept = data::read_jsonl(&out_path, None)?;
            let mut n = 0u64;
            for ex in &kept {
                n += tok.encode(ex.response().unwrap_or(""), false)?.len() as u64;
            }
            (n, prior["time_s"].as_f64().unwrap_or(0.0))
        };
        if done > 0 {
            crate::info!("teacher_responses: {done} of {} prompts already answered in {}", examples.len(), out_path.display());
        }
        file = Some(std::fs::OpenOptions::new().append(true).open(&out_path).with_context(|| format!("opening {}", out_path.display()))?);
    }
    if let Some(d) = dist {
        done = d.broadcast(&[done as f64], "sharing how many prompts are answered")?[0] as usize;
    }

    let bar = progress(examples.len() as u64, "teacher", r.logging.progress && main);
    bar.set_position(done as u64);
    for (b, batch) in examples.chunks(r.batch_size).enumerate().skip(done / r.batch_size) {
        let started = Instant::now();
        // This rank's share of the batch (all of it in one process).
        let mine: Vec<usize> = (rank..batch.len()).step_by(world).collect();
        let prompts: Vec<Vec<i64>> = mine.iter().map(|&i| data::prompt_ids(tok, chat, batch[i].prompt())).collect::<Result<_>>()?;
        let s = Sampling {
            max_new_tokens: r.sampling.max_new_tokens,
            temperature: r.sampling.temperature,
            top_k: r.sampling.top_k,
            top_p: r.sampling.top_p,
            ignore_eos: false,
            seed: r.seed.wrapping_add(b as u64),
            entropy: false,
        };
        // The answers' texts and generated token counts, from the model here or its server.
        let answers: Vec<(String, u64)> = match &teacher.model {
            _ if prompts.is_empty() => vec![],
            Engine::Local(model) => generate(model, &prompts, &s, &tok.eos_ids, tok.pad_id)?.iter().map(|g| Ok((tok.decode(&g.new_ids, true)?, g.new_ids.len() as u64))).collect::<Result<_>>()?,
            Engine::Served(server) => server.generate(&prompts, &s, tok)?,
        };
        let mut lines: Vec<(usize, String, u64)> = Vec::with_capacity(mine.len());
        for (&i, (response, n)) in mine.iter().zip(answers) {
            let line = match batch[i].prompt() {
                [m] if m.role == "user" => json!({ "prompt": m.content, "response": response }),
                msgs => {
                    let mut all = serde_json::to_value(msgs)?;
                    all.as_array_mut().expect("messages are an array").push(json!({"role": "assistant", "content": response}));
                    json!({ "messages": all })
                }
            };
            lines.push((i, line.to_string(), n));
        }
        // Rank 0 gathers the batch's answers in order and writes them.
        if let Some(d) = dist {
            let Some(parts) = d.gather(&format!("teacher_responses/batch-{b}"), &serde_json::to_vec(&lines)?)? else { continue };
            lines = parts.iter().map(|p| serde_json::from_slice::<Vec<(usize, String, u64)>>(p)).collect::<std::result::Result<Vec<_>, _>>()?.concat();
            lines.sort_by_key(|l| l.0);
        }
        let Some(file) = file.as_mut() else { continue };
        let text: String = lines.iter().map(|(_, l, _)| format!("{l}\n")).collect();
        generated += lines.iter().map(|l| l.2).sum::<u64>();
        file.write_all(text.as_bytes()).and_then(|_| file.flush()).with_context(|| format!("writing {}", out_path.display()))?;
        elapsed += started.elapsed().as_secs_f64();
        let answered = (b * r.batch_size + batch.len()) as u64;
        let stats = json!({ "prompts": answered, "generated_tokens": generated, "time_s": elapsed });
        crate::atomic::write(&stats_path, serde_json::to_string_pretty(&stats)?)?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_with_message("done");
    if main {
        crate::info!("teacher_responses: wrote {} ({} generated tokens)", out_path.display(), generated);
    }
    Ok(())
}

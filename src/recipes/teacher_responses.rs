//! The `teacher_responses` recipe: the teacher answers every training prompt with batched
//! KV-cache sampling, writing `responses.jsonl` (an SFT dataset in the input's own shape) and
//! `stats.json` (prompts, generated tokens, wall time). The teacher may be served
//! (`teacher.server`): the server then samples each answer from the same prompt ids. Resumable: finished lines are kept and
//! the batches after them are generated with the seeds they would have had.
use crate::data;
use crate::generate::{generate, Sampling};
use crate::recipes::opd::Engine;
use crate::recipe::TeacherResponses;
use crate::train::metrics::progress;
use anyhow::{Context, Result};
use serde_json::json;
use std::io::Write;
use std::time::Instant;

pub fn run(r: &TeacherResponses) -> Result<()> {
    let teacher = crate::recipes::opd::load_teacher(&r.teacher, &r.device)?;
    let (tok, chat) = (&teacher.tok, &teacher.chat);
    let examples = data::read_jsonl(&r.data.prompts, r.data.max_examples)?;
    let out_path = r.output_dir.join("responses.jsonl");
    let stats_path = r.output_dir.join("stats.json");

    // Keep complete lines from an earlier, interrupted run; drop a torn last line.
    let existing = std::fs::read_to_string(&out_path).unwrap_or_default();
    let done_lines: Vec<&str> = existing.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
    let done = if done_lines.len() >= examples.len() { examples.len() } else { done_lines.len() - done_lines.len() % r.batch_size };
    let kept: String = done_lines[..done].concat();
    crate::atomic::write(&out_path, &kept)?;
    let prior: serde_json::Value = std::fs::read_to_string(&stats_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(json!({}));
    let (mut generated, mut elapsed) = if done == 0 {
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
        eprintln!("teacher_responses: {done} of {} prompts already answered in {}", examples.len(), out_path.display());
    }

    let mut file = std::fs::OpenOptions::new().append(true).open(&out_path).with_context(|| format!("opening {}", out_path.display()))?;
    let bar = progress(examples.len() as u64, "teacher", r.logging.progress);
    bar.set_position(done as u64);
    for (b, batch) in examples.chunks(r.batch_size).enumerate().skip(done / r.batch_size) {
        let started = Instant::now();
        let prompts: Vec<Vec<i64>> = batch.iter().map(|e| data::prompt_ids(tok, chat, e.prompt())).collect::<Result<_>>()?;
        let s = Sampling {
            max_new_tokens: r.sampling.max_new_tokens,
            temperature: r.sampling.temperature,
            top_k: r.sampling.top_k,
            top_p: r.sampling.top_p,
            ignore_eos: false,
            seed: r.seed.wrapping_add(b as u64),
        };
        // The answers' texts and generated token counts, from the model here or its server.
        let answers: Vec<(String, u64)> = match &teacher.model {
            Engine::Local(model) => generate(model, &prompts, &s, &tok.eos_ids, tok.pad_id)?.iter().map(|g| Ok((tok.decode(&g.new_ids, true)?, g.new_ids.len() as u64))).collect::<Result<_>>()?,
            Engine::Served(server) => server.generate(&prompts, &s, tok)?,
        };
        let mut lines = String::new();
        for (ex, (response, n)) in batch.iter().zip(answers) {
            generated += n;
            let line = match ex.prompt() {
                [m] if m.role == "user" => json!({ "prompt": m.content, "response": response }),
                msgs => {
                    let mut all = serde_json::to_value(msgs)?;
                    all.as_array_mut().expect("messages are an array").push(json!({"role": "assistant", "content": response}));
                    json!({ "messages": all })
                }
            };
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        file.write_all(lines.as_bytes()).and_then(|_| file.flush()).with_context(|| format!("writing {}", out_path.display()))?;
        elapsed += started.elapsed().as_secs_f64();
        let answered = (b * r.batch_size + batch.len()) as u64;
        let stats = json!({ "prompts": answered, "generated_tokens": generated, "time_s": elapsed });
        crate::atomic::write(&stats_path, serde_json::to_string_pretty(&stats)?)?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_with_message("done");
    eprintln!("teacher_responses: wrote {} ({} generated tokens)", out_path.display(), generated);
    Ok(())
}

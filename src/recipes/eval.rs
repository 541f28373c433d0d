//! Held-out evaluation with pluggable scorers: exact-match accuracy of the final answer under
//! greedy decoding, avg@k under sampling, and mean NLL / perplexity of reference responses.
//! Also the `eval` recipe, which runs them once on one model. Every evaluation that decodes
//! greedily writes what the model wrote to `generations/step-NNNNNN.jsonl` in its run directory.
use crate::data::{self, Example};
use crate::recipes::opd::diagnostics::held_out_gap;
use crate::recipes::opd::rollout::{Plan, Rollout};
use crate::recipes::opd::teacher::{load_teacher, Teacher};
use crate::recipes::side::{self, Side};
use crate::generate::{generate, Sampling};
use crate::hf::chat::ChatTemplate;
use crate::hf::tokenizer::Tokenizer;
use crate::models::Model;
use crate::spec::{EvalSpec, Scorer};
use crate::train::dist::Dist;
use crate::train::metrics::{self, Values};
use crate::train::{token_logprobs, Batch};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Kind;
use crate::spec::*;
use std::path::PathBuf;

/// `recipe: eval`: held-out evaluation of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// `${name}` placeholders substituted in the recipe text (defaults; overridable as `vars.name=...`).
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    pub recipe: String,
    #[serde(default)]
    pub seed: u64,
    pub output_dir: PathBuf,
    #[serde(default = "d_device")]
    pub device: String,
    pub model: ModelSpec,
    /// Prompts and reference responses.
    pub data: Dataset,
    pub eval: EvalSpec,
    #[serde(default)]
    pub logging: LoggingSpec,
}

impl crate::spec::Schema for Eval {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        self.model.validate("model", false)?;
        if let Some(t) = &self.eval.teacher {
            t.validate("eval.teacher", true)?;
        }
        validate_eval(&self.eval, true)?;
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}


/// The final answer of a worked solution: the text after the last `####`, else the content of
/// the last `\boxed{...}`; commas, `$` and a trailing period removed.
pub fn final_answer(text: &str) -> Option<String> {
    let raw = if let Some(i) = text.rfind("####") {
        text[i + 4..].lines().next().unwrap_or("").to_string()
    } else {
        let start = text.rfind("\\boxed{")? + "\\boxed{".len();
        let mut depth = 1;
        let mut end = None;
        for (i, c) in text[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(start + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        text[start..end?].to_string()
    };
    let cleaned: String = raw.trim().chars().filter(|c| *c != ',' && *c != '$').collect();
    let cleaned = cleaned.trim().trim_end_matches('.').trim().to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Whether two final answers agree (numerically when both are numbers).
pub fn answers_match(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// One greedy generation of an evaluation, as written to `generations/step-NNNNNN.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generated {
    /// The content of the conversation's last prompt message.
    pub prompt: String,
    pub response: String,
    /// The dataset's response, when it has one.
    pub reference: Option<String>,
    /// The final answer extracted from `response`.
    pub answer: Option<String>,
    pub correct: bool,
}

/// The results of `evaluate`: (metric name, value) pairs and the greedy generations.
pub struct Evaluation {
    pub values: Values,
    pub generations: Vec<Generated>,
}

impl Evaluation {
    /// Writes the generations to `run_dir/generations/step-NNNNNN.jsonl` (nothing when there
    /// are none), through a temporary file renamed into place.
    pub fn write_generations(&self, run_dir: &Path, step: usize) -> Result<()> {
        if self.generations.is_empty() {
            return Ok(());
        }
        let dir = run_dir.join("generations");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::new();
        for g in &self.generations {
            text.push_str(&serde_json::to_string(g)?);
            text.push('\n');
        }
        let path = dir.join(format!("step-{step:06}.jsonl"));
        crate::atomic::write(&path, text)
    }
}

/// The generations an evaluation wrote at `step` (`generations/step-NNNNNN.jsonl`), if any.
pub fn read_generations(run_dir: &Path, step: usize) -> Result<Option<Vec<Generated>>> {
    let path = run_dir.join("generations").join(format!("step-{step:06}.jsonl"));
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows = text.lines().enumerate().map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))).collect::<Result<_>>()?;
    Ok(Some(rows))
}

fn correct(generated: &str, reference: Option<&str>) -> bool {
    match (final_answer(generated), reference.and_then(final_answer)) {
        (Some(g), Some(r)) => answers_match(&g, &r),
        _ => false,
    }
}

/// Whether a response says what the reference says except for its numbers: the two are equal
/// with every run of digits replaced by one `#`. It tells a student that follows the format
/// and copies the prompt's names and objects (its errors are in the numbers) from one that
/// does not, which exact match of the final answer cannot see.
pub fn same_words(response: &str, reference: &str) -> bool {
    fn mask(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.trim().chars() {
            if !c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('#') {
                out.push('#');
            }
        }
        out
    }
    mask(response) == mask(reference)
}

/// Runs every scorer of `spec` on `examples`. Returns (metric name, value) pairs:
/// `eval/exact_match`, `eval/response_tokens`, `eval/words_match` (`same_words`, when listed), `eval/avg@k`
/// with `eval/distinct_correct@k` (distinct correct responses per prompt among the k) and
/// `eval/sample_entropy` (nats per sampled token, at temperature 1),
/// `eval/nll`, `eval/ppl`, and the greedy generations of `exact_match`. With `dist` each rank
/// scores every `world`-th example, the counts are summed over the ranks, and rank 0 alone gets
/// the generations (in the examples' order).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(model: &Model, tok: &Tokenizer, chat: &ChatTemplate, examples: &[Example], spec: &EvalSpec, seed: u64, show: bool, dist: Option<&Dist>) -> Result<Evaluation> {
    let all = &examples[..spec.max_examples.unwrap_or(examples.len()).min(examples.len())];
    let n = all.len();
    // Over several processes each rank scores every `world`-th example; the counts are summed
    // over the ranks and rank 0 gathers the generations.
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank, d.world));
    let mine: Vec<usize> = (rank..n).step_by(world).collect();
    let examples: Vec<Example> = mine.iter().map(|&i| all[i].clone()).collect();
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| data::prompt_ids(tok, chat, e.prompt())).collect::<Result<_>>()?;
    // Per scorer, in order, the sums its values are made of.
    let mut sums: Vec<f64> = Vec::new();
    let mut generations: Vec<(usize, Generated)> = Vec::new();
    for scorer in &spec.scorers {
        match scorer {
            Scorer::ExactMatch => {
                let s = Sampling { max_new_tokens: spec.max_new_tokens, temperature: 0.0, seed, ..Sampling::default() };
                let bar = metrics::progress(examples.len() as u64, "eval", show);
                let (mut hits, mut tokens, mut words) = (0usize, 0usize, 0usize);
                for (c, (chunk, exs)) in prompts.chunks(spec.batch_size).zip(examples.chunks(spec.batch_size)).enumerate() {
                    for (j, (g, e)) in generate(model, chunk, &s, &tok.eos_ids, tok.pad_id)?.iter().zip(exs).enumerate() {
                        let response = tok.decode(&g.new_ids, true)?;
                        let ok = correct(&response, e.response());
                        hits += usize::from(ok);
                        words += usize::from(e.response().is_some_and(|r| same_words(&response, r)));
                        tokens += g.new_ids.len();
                        let generated = Generated {
                            prompt: e.prompt().last().map(|m| m.content.clone()).unwrap_or_default(),
                            answer: final_answer(&response),
                            response,
                            reference: e.response().map(str::to_string),
                            correct: ok,
                        };
                        generations.push((mine[c * spec.batch_size + j], generated));
                    }
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                sums.extend([hits as f64, tokens as f64, words as f64]);
            }
            // Counted in exact_match's pass over the same greedy responses.
            Scorer::WordsMatch => {}
            Scorer::AvgAtK(a) => {
                let sp = a.sampling();
                let bar = metrics::progress(examples.len() as u64, "avg@k", show);
                // Correct samples, distinct correct responses per prompt (how spread the model's
                // correct answers are), and the entropy of each sampled token's distribution.
                let (mut hits, mut distinct, mut entropy, mut drawn) = (0usize, 0usize, 0.0f64, 0usize);
                let per = (spec.batch_size / a.k).max(1);
                for (i, (chunk, exs)) in prompts.chunks(per).zip(examples.chunks(per)).enumerate() {
                    let repeated: Vec<Vec<i64>> = chunk.iter().flat_map(|p| std::iter::repeat_n(p.clone(), a.k)).collect();
                    let s = Sampling { max_new_tokens: sp.max_new_tokens, temperature: sp.temperature, top_k: sp.top_k, top_p: sp.top_p, ignore_eos: false, seed: seed.wrapping_add((i * world + rank) as u64), entropy: true };
                    let gens = generate(model, &repeated, &s, &tok.eos_ids, tok.pad_id)?;
                    for (e, group) in exs.iter().zip(gens.chunks(a.k)) {
                        let mut right = std::collections::HashSet::new();
                        for g in group {
                            let text = tok.decode(&g.new_ids, true)?;
                            if correct(&text, e.response()) {
                                hits += 1;
                                right.insert(text);
                            }
                            entropy += g.entropy.iter().map(|&h| h as f64).sum::<f64>();
                            drawn += g.entropy.len();
                        }
                        distinct += right.len();
                    }
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                sums.extend([hits as f64, distinct as f64, entropy, drawn as f64]);
            }
            Scorer::Nll => {
                let _g = tch::no_grad_guard();
                anyhow::ensure!(all.iter().any(|e| e.response().is_some()), "the nll scorer needs reference responses in the eval data");
                let encoded: Vec<_> = examples.iter().filter(|e| e.response().is_some()).map(|e| data::encode(tok, chat, e, usize::MAX)).collect::<Result<_>>()?;
                let (mut nll, mut count) = (0.0, 0usize);
                for chunk in encoded.chunks(spec.batch_size) {
                    let refs: Vec<_> = chunk.iter().collect();
                    let b = Batch::new(&refs, tok.pad_id, model.device());
                    model.check_positions(b.ids.size()[1] as usize)?;
                    let lp = token_logprobs(&model.logits(&b.ids), &b.ids);
                    nll -= (lp * &b.target_mask).sum(Kind::Double).double_value(&[]);
                    count += b.n_targets;
                }
                sums.extend([nll, count as f64]);
            }
        }
    }
    if let Some(d) = dist {
        sums = d.sum(&sums, "summing the evaluation's counts")?;
        let parts = d.gather("evaluation generations", &serde_json::to_vec(&generations)?)?;
        generations = match parts {
            Some(parts) => parts.iter().map(|p| serde_json::from_slice::<Vec<(usize, Generated)>>(p)).collect::<std::result::Result<Vec<_>, _>>()?.concat(),
            None => vec![],
        };
        generations.sort_by_key(|g| g.0);
    }
    let mut out = Vec::new();
    let mut at = sums.into_iter();
    let mut next = || at.next().unwrap_or(0.0);
    let n = n.max(1) as f64;
    for scorer in &spec.scorers {
        match scorer {
            Scorer::ExactMatch => {
                let (hits, tokens, words) = (next(), next(), next());
                out.push(("eval/exact_match".into(), hits / n));
                out.push(("eval/response_tokens".into(), tokens / n));
                if spec.scorers.iter().any(|s| matches!(s, Scorer::WordsMatch)) {
                    out.push(("eval/words_match".into(), words / n));
                }
            }
            Scorer::WordsMatch => {}
            Scorer::AvgAtK(a) => {
                let (hits, distinct, entropy, drawn) = (next(), next(), next(), next());
                out.push((format!("eval/avg@{}", a.k), hits / (n * a.k as f64)));
                out.push((format!("eval/distinct_correct@{}", a.k), distinct / n));
                out.push(("eval/sample_entropy".into(), entropy / drawn.max(1.0)));
            }
            Scorer::Nll => {
                let (nll, count) = (next(), next());
                let mean = nll / count.max(1.0);
                out.push(("eval/nll".into(), mean));
                out.push(("eval/ppl".into(), mean.exp()));
            }
        }
    }
    Ok(Evaluation { values: out, generations: generations.into_iter().map(|(_, g)| g).collect() })
}

/// One evaluation of a run at `step`: the scorers of `spec`, the greedy generations written to
/// `run_dir/generations/`, and, given a teacher, the held-out teacher-minus-student gap of
/// the student's samples (drawn as `plan` says; see `opd::held_out_gap`). Returns the metric
/// values and the teacher-scored samples.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_run(student: &Side, teacher: Option<(&Teacher, &Plan)>, examples: &[Example], spec: &EvalSpec, seed: u64, show: bool, run_dir: &Path, step: usize, dist: Option<&Dist>) -> Result<(Values, Vec<Rollout>)> {
    let main = dist.is_none_or(Dist::is_main);
    let evaluation = evaluate(&student.model, &student.tok, &student.chat, examples, spec, seed, show && main, dist)?;
    // Rank 0 writes the generations and measures the teacher gap (not sharded).
    if !main {
        return Ok((evaluation.values, vec![]));
    }
    evaluation.write_generations(run_dir, step)?;
    let mut values = evaluation.values;
    let Some((teacher, plan)) = teacher else { return Ok((values, vec![])) };
    let n = spec.gap_examples.or(spec.max_examples).unwrap_or(examples.len()).min(examples.len());
    let prompts: Vec<Vec<i64>> = examples[..n].iter().map(|e| data::prompt_ids(&student.tok, &student.chat, e.prompt())).collect::<Result<_>>()?;
    let (gap, rollouts) = held_out_gap(plan, student, teacher, &examples[..n], &prompts, n, seed ^ 0xE7A1)?;
    values.extend(gap);
    Ok((values, rollouts))
}

/// How `eval.teacher` samples the student for the held-out gap outside `opd`: the paper's
/// rollout settings (temperature 1, top-p 1), `eval.max_new_tokens` long.
pub fn gap_plan(spec: &EvalSpec) -> Plan {
    Plan {
        rollout: crate::recipes::opd::config::RolloutSpec { max_new_tokens: spec.max_new_tokens, ..Default::default() },
        max_chunk_tokens: crate::recipes::opd::config::DpcaSpec::default().max_chunk_tokens,
        teacher_max_length: usize::MAX,
        micro: spec.batch_size,
    }
}

/// Loads `eval.teacher`, if the spec names one, with the device of the run.
pub fn load_eval_teacher(spec: Option<&EvalSpec>, device: &str, student: &Side) -> Result<Option<Teacher>> {
    let Some(t) = spec.and_then(|e| e.teacher.as_ref()) else { return Ok(None) };
    let mut teacher = load_teacher(t, device).context("eval.teacher")?;
    teacher.same_vocab = student.tok.inner.get_vocab(true) == teacher.tok.inner.get_vocab(true);
    Ok(Some(teacher))
}

/// The `eval` recipe: evaluates one model and writes `eval.json` in the output directory.
pub fn run(r: &Eval, dist: Option<&Dist>) -> Result<()> {
    let student = side::load(&r.model, &r.device)?;
    let teacher = load_eval_teacher(Some(&r.eval), &r.device, &student)?;
    let plan = gap_plan(&r.eval);
    let examples = data::read(&r.data, None)?;
    let (results, _) = evaluate_run(&student, teacher.as_ref().map(|t| (t, &plan)), &examples, &r.eval, r.seed, r.logging.progress, &r.output_dir, 0, dist)?;
    if dist.is_some_and(|d| !d.is_main()) {
        return Ok(());
    }
    let obj: serde_json::Map<String, serde_json::Value> = results.iter().map(|(k, v)| (k.clone(), (*v).into())).collect();
    let path = r.output_dir.join("eval.json");
    std::fs::write(&path, serde_json::to_string_pretty(&obj)?)?;
    for (k, v) in &results {
        crate::info!("{k}: {v:.4}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_are_extracted_and_compared() {
        assert_eq!(final_answer("so 3 + 4 = 7\n#### 7").as_deref(), Some("7"));
        assert_eq!(final_answer("#### 1,234.\nmore").as_deref(), Some("1234"));
        assert_eq!(final_answer("The answer is \\boxed{\\frac{1}{2}}.").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(final_answer("no answer here"), None);
        assert!(answers_match("42", "42.0"));
        assert!(!answers_match("42", "43"));
        assert!(correct("work\n#### $1,000", Some("x\n#### 1000")));
        assert!(!correct("#### 12", None));
    }

    #[test]
    fn words_match_ignores_numbers_only() {
        let reference = "Omar starts with 3214 books. After getting 100 more: 3214 + 100 = 3314.\n#### 3314";
        assert!(same_words("Omar starts with 3214 books. After getting 100 more: 3214 + 100 = 3214.\n#### 3214", reference));
        assert!(!same_words("Mei starts with 3214 books. After getting 100 more: 3214 + 100 = 3314.\n#### 3314", reference));
        assert!(!same_words("Omar starts with 3214 apples. After getting 100 more: 3214 + 100 = 3314.\n#### 3314", reference));
        assert!(!same_words("Omar starts with 3214 books.", reference));
    }
}

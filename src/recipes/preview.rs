//! `tokbridge preview RECIPE`: what a recipe's models will see, before anything runs. The first
//! examples of its data read as the recipe reads them (fields, prompt suffix) and rendered with
//! each model's chat template (and `chat_template_kwargs`), the loss tokens marked ⟦so⟧, with
//! token counts. Only tokenizers and templates are loaded, never weights.
use crate::data::{self, Example};
use crate::spec::{Dataset, ModelSpec};
use crate::recipes::recipe::Recipe;
use anyhow::{bail, Context, Result};
use std::fmt::Write;

/// A training example as the model trains on it: the text of each run of tokens, loss runs
/// between ⟦ and ⟧.
fn training_view(out: &mut String, who: &str, spec: &ModelSpec, ex: &Example, max_length: usize) -> Result<()> {
    let (tok, chat) = super::side::tokenizer_of(spec)?;
    let e = data::encode(&tok, &chat, ex, max_length)?;
    let truncated = if e.truncated { format!(", cut to data.max_length = {max_length}") } else { String::new() };
    writeln!(out, "{who} {} ({} tokens, {} loss tokens{truncated}):", spec.name(), e.ids.len(), e.n_targets())?;
    let mut start = 0;
    while start < e.ids.len() {
        let loss = e.target[start];
        let end = (start..e.ids.len()).find(|&i| e.target[i] != loss).unwrap_or(e.ids.len());
        let text = tok.decode(&e.ids[start..end], false)?;
        if loss {
            write!(out, "⟦{text}⟧")?;
        } else {
            write!(out, "{text}")?;
        }
        start = end;
    }
    writeln!(out)?;
    Ok(())
}

/// A prompt as a model is asked it (ending with the assistant header).
fn prompt_view(out: &mut String, who: &str, spec: &ModelSpec, ex: &Example) -> Result<()> {
    let (tok, chat) = super::side::tokenizer_of(spec)?;
    let ids = data::prompt_ids(&tok, &chat, ex.prompt())?;
    writeln!(out, "{who} {} ({} prompt tokens):\n{}", spec.name(), ids.len(), tok.decode(&ids, false)?)?;
    Ok(())
}

/// The preview of the first `n` examples of `recipe`'s data.
pub fn preview(recipe: &Recipe, n: usize) -> Result<String> {
    let mut out = String::new();
    let mut each = |data: &Dataset, view: &mut dyn FnMut(&mut String, &Example) -> Result<()>| -> Result<()> {
        for (i, ex) in data::read(data, Some(n))?.iter().enumerate() {
            writeln!(out, "── {} example {} ──", data, i + 1)?;
            view(&mut out, ex).with_context(|| format!("{data} example {}", i + 1))?;
            if let Some(reference) = ex.response() {
                writeln!(out, "reference response ({} characters)", reference.chars().count())?;
            }
        }
        Ok(())
    };
    match recipe {
        Recipe::Sft(r) => each(&r.data.train, &mut |o, ex| training_view(o, "model", &r.model, ex, r.data.max_length))?,
        Recipe::Opd(r) => each(&r.data.train, &mut |o, ex| {
            prompt_view(o, "student", &r.student, ex)?;
            prompt_view(o, "teacher", &r.teacher, ex)
        })?,
        Recipe::TeacherResponses(r) => each(&r.data.prompts, &mut |o, ex| prompt_view(o, "teacher", &r.teacher, ex))?,
        Recipe::Eval(r) => each(&r.data, &mut |o, ex| prompt_view(o, "model", &r.model, ex))?,
        _ => bail!("preview shows the data of sft, opd, teacher_responses and eval recipes"),
    }
    Ok(out)
}

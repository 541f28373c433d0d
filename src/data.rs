//! Datasets: JSONL files of `{"prompt": ..., "response": ...}` or `{"messages": [...]}` lines,
//! rendered with the model's chat template and tokenized with a mask of the response
//! (assistant) tokens, which are the only ones the loss covers. Also a seeded sampler whose
//! position can be saved and restored.
use crate::hf::chat::{check_roles, ChatTemplate, Message};
use crate::hf::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The longest JSONL line a dataset may have (about 250k tokens of text, beyond any context).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One conversation. For training its last message is the assistant's response.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub messages: Vec<Message>,
}

impl Example {
    /// The conversation before the final assistant turn (everything, if there is none).
    pub fn prompt(&self) -> &[Message] {
        match self.messages.last() {
            Some(m) if m.role == "assistant" => &self.messages[..self.messages.len() - 1],
            _ => &self.messages,
        }
    }

    /// The final assistant turn's text, the reference answer.
    pub fn response(&self) -> Option<&str> {
        self.messages.last().filter(|m| m.role == "assistant").map(|m| m.content.as_str())
    }
}

#[derive(Deserialize)]
struct Line {
    prompt: Option<String>,
    response: Option<String>,
    messages: Option<Vec<Message>>,
}

/// Reads a JSONL dataset. Errors name the file and the 1-based line.
pub fn read_jsonl(path: &Path, max_examples: Option<usize>) -> Result<Vec<Example>> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).with_context(|| format!("reading dataset {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    for i in 0.. {
        if max_examples.is_some_and(|m| out.len() >= m) {
            break;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        // Streamed one bounded line at a time: a huge line is an error, not gigabytes of memory.
        bytes.clear();
        let n = (&mut reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut bytes).with_context(|| format!("reading dataset {}", path.display()))?;
        if n == 0 {
            break;
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        ensure!(bytes.len() <= MAX_LINE_BYTES, "{}: line longer than {} MiB", at(), MAX_LINE_BYTES >> 20);
        let raw = std::str::from_utf8(&bytes).with_context(|| format!("{}: not UTF-8", at()))?.trim_end_matches('\r');
        ensure!(!raw.trim().is_empty(), "{}: empty line", at());
        let line: Line = serde_json::from_str(raw).with_context(|| format!("{}: not a JSON object of the expected shape", at()))?;
        let messages = match (line.messages, line.prompt, line.response) {
            (Some(m), None, None) => m,
            (None, Some(p), r) => {
                let mut m = vec![Message::new("user", &p)];
                if let Some(r) = r {
                    m.push(Message::new("assistant", &r));
                }
                m
            }
            (Some(_), _, _) => bail!("{}: has both \"messages\" and \"prompt\"/\"response\"", at()),
            (None, None, _) => bail!("{}: needs \"prompt\" (with \"response\") or \"messages\"", at()),
        };
        ensure!(!messages.is_empty(), "{}: \"messages\" is empty", at());
        check_roles(&messages).with_context(at)?;
        out.push(Example { messages });
    }
    ensure!(!out.is_empty(), "dataset {} has no examples", path.display());
    Ok(out)
}

/// A tokenized example: ids and, per id, whether it is a response token (a loss target).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub target: Vec<bool>,
    /// Whether `max_length` cut it.
    pub truncated: bool,
}

impl Encoded {
    pub fn n_targets(&self) -> usize {
        // The first token is never predicted.
        self.target.iter().skip(1).filter(|&&t| t).count()
    }
}

/// The rendered text of a conversation cut into (text, is_assistant) pieces, by rendering its
/// prefixes: the template must render each prefix as a prefix of the whole.
fn segments(chat: &ChatTemplate, messages: &[Message]) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut done = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = chat.render(&messages[..i], true)?;
        let through = chat.render(&messages[..=i], false)?;
        let (Some(head), Some(turn)) = (before.strip_prefix(done.as_str()), through.strip_prefix(before.as_str())) else {
            bail!("the chat template does not render the conversation prefix by prefix, so response tokens cannot be located");
        };
        out.push((head.to_string(), false));
        out.push((turn.to_string(), true));
        done = through;
    }
    let all = chat.render(messages, false)?;
    match all.strip_prefix(done.as_str()) {
        Some(rest) if !rest.is_empty() => out.push((rest.to_string(), false)),
        Some(_) => {}
        None => bail!("the chat template does not render the conversation prefix by prefix"),
    }
    Ok(out)
}

/// Tokenizes `ex` for training, truncated to `max_length` tokens. With a chat template the
/// rendered text carries its own special tokens; with the plain template the tokenizer adds
/// them to the first piece.
pub fn encode(tok: &Tokenizer, chat: &ChatTemplate, ex: &Example, max_length: usize) -> Result<Encoded> {
    let mut ids = Vec::new();
    let mut target = Vec::new();
    for (i, (text, is_response)) in segments(chat, &ex.messages)?.iter().enumerate() {
        let piece = tok.encode(text, i == 0 && !chat.has_template())?;
        target.extend(std::iter::repeat_n(*is_response, piece.len()));
        ids.extend(piece);
    }
    let truncated = ids.len() > max_length;
    ids.truncate(max_length);
    target.truncate(max_length);
    Ok(Encoded { ids, target, truncated })
}

/// Token ids of a prompt conversation ready for generation (ends with the assistant header).
pub fn prompt_ids(tok: &Tokenizer, chat: &ChatTemplate, messages: &[Message]) -> Result<Vec<i64>> {
    let text = chat.render(messages, true)?;
    tok.encode(&text, !chat.has_template())
}

/// SplitMix64: a small, fully reproducible generator whose state is one u64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Draws example indices epoch after epoch, reshuffled each epoch from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    n: usize,
    shuffle: bool,
    seed: u64,
    pub epoch: u64,
    pub index: usize,
    order: Vec<usize>,
}

impl Sampler {
    pub fn new(n: usize, shuffle: bool, seed: u64) -> Self {
        Self::at(n, shuffle, seed, 0, 0)
    }

    /// A sampler positioned at (`epoch`, `index`), as a checkpoint recorded it.
    pub fn at(n: usize, shuffle: bool, seed: u64, epoch: u64, index: usize) -> Self {
        let mut s = Self { n, shuffle, seed, epoch, index, order: vec![] };
        s.reorder();
        s
    }

    fn reorder(&mut self) {
        self.order = (0..self.n).collect();
        if self.shuffle {
            Rng(self.seed ^ self.epoch.wrapping_mul(0x2545_F491_4F6C_DD1D)).shuffle(&mut self.order);
        }
    }

    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        (0..size)
            .map(|_| {
                if self.index == self.n {
                    self.epoch += 1;
                    self.index = 0;
                    self.reorder();
                }
                self.index += 1;
                self.order[self.index - 1]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_resumes_where_it_stopped() {
        let mut a = Sampler::new(7, true, 3);
        let first: Vec<_> = (0..5).flat_map(|_| a.next_batch(3)).collect();
        let mut b = Sampler::at(7, true, 3, a.epoch, a.index);
        assert_eq!(a.next_batch(5), b.next_batch(5));
        // Every epoch is a permutation.
        let mut epoch0 = first[..7].to_vec();
        epoch0.sort();
        assert_eq!(epoch0, (0..7).collect::<Vec<_>>());
        assert_ne!(first[..7], first[7..14], "epochs are reshuffled");
    }

    #[test]
    fn jsonl_errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("tokbridge-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.jsonl");
        let check = |body: &str, needle: &str| {
            std::fs::write(&p, body).unwrap();
            let e = format!("{:#}", read_jsonl(&p, None).unwrap_err());
            assert!(e.contains(needle), "{e} should contain {needle}");
        };
        check("{\"prompt\":\"a\",\"response\":\"b\"}\n\n", "d.jsonl:2: empty line");
        check("{\"prompt\":\"a\"}\n{\"prompt\": 3}\n", "d.jsonl:2: not a JSON object");
        check("{\"text\":\"a\"}\n", "d.jsonl:1: needs \"prompt\"");
        check("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n", "d.jsonl:1: unknown role");
        check("", "has no examples");
        std::fs::write(&p, "{\"prompt\":\"a\",\"response\":\"b\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}\n").unwrap();
        let ex = read_jsonl(&p, None).unwrap();
        assert_eq!(ex[0].response(), Some("b"));
        assert_eq!(ex[1].response(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

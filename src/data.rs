//! Datasets: JSONL, JSON or Parquet records of `{"prompt": ..., "response": ...}` (or TRL's
//! `completion`), `{"messages": [...]}`, or fields a recipe names, local or from the hub;
//! rendered with the model's chat template and tokenized with a mask of the response
//! (assistant) tokens, which are the only ones the loss covers. Also a seeded sampler whose
//! position can be saved and restored.
use crate::hf::chat::{check_roles, ChatTemplate, Message};
use crate::hf::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use crate::spec::Dataset;
use serde_json::Value;
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

/// Reads a dataset's examples, file after file (shards in name order). Errors name the file
/// and the 1-based line or row.
pub fn read(ds: &Dataset, max_examples: Option<usize>) -> Result<Vec<Example>> {
    let files = crate::hf::hub::dataset_files(&ds.path)?;
    let mut out = Vec::new();
    for file in &files {
        let mut take = |at: &dyn Fn() -> String, record: Value| -> Result<bool> {
            if max_examples.is_some_and(|m| out.len() >= m) {
                return Ok(false);
            }
            out.push(example(record, ds).with_context(at)?);
            Ok(true)
        };
        let name = file.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".parquet") {
            parquet_records(file, ds, &mut take)?;
        } else if name.ends_with(".jsonl") || name.ends_with(".json") {
            json_records(file, &mut take)?;
        } else {
            bail!("dataset {}: not a .jsonl, .json or .parquet file", file.display());
        }
    }
    ensure!(!out.is_empty(), "dataset {} has no examples", ds.path);
    Ok(out)
}

/// Reads a local JSONL file of `{"prompt", "response"}` or `{"messages"}` lines.
pub fn read_jsonl(path: &Path, max_examples: Option<usize>) -> Result<Vec<Example>> {
    read(&Dataset::from(path.to_path_buf()), max_examples)
}

/// What a file reader hands each record to, with the record's place for errors; false stops it.
type Take<'a> = dyn FnMut(&dyn Fn() -> String, Value) -> Result<bool> + 'a;

/// Hands each record of a JSON Lines file (or of a JSON array, as `datasets` can also write)
/// to `take` until it returns false.
fn json_records(path: &Path, take: &mut Take) -> Result<()> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).with_context(|| format!("reading dataset {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let head = reader.fill_buf().with_context(|| format!("reading dataset {}", path.display()))?;
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return json_array(path, reader, take);
    }
    let mut bytes = Vec::new();
    for i in 0.. {
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
        let record: Value = serde_json::from_str(raw).with_context(|| format!("{}: not JSON", at()))?;
        if !take(&at, record)? {
            break;
        }
    }
    Ok(())
}

/// Hands each record of a JSON array to `take`, read one at a time with the JSONL reader's
/// bound per record (a whole-file parse would hold every record, and a 64 MiB one whole).
fn json_array(path: &Path, reader: impl std::io::Read, take: &mut Take) -> Result<()> {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use std::cell::Cell;
    /// Counts the bytes read since the last record began; past the bound, reading fails.
    struct Bounded<'a, R> {
        inner: R,
        used: &'a Cell<usize>,
    }
    impl<R: std::io::Read> std::io::Read for Bounded<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.used.get() > MAX_LINE_BYTES {
                return Err(std::io::Error::other(format!("a record longer than {} MiB", MAX_LINE_BYTES >> 20)));
            }
            let end = buf.len().min(4096);
            let n = self.inner.read(&mut buf[..end])?;
            self.used.set(self.used.get() + n);
            Ok(n)
        }
    }
    struct Records<'a, 'b> {
        path: &'a Path,
        take: &'a mut Take<'b>,
        used: &'a Cell<usize>,
        /// Set when `take` stopped the reading: Ok when it wanted no more, else its error
        /// (serde's own errors carry only text).
        stopped: &'a mut Option<Result<()>>,
    }
    impl<'de> Visitor<'de> for Records<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            for i in 1.. {
                self.used.set(0);
                let Some(record) = seq.next_element::<Value>()? else { break };
                match (self.take)(&|| format!("{} record {i}", self.path.display()), record) {
                    Ok(true) => continue,
                    Ok(false) => *self.stopped = Some(Ok(())),
                    Err(e) => *self.stopped = Some(Err(e)),
                }
                return Err(serde::de::Error::custom("stopped"));
            }
            Ok(())
        }
    }
    let used = Cell::new(0);
    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_reader(Bounded { inner: reader, used: &used });
    let parsed = de.deserialize_seq(Records { path, take, used: &used, stopped: &mut stopped });
    match stopped {
        Some(r) => r,
        None => {
            parsed.with_context(|| format!("{}: not a JSON array of records", path.display()))?;
            de.end().with_context(|| format!("{}: not a JSON array of records", path.display()))
        }
    }
}

/// Hands each row of a Parquet file (the hub's format for datasets) to `take` as a JSON object
/// until it returns false. The page headers are checked first (`parquet_pages`), the columns a
/// record is read from must hold text, and a panic inside the parquet crate is an error.
fn parquet_records(path: &Path, ds: &Dataset, take: &mut Take) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    quietly(|| {
        let open = || std::fs::File::open(path).with_context(|| format!("reading dataset {}", path.display()));
        let reader = SerializedFileReader::new(open()?).with_context(|| format!("dataset {}: not a Parquet file", path.display()))?;
        let inflate = |c: parquet::basic::Compression| match c {
            parquet::basic::Compression::GZIP(_) => crate::parquet_pages::Inflate::Gzip,
            parquet::basic::Compression::LZ4 => crate::parquet_pages::Inflate::Lz4Frame,
            _ => crate::parquet_pages::Inflate::Bounded,
        };
        let chunks: Vec<_> = reader.metadata().row_groups().iter().flat_map(|g| g.columns().iter().map(|c| (c.byte_range().0, c.byte_range().1, inflate(c.compression())))).collect();
        crate::parquet_pages::check(open()?, &chunks).with_context(|| format!("dataset {}", path.display()))?;
        text_columns(&reader, ds).with_context(|| format!("dataset {}", path.display()))?;
        let rows = reader.get_row_iter(None).with_context(|| format!("reading dataset {}", path.display()))?;
        for (i, row) in rows.enumerate() {
            let row = row.with_context(|| format!("{} row {}: unreadable", path.display(), i + 1))?;
            if !take(&|| format!("{} row {}", path.display(), i + 1), row.to_json_value())? {
                break;
            }
        }
        Ok(())
    })
    .unwrap_or_else(|why| bail!("dataset {}: the Parquet reader failed on a corrupt page ({why})", path.display()))
}

/// Refuses a Parquet file with two columns of one name, or whose columns that records are read
/// from (the dataset's fields, or the default names) hold bytes or decimals: the parquet crate
/// would hand them over as base64 or "1.50", and they would be trained on as text.
fn text_columns(reader: &parquet::file::reader::SerializedFileReader<std::fs::File>, ds: &Dataset) -> Result<()> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::file::reader::FileReader;
    let read: Vec<&str> = [&ds.messages, &ds.prompt, &ds.response].into_iter().flatten().map(String::as_str).chain(["messages", "prompt", "response", "completion"]).collect();
    let mut seen = std::collections::HashSet::new();
    for f in reader.metadata().file_metadata().schema_descr().root_schema().get_fields() {
        let name = f.name();
        ensure!(seen.insert(name), "two columns are named {name:?}");
        if !f.is_primitive() || !read.contains(&name) {
            continue;
        }
        let info = f.get_basic_info();
        let decimal = matches!(info.logical_type_ref(), Some(LogicalType::Decimal { .. })) || info.converted_type() == ConvertedType::DECIMAL;
        ensure!(!decimal, "column {name:?} holds decimals, not text");
        let text = matches!(info.logical_type_ref(), Some(LogicalType::String | LogicalType::Enum | LogicalType::Json)) || matches!(info.converted_type(), ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON);
        ensure!(text || !matches!(f.get_physical_type(), Physical::BYTE_ARRAY | Physical::FIXED_LEN_BYTE_ARRAY), "column {name:?} holds bytes, not text (no string type)");
    }
    Ok(())
}

/// Runs `f`; a panic inside it (the parquet crate asserts on some corrupt pages) is returned
/// as its message, without printing it on stderr.
fn quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.map_err(|p| p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
}

/// One record as a conversation, from the fields `ds` names (or the defaults). A prompt or
/// response may be a string or, as in TRL's conversational datasets, a list of messages.
fn example(record: Value, ds: &Dataset) -> Result<Example> {
    let Value::Object(fields) = record else { bail!("not a JSON object") };
    let field = |named: &Option<String>, default: &[&str]| -> Result<Option<(String, Value)>> {
        if let Some(name) = named {
            return match fields.get(name) {
                Some(Value::Null) => bail!("field {name:?} is null"),
                Some(v) => Ok(Some((name.clone(), v.clone()))),
                None => bail!("no field {name:?} (the fields are {})", fields.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")),
            };
        }
        Ok(default.iter().find_map(|&k| fields.get(k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone()))))
    };
    let turns = |(name, v): (String, Value), role: &str| -> Result<Vec<Message>> {
        match v {
            Value::String(text) => Ok(vec![Message::new(role, &text)]),
            v @ Value::Array(_) => serde_json::from_value(v).with_context(|| format!("{name:?}: not a list of {{role, content}} messages")),
            _ => bail!("{name:?}: neither a string nor a list of messages"),
        }
    };
    let mapped = ds.prompt.is_some() || ds.response.is_some();
    let messages = if ds.messages.is_some() || !mapped { field(&ds.messages, &["messages"])? } else { None };
    let prompt = if ds.messages.is_none() { field(&ds.prompt, &["prompt"])? } else { None };
    let response = if ds.messages.is_none() { field(&ds.response, &["response", "completion"])? } else { None };
    let messages = match (messages, prompt, response) {
        (Some((name, v)), None, None) => match v {
            v @ Value::Array(_) => serde_json::from_value(v).with_context(|| format!("{name:?}: not a list of {{role, content}} messages"))?,
            _ => bail!("{name:?}: not a list of messages"),
        },
        (None, Some(p), r) => {
            let mut m = turns(p, "user")?;
            if let Some(r) = r {
                m.extend(turns(r, "assistant")?);
            }
            m
        }
        (Some(_), _, _) => bail!("has both \"messages\" and \"prompt\"/\"response\""),
        (None, None, _) => bail!("needs \"prompt\" (with \"response\" or \"completion\") or \"messages\"; name other fields in the recipe as {{path, prompt: FIELD, response: FIELD}}"),
    };
    ensure!(!messages.is_empty(), "\"messages\" is empty");
    check_roles(&messages)?;
    let mut ex = Example { messages };
    if let Some(suffix) = &ds.prompt_suffix {
        let n = ex.prompt().len();
        let Some(turn) = ex.messages[..n].iter_mut().rev().find(|m| m.role == "user") else { bail!("no user turn to append prompt_suffix to") };
        turn.content.push_str(suffix);
    }
    Ok(ex)
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
        check("{\"prompt\":\"a\"}\n[1, 2]\n", "d.jsonl:2: not a JSON object");
        check("{\"text\":\"a\"}\n", "d.jsonl:1: needs \"prompt\"");
        check("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n", "d.jsonl:1: unknown role");
        check("", "has no examples");
        std::fs::write(&p, "{\"prompt\":\"a\",\"response\":\"b\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}\n").unwrap();
        let ex = read_jsonl(&p, None).unwrap();
        assert_eq!(ex[0].response(), Some("b"));
        assert_eq!(ex[1].response(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mapped(path: &str, prompt: &str, response: &str) -> Dataset {
        Dataset { path: path.into(), prompt: Some(prompt.into()), response: Some(response.into()), ..Default::default() }
    }

    #[test]
    fn parquet_and_json_files_as_datasets_writes_them_give_the_jsonl_examples() {
        // Made from the JSONL fixtures by scripts/fixtures/make_dataset_fixtures.py.
        let arith = read_jsonl(Path::new("tests/fixtures/data/arith_train.jsonl"), Some(48)).unwrap();
        let shards = read(&mapped("tests/fixtures/data/hub/arith/data/train-0000*-of-00002.parquet", "question", "answer"), None).unwrap();
        let zstd = read(&mapped("tests/fixtures/data/hub/arith/data/train-zstd.parquet", "question", "answer"), None).unwrap();
        assert_eq!((shards.len(), &shards), (48, &arith), "two snappy shards, in name order");
        assert_eq!(zstd, arith);
        let first = read(&mapped("tests/fixtures/data/hub/arith/data/train-*-of-00002.parquet", "question", "answer"), Some(30)).unwrap();
        assert_eq!(first, arith[..30], "max_examples stops across shards");
        let suffix = " Let's think step by step and output the final answer after \"####\".";
        let instructed = read(&Dataset { prompt_suffix: Some(suffix.into()), ..mapped("tests/fixtures/data/hub/arith/data/train-zstd.parquet", "question", "answer") }, Some(1)).unwrap();
        assert_eq!(instructed[0].messages[0].content, format!("{}{suffix}", arith[0].messages[0].content));
        assert_eq!(instructed[0].response(), arith[0].response());
        let chat = read_jsonl(Path::new("tests/fixtures/data/chat_train.jsonl"), None).unwrap();
        assert!(chat.len() == 8 && chat[0].messages.len() == 5);
        assert_eq!(read(&"tests/fixtures/data/hub/chat/conversations.parquet".into(), None).unwrap(), chat, "a list of {{role, content}} structs");
        assert_eq!(read(&"tests/fixtures/data/hub/chat/conversations.json".into(), None).unwrap(), chat, "a JSON array");
        // The suffix goes to the last user turn before the final response, not to earlier ones.
        let ds = Dataset { path: "tests/fixtures/data/hub/chat/conversations.json".into(), prompt_suffix: Some(" (briefly)".into()), ..Default::default() };
        let instructed = read(&ds, Some(1)).unwrap();
        assert_eq!((instructed[0].messages[1].content.as_str(), instructed[0].messages[3].content.as_str()), ("What is 0 + 0?", "And times 3? (briefly)"));
        let e = format!("{:#}", read(&"tests/fixtures/data/hub/arith/data/train-zstd.parquet".into(), None).unwrap_err());
        assert!(e.contains("train-zstd.parquet row 1: needs \"prompt\""), "{e}");
        let e = format!("{:#}", read(&mapped("tests/fixtures/data/hub/arith/data/train-zstd.parquet", "question", "solution"), None).unwrap_err());
        assert!(e.contains("row 1: no field \"solution\" (the fields are \"answer\", \"id\", \"question\")"), "{e}");
        let e = format!("{:#}", read(&"tests/fixtures/data/arith_train.jsonl.parquet".into(), None).unwrap_err());
        assert!(e.contains("arith_train.jsonl.parquet: no such file"), "{e}");
        let e = format!("{:#}", read(&"tests/fixtures/data/hub/nothing-*.parquet".into(), None).unwrap_err());
        assert!(e.contains("nothing-*.parquet: no file matches"), "{e}");
        let e = format!("{:#}", read(&"tests/fixtures/data/hub/chat".into(), None).unwrap_err());
        assert!(e.contains("hub/chat: no such file"), "{e}");
    }

    #[test]
    fn trl_prompt_completion_records_strings_or_messages() {
        let dir = std::env::temp_dir().join(format!("tokbridge-trl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"prompt\": \"2+2?\", \"completion\": \"4\"}\n",
                "{\"prompt\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"2+3?\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"5\"}]}\n",
                "{\"prompt\": \"2+4?\", \"completion\": null, \"label\": true}\n",
            ),
        )
        .unwrap();
        let ex = read_jsonl(&p, None).unwrap();
        let m = |r: &str, c: &str| Message::new(r, c);
        assert_eq!(ex[0].messages, [m("user", "2+2?"), m("assistant", "4")]);
        assert_eq!(ex[1].messages, [m("system", "Be brief."), m("user", "2+3?"), m("assistant", "5")]);
        assert_eq!((ex[2].messages.len(), ex[2].response()), (1, None), "a null field is absent");
        std::fs::write(&p, "{\"messages\": \"hello\"}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p, None).unwrap_err());
        assert!(e.contains("d.jsonl:1: \"messages\": not a list of messages"), "{e}");
        std::fs::write(&p, "{\"prompt\": 3}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p, None).unwrap_err());
        assert!(e.contains("d.jsonl:1: \"prompt\": neither a string nor a list of messages"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! A teacher served by an inference engine: the request that makes each API score given token
//! ids, the parsers of their answers, and a client that keeps a bounded number of requests in
//! flight, retries with backoff and fails with one line naming the URL and the rollout.
//!
//! The shapes follow the engines' documentation (see ../shared/research/opd-recipes-and-controls.md):
//! - `vllm`: `POST /v1/completions` with the ids as `prompt`, `max_tokens: 1` and
//!   `prompt_logprobs: 0`; `choices[0].prompt_logprobs` is aligned with the prompt, its first
//!   entry null, each entry a map from token id to `{logprob, rank, decoded_token}` that holds the
//!   actual token (and the top-k when asked).
//! - `openai_completions` (vLLM, or any OpenAI-compatible server that takes token ids): the
//!   same endpoint with `echo: true` and `logprobs: 0`; `choices[0].logprobs` has `tokens` and
//!   `token_logprobs` (first null) over the echoed prompt and then the generated token. Tokens
//!   come back as text (or as `token_id:N` where vLLM's `return_tokens_as_token_ids` is on), so
//!   the server's tokenization is checked against ours token by token.
//! - `llama_cpp_python`: the same with the prompt as text, which is all its server takes. Its
//!   echo leaves out every BOS token, and its values are one token off unless the sequence
//!   starts with the model's BOS (its code pairs echoed token i with the logits after token i,
//!   right only once a leading BOS is dropped); an answer where the first token was not left
//!   out is refused.
//! - `sglang`: `POST /generate` with `input_ids`, `max_new_tokens: 0`, `return_logprob`,
//!   `logprob_start_len: 0`; `meta_info.input_token_logprobs` is `[[logprob | null, id, text | null], …]`.
//!
//! Generation (the SFT baseline's `teacher_responses` from a served teacher) goes through the
//! completions endpoint (`/generate` for SGLang) with the prompt as ids.
use crate::hf::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::spec::{Api, ServerSpec};

/// The request body that makes `api` return the log-prob of every token of `ids` (whose text is
/// `text`, for the servers that take text).
pub fn score_request(api: Api, model: Option<&str>, ids: &[i64], text: &str) -> Value {
    let mut body = match api {
        Api::Vllm => json!({ "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0 }),
        Api::OpenaiCompletions => json!({ "prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 0 }),
        Api::LlamaCppPython => json!({ "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 0 }),
        Api::Sglang => json!({
            "input_ids": ids,
            "sampling_params": { "max_new_tokens": 0, "temperature": 0.0 },
            "return_logprob": true,
            "logprob_start_len": 0,
            "top_logprobs_num": 0,
        }),
    };
    if let (Some(m), false) = (model, api == Api::Sglang) {
        body["model"] = json!(m);
    }
    body
}

/// What went wrong with one answer: worth another try (a server that is down, busy or answered
/// badly) or not (the server disagrees with our tokenization, or refuses the request).
#[derive(Debug)]
pub enum Failure {
    Retry(String),
    Fatal(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Retry(m) | Failure::Fatal(m) => m,
        }
    }
}

fn retry<T>(msg: impl Into<String>) -> std::result::Result<T, Failure> {
    Err(Failure::Retry(msg.into()))
}

/// The text of one of our tokens as a server would echo it: its bytes as UTF-8 with incomplete
/// characters dropped (servers drop or replace them), so both sides compare alike.
fn comparable(text: &str) -> String {
    text.chars().filter(|&c| c != '\u{FFFD}').collect()
}

/// Checks that the server's token at position `i` is ours: by id where it gives one, else by
/// text (a special token may echo as empty text).
fn same_token(i: usize, ours: i64, theirs: &Value, tok: &Tokenizer) -> std::result::Result<(), Failure> {
    let pieces = tok.pieces();
    let ours_text = || comparable(&String::from_utf8_lossy(pieces.bytes.get(ours as usize).map_or(&[][..], |b| b.as_slice())));
    let differ = |theirs: String| Failure::Fatal(format!("the server tokenizes differently from the teacher's tokenizer.json: its token {i} is {theirs}, ours is {:?} (id {ours})", ours_text()));
    if let Some(id) = theirs.as_i64() {
        return if id == ours { Ok(()) } else { Err(differ(format!("id {id}"))) };
    }
    let Some(text) = theirs.as_str() else { return retry(format!("token {i} is neither an id nor text: {theirs}")) };
    if let Some(id) = text.strip_prefix("token_id:").and_then(|n| n.parse::<i64>().ok()) {
        return if id == ours { Ok(()) } else { Err(differ(format!("id {id}"))) };
    }
    let special = pieces.special.get(ours as usize).copied().unwrap_or(false);
    if comparable(text) == ours_text() || (special && text.is_empty()) {
        Ok(())
    } else {
        Err(differ(format!("{text:?}")))
    }
}

fn logprob(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.get("logprob").and_then(Value::as_f64))
}

/// Reads a scoring answer: `out[i]` is log q(ids[i] | ids[..i]) where the server gave it (never
/// for i = 0, and not for a BOS that llama-cpp-python leaves out of its echo).
pub fn parse_scores(api: Api, body: &Value, ids: &[i64], tok: &Tokenizer) -> std::result::Result<Vec<Option<f64>>, Failure> {
    let n = ids.len();
    let mut out = vec![None; n];
    match api {
        Api::Vllm => {
            let Some(entries) = body.pointer("/choices/0/prompt_logprobs").and_then(Value::as_array) else {
                return retry("the answer has no choices[0].prompt_logprobs (is this a vLLM server?)");
            };
            if entries.len() < n {
                return retry(format!("{} prompt log-probs for {n} tokens", entries.len()));
            }
            for (i, e) in entries.iter().enumerate().take(n).skip(1) {
                let Some(map) = e.as_object() else { return retry(format!("prompt_logprobs[{i}] is not a map of token ids")) };
                let Some(v) = map.get(&ids[i].to_string()) else {
                    let got: Vec<&String> = map.keys().collect();
                    return Err(Failure::Fatal(format!("prompt_logprobs[{i}] has no entry for our token id {} (it has {got:?}): the server tokenizes differently or scored other ids", ids[i])));
                };
                out[i] = logprob(v);
            }
        }
        Api::OpenaiCompletions | Api::LlamaCppPython => {
            let lp = body.pointer("/choices/0/logprobs");
            let (Some(tokens), Some(values)) = (lp.and_then(|l| l.get("tokens")).and_then(Value::as_array), lp.and_then(|l| l.get("token_logprobs")).and_then(Value::as_array)) else {
                return retry("the answer has no choices[0].logprobs.tokens and token_logprobs (does the server support echo with logprobs? llama-cpp-python needs --logits_all true)");
            };
            if tokens.len() != values.len() {
                return retry(format!("{} tokens but {} token_logprobs", tokens.len(), values.len()));
            }
            // The echo is the prompt and then the generated tokens; a server may leave special
            // tokens out of it (llama-cpp-python leaves out every BOS), so it is matched to the
            // prompt from the end, skipping our special tokens where the server has none.
            let generated = body.pointer("/usage/completion_tokens").and_then(Value::as_u64).map_or(tokens.len().saturating_sub(n), |g| g as usize);
            let (mut i, mut j) = (n, tokens.len().saturating_sub(generated));
            let special = |id: i64| tok.pieces().special.get(id as usize).copied().unwrap_or(false);
            while j > 0 {
                if i == 0 {
                    return retry(format!("the echo holds more tokens than the {n} of the prompt"));
                }
                match same_token(i - 1, ids[i - 1], &tokens[j - 1], tok) {
                    Ok(()) => {
                        out[i - 1] = values[j - 1].as_f64();
                        j -= 1;
                    }
                    Err(_) if special(ids[i - 1]) => {}
                    Err(e) => return Err(e),
                }
                i -= 1;
            }
            out[0] = None;
            if api == Api::LlamaCppPython && i == 0 {
                return Err(Failure::Fatal(format!(
                    "llama-cpp-python's echoed log-probs are one token off unless the sequence starts with the model's BOS token (it drops that token), and this one starts with {:?}; serve this teacher with vLLM or SGLang",
                    String::from_utf8_lossy(tok.pieces().bytes.get(ids[0] as usize).map_or(&[][..], |b| b.as_slice()))
                )));
            }
        }
        Api::Sglang => {
            let Some(entries) = body.pointer("/meta_info/input_token_logprobs").and_then(Value::as_array) else {
                return retry("the answer has no meta_info.input_token_logprobs (is this an SGLang server?)");
            };
            if entries.len() < n {
                return retry(format!("{} input log-probs for {n} tokens", entries.len()));
            }
            for (i, e) in entries.iter().enumerate().take(n) {
                let (Some(v), Some(id)) = (e.get(0), e.get(1)) else { return retry(format!("input_token_logprobs[{i}] is not [logprob, id, text]")) };
                same_token(i, ids[i], id, tok)?;
                if i > 0 {
                    out[i] = v.as_f64();
                }
            }
        }
    }
    Ok(out)
}

/// The log-probs a rollout needs: every position from `from` on, finite and ≤ 0 (with a little
/// room for the server's rounding).
pub fn needed(scores: &[Option<f64>], from: usize) -> std::result::Result<Vec<f32>, Failure> {
    let mut out = Vec::with_capacity(scores.len().saturating_sub(from));
    for (i, v) in scores.iter().enumerate().skip(from) {
        match v {
            None => return retry(format!("no log-prob for token {i}")),
            // Finite in float32 too: −1e300 is a float64 but −inf once cast.
            Some(x) if !(*x as f32).is_finite() || *x > 1e-3 => return retry(if x.abs() < 1e9 { format!("log-prob {x} at token {i}") } else { format!("log-prob {x:e} at token {i}") }),
            Some(x) => out.push(*x as f32),
        }
    }
    Ok(out)
}

/// One generated answer: its text and how many tokens the server generated.
pub fn parse_generation(api: Api, body: &Value) -> std::result::Result<(String, u64), Failure> {
    let (text, tokens) = match api {
        Api::Sglang => (body.get("text"), body.pointer("/meta_info/completion_tokens")),
        Api::OpenaiCompletions | Api::Vllm | Api::LlamaCppPython => (body.pointer("/choices/0/text"), body.pointer("/usage/completion_tokens")),
    };
    match (text.and_then(Value::as_str), tokens.and_then(Value::as_u64)) {
        (Some(t), Some(n)) => Ok((t.to_string(), n)),
        _ => retry("the answer has no generated text and token count"),
    }
}

/// The server's own words about a refused request: `error.message`, `message` or `detail`.
fn server_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let msg = v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("detail")).map(|m| m.as_str().map_or(m.to_string(), str::to_string));
    let text = msg.unwrap_or_else(|| body.to_string());
    let text = text.replace('\n', " ");
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The exact text of `ids` (their byte pieces joined), for a server that takes text.
fn text_of(ids: &[i64], tok: &Tokenizer) -> Result<String> {
    let table = tok.pieces();
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the teacher's tokens do not spell UTF-8 text, which a server that takes text needs"))
}

/// The most bytes an answer about `tokens` tokens may take: 64 KiB, and 4 KiB a token (a
/// scoring answer's entry per token, with its text, id, rank and alternatives, is a few hundred
/// bytes; a generated token's text in JSON, escaped, a few dozen).
fn answer_limit(tokens: usize) -> u64 {
    (64 << 10) + 4096 * tokens as u64
}

/// A client of one teacher server.
pub struct Served {
    pub spec: ServerSpec,
    endpoint: String,
    agent: ureq::Agent,
}

impl Served {
    pub fn new(spec: &ServerSpec) -> Result<Self> {
        spec.check("teacher.server")?;
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs_f64(spec.timeout_s))).http_status_as_error(false).build().into();
        Ok(Self { spec: spec.clone(), endpoint: spec.endpoint(), agent })
    }

    /// One POST; the answer's JSON, or why not. An answer longer than `limit` bytes (what the
    /// request can need) is refused, not read on: a broken or hostile server could otherwise
    /// fill memory, once per request in flight.
    fn post(&self, body: &Value, limit: u64) -> std::result::Result<Value, Failure> {
        let text = serde_json::to_string(body).map_err(|e| Failure::Fatal(e.to_string()))?;
        let mut resp = match self.agent.post(&self.endpoint).header("Content-Type", "application/json").send(text.as_str()) {
            Ok(r) => r,
            Err(e) => return retry(format!("no answer: {e}")),
        };
        let status = resp.status().as_u16();
        let answer = match resp.body_mut().with_config().limit(limit).read_to_string() {
            Ok(t) => t,
            Err(ureq::Error::BodyExceedsLimit(_)) => return Err(Failure::Fatal(format!("the answer (HTTP {status}) is longer than the {limit} bytes this request can need"))),
            Err(e) => return retry(format!("reading the answer (HTTP {status}): {e}")),
        };
        match status {
            200..=299 => serde_json::from_str(&answer).or_else(|e| retry(format!("the answer is not JSON ({e}): {}", server_message(&answer)))),
            408 | 429 | 500..=599 => retry(format!("HTTP {status}: {}", server_message(&answer))),
            _ => Err(Failure::Fatal(format!("HTTP {status}: {}", server_message(&answer)))),
        }
    }

    /// Runs `attempt` until it succeeds, fails fatally, or the retries are spent.
    fn with_retries<T>(&self, what: &str, mut attempt: impl FnMut() -> std::result::Result<T, Failure>) -> Result<T> {
        let mut tries = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(_)) if tries < self.spec.retries => {
                    std::thread::sleep(Duration::from_secs_f64((0.5 * 2f64.powi(tries as i32)).min(8.0)));
                    tries += 1;
                }
                Err(f) => {
                    let tried = if matches!(f, Failure::Retry(_)) { format!(" (after {} tries)", tries + 1) } else { String::new() };
                    bail!("teacher server {}: {what}: {}{tried}", self.endpoint, f.message())
                }
            }
        }
    }

    /// Runs `job(i)` for every i in 0..n with at most `max_concurrency` in flight; the first
    /// error in index order wins.
    fn each<T: Send>(&self, n: usize, job: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.spec.max_concurrency.min(n) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = job(i);
                    let failed = r.is_err();
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    if failed {
                        // Stop handing out work: the step cannot use partial teacher data.
                        next.store(n, Ordering::Relaxed);
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(n);
        for r in results {
            match r {
                Some(r) => out.push(r?),
                None => continue,
            }
        }
        anyhow::ensure!(out.len() == n, "teacher server {}: {} of {n} requests were not answered", self.endpoint, n - out.len());
        Ok(out)
    }

    /// log q of every token of `seqs[i]` from `from[i]` on (`out[i][j]` is the log-prob of
    /// `seqs[i][from[i] + j]`); `names[i]` says which rollout a failure concerns. Returns the
    /// log-probs and the seconds spent waiting on the server.
    pub fn score(&self, seqs: &[&[i64]], from: &[usize], names: &[String], tok: &Tokenizer) -> Result<(Vec<Vec<f32>>, f64)> {
        let started = Instant::now();
        let out = self.each(seqs.len(), |i| {
            let text = if self.spec.api == Api::LlamaCppPython { text_of(seqs[i], tok)? } else { String::new() };
            let body = score_request(self.spec.api, self.spec.model.as_deref(), seqs[i], &text);
            self.with_retries(&names[i], || {
                let answer = self.post(&body, answer_limit(seqs[i].len()))?;
                needed(&parse_scores(self.spec.api, &answer, seqs[i], tok)?, from[i])
            })
        })?;
        Ok((out, started.elapsed().as_secs_f64()))
    }

    /// Samples an answer to each prompt (ids in the teacher's template): the texts and the
    /// generated token counts.
    pub fn generate(&self, prompts: &[Vec<i64>], s: &crate::generate::Sampling, tok: &Tokenizer) -> Result<Vec<(String, u64)>> {
        self.each(prompts.len(), |i| {
            let seed = s.seed.wrapping_add(i as u64) & 0x7FFF_FFFF;
            let body = match self.spec.api {
                Api::Sglang => json!({
                    "input_ids": prompts[i],
                    "sampling_params": { "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p, "top_k": if s.top_k > 0 { s.top_k } else { -1 }, "sampling_seed": seed },
                }),
                Api::OpenaiCompletions | Api::Vllm | Api::LlamaCppPython => {
                    let prompt = if self.spec.api == Api::LlamaCppPython { json!(text_of(&prompts[i], tok)?) } else { json!(prompts[i]) };
                    let mut b = json!({ "prompt": prompt, "max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": seed });
                    if s.top_k > 0 {
                        b["top_k"] = json!(s.top_k);
                    }
                    if let Some(m) = &self.spec.model {
                        b["model"] = json!(m);
                    }
                    b
                }
            };
            self.with_retries(&format!("prompt {i}"), || parse_generation(self.spec.api, &self.post(&body, answer_limit(s.max_new_tokens))?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo teacher's byte-level tokenizer (recipes/demo/tokenizers/teacher): ids of
    /// "<|im_start|>Lucas has 5444 stamps." as the answers in tests/fixtures/served/ hold them.
    const IDS: [i64; 10] = [1, 355, 307, 223, 23, 22, 22, 22, 340, 16];

    fn tok() -> Tokenizer {
        Tokenizer::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/demo/tokenizers/teacher")).expect("demo teacher tokenizer")
    }

    fn answer(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/served").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
    }

    /// The fixtures' log-probs: −(0.5 + 0.25 i) for token i ≥ 1.
    fn expected() -> Vec<Option<f64>> {
        (0..10).map(|i| (i > 0).then(|| -(0.5 + 0.25 * i as f64))).collect()
    }

    fn fatal(r: std::result::Result<Vec<Option<f64>>, Failure>) -> String {
        match r {
            Err(Failure::Fatal(m)) => m,
            other => panic!("expected a fatal failure, got {other:?}"),
        }
    }

    #[test]
    fn every_api_reads_its_answer() {
        let tok = tok();
        for (api, file) in [(Api::Vllm, "vllm_prompt_logprobs.json"), (Api::OpenaiCompletions, "vllm_echo.json"), (Api::OpenaiCompletions, "vllm_echo_token_ids.json"), (Api::Sglang, "sglang_generate.json")] {
            let got = parse_scores(api, &answer(file), &IDS, &tok).unwrap_or_else(|f| panic!("{file}: {f:?}"));
            assert_eq!(got, expected(), "{file}");
        }
        // The rollout needs its response tokens only: from index 8 (" stamps") on.
        let lq = needed(&expected(), 8).expect("finite");
        assert_eq!(lq, vec![-2.5f32, -2.75]);
    }

    #[test]
    fn a_top_k_map_is_searched_for_the_actual_token() {
        // Entry 3 holds " sheep" (rank 1) and "5" (rank 2) besides our " " (rank 3).
        let body = answer("vllm_prompt_logprobs.json");
        assert_eq!(body.pointer("/choices/0/prompt_logprobs/3").and_then(Value::as_object).map(|m| m.len()), Some(3));
        let got = parse_scores(Api::Vllm, &body, &IDS, &tok()).expect("parses");
        assert_eq!(got[3], Some(-1.25));
    }

    #[test]
    fn an_echo_without_the_leading_bos_still_lines_up() {
        // llama-cpp-python leaves a leading BOS out of the echo: the echo is matched to the
        // prompt's end and token 0 has no log-prob (it never has one).
        let mut body = answer("vllm_echo.json");
        let lp = body.pointer_mut("/choices/0/logprobs").expect("logprobs");
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            lp[key].as_array_mut().expect("array").remove(0);
        }
        lp["token_logprobs"][0] = Value::Null;
        let got = parse_scores(Api::OpenaiCompletions, &body, &IDS, &tok()).expect("parses");
        let mut want = expected();
        want[1] = None;
        assert_eq!(got, want);
        assert!(matches!(needed(&got, 1), Err(Failure::Retry(m)) if m == "no log-prob for token 1"));
        assert_eq!(needed(&got, 2).expect("from 2").len(), 8);
    }

    #[test]
    fn llama_cpp_python_needs_a_leading_bos() {
        // Its echo of a sequence that starts with BOS leaves the BOS out (fine); one that
        // starts with another token keeps it, and its values are then one token off.
        let tok = tok();
        let mut body = answer("vllm_echo.json");
        let lp = body.pointer_mut("/choices/0/logprobs").expect("logprobs");
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            lp[key].as_array_mut().expect("array").remove(0);
        }
        lp["token_logprobs"][0] = Value::Null;
        assert!(parse_scores(Api::LlamaCppPython, &body, &IDS, &tok).is_ok());
        let msg = fatal(parse_scores(Api::LlamaCppPython, &answer("vllm_echo.json"), &IDS, &tok));
        assert!(msg.starts_with("llama-cpp-python's echoed log-probs are one token off unless the sequence starts with the model's BOS token"), "{msg}");
        let body = score_request(Api::LlamaCppPython, Some("m"), &IDS, "<|im_start|>Lucas has 5444 stamps.");
        assert_eq!(body["prompt"], json!("<|im_start|>Lucas has 5444 stamps."));
        assert_eq!(text_of(&IDS, &tok).expect("utf-8"), "<|im_start|>Lucas has 5444 stamps.");
    }

    #[test]
    fn a_different_tokenization_names_the_first_differing_token() {
        let tok = tok();
        let mut body = answer("vllm_echo.json");
        body["choices"][0]["logprobs"]["tokens"][4] = json!("54");
        assert_eq!(fatal(parse_scores(Api::OpenaiCompletions, &body, &IDS, &tok)), "the server tokenizes differently from the teacher's tokenizer.json: its token 4 is \"54\", ours is \"5\" (id 23)");
        let mut body = answer("sglang_generate.json");
        body["meta_info"]["input_token_logprobs"][2][1] = json!(336);
        assert_eq!(fatal(parse_scores(Api::Sglang, &body, &IDS, &tok)), "the server tokenizes differently from the teacher's tokenizer.json: its token 2 is id 336, ours is \" has\" (id 307)");
        let mut body = answer("vllm_echo_token_ids.json");
        body["choices"][0]["logprobs"]["tokens"][9] = json!("token_id:17");
        assert!(fatal(parse_scores(Api::OpenaiCompletions, &body, &IDS, &tok)).contains("its token 9 is id 17, ours is \".\" (id 16)"));
        let mut body = answer("vllm_prompt_logprobs.json");
        body["choices"][0]["prompt_logprobs"][5] = json!({"23": {"logprob": -0.1}});
        assert!(fatal(parse_scores(Api::Vllm, &body, &IDS, &tok)).starts_with("prompt_logprobs[5] has no entry for our token id 22"));
    }

    #[test]
    fn short_or_broken_answers_are_retried() {
        let tok = tok();
        let retried = |api, body: &Value| matches!(parse_scores(api, body, &IDS, &tok), Err(Failure::Retry(_)));
        let mut short = answer("vllm_prompt_logprobs.json");
        short["choices"][0]["prompt_logprobs"].as_array_mut().expect("array").truncate(7);
        assert!(retried(Api::Vllm, &short));
        let mut short = answer("sglang_generate.json");
        short["meta_info"]["input_token_logprobs"].as_array_mut().expect("array").truncate(9);
        assert!(retried(Api::Sglang, &short));
        assert!(retried(Api::OpenaiCompletions, &json!({"choices": [{"text": ""}]})));
        assert!(retried(Api::Vllm, &answer("sglang_generate.json")));
        // A log-prob that is not a number, or positive, is not used.
        let mut nan = answer("sglang_generate.json");
        nan["meta_info"]["input_token_logprobs"][9][0] = json!("NaN");
        let got = parse_scores(Api::Sglang, &nan, &IDS, &tok).expect("parses");
        assert!(matches!(needed(&got, 8), Err(Failure::Retry(m)) if m == "no log-prob for token 9"));
        assert!(matches!(needed(&[None, Some(0.5)], 1), Err(Failure::Retry(m)) if m == "log-prob 0.5 at token 1"));
        // #36 item 17: finite as a float64, −inf as the float32 it is trained in.
        assert!(matches!(needed(&[None, Some(-1e300)], 1), Err(Failure::Retry(m)) if m == "log-prob -1e300 at token 1"), "{:?}", needed(&[None, Some(-1e300)], 1).err());
        assert_eq!(needed(&[None, Some(-3e38)], 1).ok(), Some(vec![-3e38f32]));
    }

    #[test]
    fn requests_have_each_apis_shape() {
        let ids = [1i64, 355, 307];
        let v = score_request(Api::Vllm, Some("teacher"), &ids, "");
        assert_eq!(v, json!({"model": "teacher", "prompt": [1, 355, 307], "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}));
        let v = score_request(Api::OpenaiCompletions, None, &ids, "");
        assert_eq!(v, json!({"prompt": [1, 355, 307], "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 0}));
        let v = score_request(Api::Sglang, Some("ignored"), &ids, "");
        assert_eq!(v["input_ids"], json!([1, 355, 307]));
        assert_eq!(v["sampling_params"]["max_new_tokens"], json!(0));
        assert_eq!(v["logprob_start_len"], json!(0));
        let spec = |url: &str, api| ServerSpec { url: url.into(), model: None, api, timeout_s: 1.0, max_concurrency: 1, retries: 0 };
        assert_eq!(spec("http://h:8000/v1/", Api::Vllm).endpoint(), "http://h:8000/v1/completions");
        assert_eq!(spec("http://h:8000", Api::OpenaiCompletions).endpoint(), "http://h:8000/v1/completions");
        assert_eq!(spec("http://h:30000", Api::Sglang).endpoint(), "http://h:30000/generate");
        assert!(spec("h:8000", Api::Vllm).check("teacher.server").is_err_and(|e| e.to_string().contains("teacher.server.url")));
    }

    #[test]
    fn generations_and_refusals_read() {
        let body = json!({"choices": [{"text": "Lucas starts", "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 3}});
        assert!(matches!(parse_generation(Api::OpenaiCompletions, &body), Ok((t, 3)) if t == "Lucas starts"));
        let body = json!({"text": "Lucas", "meta_info": {"completion_tokens": 1}});
        assert!(matches!(parse_generation(Api::Sglang, &body), Ok((t, 1)) if t == "Lucas"));
        assert_eq!(server_message(r#"{"error": {"message": "This model's maximum context length is 8192 tokens", "code": 400}}"#), "This model's maximum context length is 8192 tokens");
        assert_eq!(server_message(r#"{"object": "error", "message": "prompt_logprobs is not supported"}"#), "prompt_logprobs is not supported");
        assert_eq!(server_message("Internal Server Error"), "Internal Server Error");
    }
}

//! Chat templates: the Jinja template a model ships (`chat_template.jinja`, or `chat_template`
//! in tokenizer_config.json, a string or a list of named templates) rendered with minijinja
//! the way transformers' `apply_chat_template` does (trim_blocks, lstrip_blocks, Python string
//! methods, `raise_exception`, `strftime_now`, special tokens in the context).
//!
//! Models without a template get the plain template: each user or system turn is its content
//! and a newline, each assistant turn its content and the EOS token.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: Option<minijinja::Environment<'static>>,
    pub bos_token: String,
    pub eos_token: String,
    specials: Vec<(String, String)>,
    /// Extra variables for the template (transformers' `apply_chat_template(..., **kwargs)`),
    /// such as Qwen3's `enable_thinking`.
    kwargs: serde_json::Map<String, Value>,
    /// Where the template came from, for errors.
    origin: String,
}

/// The most template instructions one render may run: real chat templates take a few
/// thousand per conversation; a template that loops without end stops here with an error.
const TEMPLATE_FUEL: u64 = 50_000_000;

/// The most bytes one render may write: a conversation is read with at most 1 MiB per record,
/// and real templates add a few markers per message; fuel alone (50M steps, each of which may
/// write a long literal) would allow gigabytes.
const MAX_RENDER_BYTES: usize = 16 << 20;

/// The most memory one render may hold beyond what it frees: its output (`MAX_RENDER_BYTES`)
/// and the strings a template builds in variables, which neither fuel nor the output bound
/// limits (`{% set x = x ~ x %}` doubles per step).
const MAX_RENDER_MEMORY: usize = 256 << 20;

/// A render's output, refused past `MAX_RENDER_BYTES`.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    /// Past the bound, takes what fits and fails (the render stops; `render` says why).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_RENDER_BYTES - self.0.len();
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        if buf.len() >= room {
            return Err(std::io::Error::other("the render's output bound"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let origin = if jinja.exists() { jinja.display().to_string() } else { cfg_path.display().to_string() };
        let source = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            }
        };
        let mut specials = vec![];
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = token_text(cfg.get(key)) {
                specials.push((key.to_string(), t));
            }
        }
        let get = |k: &str| specials.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let (bos_token, eos_token) = (get("bos_token"), get("eos_token"));
        let env = match source {
            Some(src) => Some(environment(src).with_context(|| format!("{}: chat template does not compile", dir.display()))?),
            None => None,
        };
        Ok(Self { env, bos_token, eos_token, specials, kwargs: Default::default(), origin })
    }

    /// The same template rendered with these extra variables (they win over the special
    /// tokens' names, as in transformers; `messages` and `add_generation_prompt` are refused).
    pub fn with_kwargs(mut self, kwargs: &std::collections::BTreeMap<String, Value>) -> Result<Self> {
        for (k, v) in kwargs {
            anyhow::ensure!(k != "messages" && k != "add_generation_prompt", "chat_template_kwargs: {k:?} is set by tokbridge itself");
            self.kwargs.insert(k.clone(), v.clone());
        }
        Ok(self)
    }

    pub fn has_template(&self) -> bool {
        self.env.is_some()
    }

    /// Renders `messages`; with `add_generation_prompt`, ends with the assistant header.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(messages
                .iter()
                .map(|m| if m.role == "assistant" { format!("{}{}", m.content, self.eos_token) } else { format!("{}\n", m.content) })
                .collect());
        };
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), serde_json::to_value(messages)?);
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        for (k, v) in &self.specials {
            ctx.insert(k.clone(), Value::String(v.clone()));
        }
        ctx.extend(self.kwargs.clone());
        let tmpl = env.get_template("chat")?;
        let mut out = Capped(Vec::new());
        let rendered = {
            let _budget = crate::membound::Budget::new(MAX_RENDER_MEMORY, &format!("{}: rendering the chat template: it used more than {} MiB of memory", self.origin, MAX_RENDER_MEMORY >> 20));
            tmpl.render_captured_to(minijinja::Value::from_serialize(&ctx), &mut out)
        };
        anyhow::ensure!(out.0.len() < MAX_RENDER_BYTES, "{}: rendering the chat template: the output is longer than {} MiB", self.origin, MAX_RENDER_BYTES >> 20);
        rendered.map_err(|e| anyhow::anyhow!("{}: rendering the chat template: {e:#}", self.origin))?;
        String::from_utf8(out.0).map_err(|_| anyhow::anyhow!("{}: the chat template rendered invalid UTF-8", self.origin))
    }
}

fn environment(source: String) -> Result<minijinja::Environment<'static>> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_template_owned("chat", source)?;
    Ok(env)
}

/// Today's date (UTC) for the `%d %b %B %Y %m %y %A`-style formats chat templates use.
fn strftime_now(fmt: &str) -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86400).unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%y", &format!("{:02}", y % 100))
        .replace("%B", month)
        .replace("%b", &month[..3])
        .replace("%A", weekday)
        .replace("%a", &weekday[..3])
}

/// Refuses a conversation that a chat template cannot sensibly render.
pub fn check_roles(messages: &[Message]) -> Result<()> {
    for m in messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            bail!("unknown role {:?} (use system, user, assistant or tool)", m.role);
        }
    }
    Ok(())
}

//! The teacher: in this process (a frozen `Side`) or behind an inference server
//! (`crate::served`), its view of a rollout (the conversation in its own template, the
//! student's response text, its end-of-turn token), and its scoring pass (log q of every
//! response token, and what the full-distribution losses keep).
use crate::data;
use crate::hf::chat::Message;
use crate::models::Model;
use crate::recipes::side::{end_of_turn, Side};
use crate::served::Served;
use anyhow::{Context, Result};
use tch::Device;

/// Where the teacher runs: in this process, or behind an inference server that scores token ids.
// One per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Engine {
    Local(Model),
    Served(Served),
}

impl Engine {
    /// The in-process model, for the passes that need the teacher's distributions or hidden states.
    pub fn local(&self) -> Result<&Model> {
        match self {
            Engine::Local(m) => Ok(m),
            Engine::Served(s) => anyhow::bail!("teacher.server: this needs the teacher's weights in this process, and {} serves it", s.spec.url),
        }
    }
}

pub type Teacher = Side<Engine>;

impl Side {
    /// This side as a teacher that runs in this process (frozen as it is).
    pub fn into_teacher(self) -> Teacher {
        Side { model: Engine::Local(self.model), tok: self.tok, chat: self.chat, eot: self.eot, same_vocab: self.same_vocab }
    }
}

impl Teacher {
    pub fn device(&self) -> Device {
        match &self.model {
            Engine::Local(m) => m.device(),
            Engine::Served(_) => Device::Cpu,
        }
    }
}

/// The teacher's ids, the index of its first response token, the byte piece of each response
/// token, and whether a token straddles the prompt/response boundary.
pub(super) type TeacherSequence = (Vec<i64>, usize, Vec<Vec<u8>>, bool);

/// The teacher sees its own rendering of the conversation, the student's response bytes and,
/// if the student ended its turn, its own end-of-turn token. Returns the ids, the index of the
/// first response token, the byte piece of each response token, and whether a token straddles
/// the prompt/response boundary (its chunk is then masked).
pub(super) fn teacher_sequence<M>(teacher: &Side<M>, messages: &[Message], body_ids: &[i64], body: &[u8], finished: bool) -> Result<TeacherSequence> {
    let table = teacher.tok.pieces();
    if teacher.same_vocab {
        let mut ids = data::prompt_ids(&teacher.tok, &teacher.chat, messages)?;
        let start = ids.len();
        ids.extend_from_slice(body_ids);
        if finished {
            ids.push(teacher.eot);
        }
        let pieces = ids[start..].iter().map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
        return Ok((ids, start, pieces, false));
    }
    let prompt = teacher.chat.render(messages, true)?;
    let mut text = prompt.clone();
    text.push_str(&String::from_utf8_lossy(body));
    let (mut ids, offsets) = teacher_encode(teacher, &text)?;
    let plen = prompt.len();
    // Added special tokens (BOS) have empty offsets (0, 0): they belong to the prompt.
    let start = offsets.iter().position(|&(s, e)| e > plen || (s >= plen && e > s)).unwrap_or(ids.len());
    let mut pieces: Vec<Vec<u8>> = ids[start..].iter().map(|&i| table.bytes.get(i as usize).cloned().unwrap_or_default()).collect();
    let straddle = start < ids.len() && offsets[start].0 < plen;
    if straddle {
        // Keep only the response bytes of the token that crosses the boundary.
        pieces[0] = text.as_bytes()[plen..offsets[start].1].to_vec();
    }
    if finished {
        ids.push(teacher.eot);
        pieces.push(table.bytes.get(teacher.eot as usize).cloned().unwrap_or_default());
    }
    Ok((ids, start, pieces, straddle))
}

/// The teacher's ids of a rendered conversation `text` with byte offsets: its template's text
/// as it is, or, with the plain template, with the tokenizer's own special tokens (BOS).
pub fn teacher_encode<M>(teacher: &Side<M>, text: &str) -> Result<(Vec<i64>, crate::hf::tokenizer::Offsets)> {
    if teacher.chat.has_template() {
        return teacher.tok.encode_with_offsets(text);
    }
    let enc = teacher.tok.inner.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    Ok((enc.get_ids().iter().map(|&i| i as i64).collect(), enc.get_offsets().to_vec()))
}

/// The teacher: loaded here (frozen), or a client of its server with its tokenizer and chat
/// template from `spec.tokenizer`.
pub fn load_teacher(spec: &crate::spec::ModelSpec, device: &str) -> Result<Teacher> {
    let Some(server) = &spec.server else {
        let mut side = crate::recipes::side::load(spec, device)?;
        side.model.vs.freeze();
        return Ok(side.into_teacher());
    };
    let name = spec.tokenizer.as_deref().context("teacher.tokenizer: a served teacher needs its tokenizer")?;
    let (tok, chat) = crate::recipes::side::tokenizer_of(spec)?;
    let eot = end_of_turn(&tok, &chat).with_context(|| format!("teacher tokenizer {name}"))?;
    crate::info!("teacher served at {} ({:?} API), tokenizer {name}", server.endpoint(), server.api);
    Ok(Side { model: Engine::Served(Served::new(server)?), tok, chat, eot, same_vocab: false })
}

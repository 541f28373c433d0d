//! Chat templates against transformers' `apply_chat_template` on every fixture that has one,
//! and the response mask of training examples.
mod common;

use tokbridge::data::{self, Example};
use tokbridge::hf::chat::{ChatTemplate, Message};
use tokbridge::hf::tokenizer::Tokenizer;

#[derive(serde::Deserialize)]
struct ChatRef {
    messages: Vec<Message>,
    prompt_text: String,
    prompt_ids: Vec<i64>,
    full_text: String,
}

fn chat_ref(dir: &std::path::Path) -> Option<ChatRef> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    v.get("chat").map(|c| serde_json::from_value(c.clone()).unwrap())
}

#[test]
fn templates_render_as_transformers_does() {
    let mut checked = 0;
    for dir in common::model_dirs() {
        let Some(r) = chat_ref(&dir) else { continue };
        let chat = ChatTemplate::load(&dir).unwrap();
        let tok = Tokenizer::load(&dir).unwrap();
        assert!(chat.has_template(), "{}", dir.display());
        assert_eq!(chat.render(&r.messages[..3], true).unwrap(), r.prompt_text, "{}", dir.display());
        assert_eq!(chat.render(&r.messages, false).unwrap(), r.full_text, "{}", dir.display());
        assert_eq!(data::prompt_ids(&tok, &chat, &r.messages[..3]).unwrap(), r.prompt_ids, "{}", dir.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} fixtures have chat references");
}

#[test]
fn only_assistant_turns_are_targets() {
    for dir in common::model_dirs() {
        let Some(r) = chat_ref(&dir) else { continue };
        let chat = ChatTemplate::load(&dir).unwrap();
        let tok = Tokenizer::load(&dir).unwrap();
        let e = data::encode(&tok, &chat, &Example { messages: r.messages.clone() }, 10_000).unwrap();
        let targets: Vec<i64> = e.ids.iter().zip(&e.target).filter(|(_, &t)| t).map(|(&i, _)| i).collect();
        let context: Vec<i64> = e.ids.iter().zip(&e.target).filter(|(_, &t)| !t).map(|(&i, _)| i).collect();
        let t = tok.decode(&targets, false).unwrap();
        let c = tok.decode(&context, false).unwrap();
        assert!(t.contains("12 + 30 = 42.") && t.contains("#### 84"), "{}: targets {t:?}", dir.display());
        assert!(!t.contains("What is") && c.contains("What is 12 + 30?") && c.contains("And 42 * 2?"), "{}: context {c:?}", dir.display());
        // The whole sequence is the template's rendering of the conversation.
        assert_eq!(tok.decode(&e.ids, false).unwrap().replace(' ', ""), r.full_text.replace(' ', ""), "{}", dir.display());
    }
}

#[test]
fn plain_template_without_a_chat_template() {
    let dir = common::fixtures().join("gpt2");
    let chat = ChatTemplate::load(&dir).unwrap();
    assert!(!chat.has_template());
    let msgs = vec![Message::new("user", "What is 2 + 2?"), Message::new("assistant", "#### 4")];
    assert_eq!(chat.render(&msgs, false).unwrap(), "What is 2 + 2?\n#### 4<|endoftext|>");
    let tok = Tokenizer::load(&dir).unwrap();
    let e = data::encode(&tok, &chat, &Example { messages: msgs }, 10_000).unwrap();
    let targets: Vec<i64> = e.ids.iter().zip(&e.target).filter(|(_, &t)| t).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&targets, false).unwrap(), "#### 4<|endoftext|>");
}

/// `chat_template_kwargs` reach the template as transformers' `apply_chat_template(...,
/// **kwargs)` passes them: Qwen3's switch (its template's own lines) and a kwarg that
/// overrides a special token. The expected strings are what transformers 5.23.0 printed for
/// this template and these kwargs.
#[test]
fn chat_template_kwargs_are_template_variables() {
    let tmp = common::tempdir::TempDir::new();
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{%- for message in messages %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}",
    )
    .unwrap();
    std::fs::write(tmp.path().join("tokenizer_config.json"), r#"{"eos_token": "<|im_end|>"}"#).unwrap();
    let messages = [Message::new("user", "What is 2 + 2?")];
    let kwargs = |v: serde_json::Value| -> std::collections::BTreeMap<String, serde_json::Value> { serde_json::from_value(v).unwrap() };
    let render = |k: serde_json::Value| ChatTemplate::load(tmp.path()).unwrap().with_kwargs(&kwargs(k)).unwrap().render(&messages, true).unwrap();
    let plain = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(render(serde_json::json!({})), plain);
    assert_eq!(render(serde_json::json!({"enable_thinking": true})), plain);
    assert_eq!(render(serde_json::json!({"enable_thinking": false})), format!("{plain}<think>\n\n</think>\n\n"));
    std::fs::write(tmp.path().join("chat_template.jinja"), "{{ eos_token }}|{{ bos_token }}").unwrap();
    assert_eq!(render(serde_json::json!({"eos_token": "X"})), "X|");
    let refused = ChatTemplate::load(tmp.path()).unwrap().with_kwargs(&kwargs(serde_json::json!({"messages": []})));
    assert!(refused.is_err_and(|e| e.to_string().contains("\"messages\" is set by tokbridge itself")));
}

/// `tokbridge preview`: the recipe's first examples as each model will see them, read the way
/// the recipe reads its data (here a Parquet file with other field names and an instruction),
/// the loss tokens marked, with the counts `data::encode` gives.
#[test]
fn preview_shows_each_model_its_rendered_examples() {
    use tokbridge::recipes::recipe::Recipe;
    let data = "{path: tests/fixtures/data/hub/arith/data/train-zstd.parquet, prompt: question, response: answer, prompt_suffix: ' Show your work.'}";
    let text = std::fs::read_to_string("recipes/sft/tiny.yaml").unwrap();
    let sft = Recipe::parse(&text, &[format!("data.train={data}")]).unwrap();
    let shown = tokbridge::recipes::preview::preview(&sft, 1).unwrap();
    let dir = std::path::Path::new("tests/fixtures/models/llama");
    let (tok, chat) = (Tokenizer::load(dir).unwrap(), ChatTemplate::load(dir).unwrap());
    let mut ex = data::read_jsonl(std::path::Path::new("tests/fixtures/data/arith_train.jsonl"), Some(1)).unwrap().remove(0);
    ex.messages[0].content.push_str(" Show your work.");
    let e = data::encode(&tok, &chat, &ex, 256).unwrap();
    assert!(shown.contains(&format!("model tests/fixtures/models/llama ({} tokens, {} loss tokens):", e.ids.len(), e.n_targets())), "{shown}");
    assert!(shown.contains("How many apples are left over? Show your work.<|eot_id|>"), "{shown}");
    assert!(shown.contains(&format!("<|end_header_id|>\n\n⟦{}<|eot_id|>⟧", ex.response().unwrap())), "{shown}");
    let text = std::fs::read_to_string("recipes/opd/tiny.yaml").unwrap();
    let opd = Recipe::parse(&text, &[format!("data.train={data}")]).unwrap();
    let shown = tokbridge::recipes::preview::preview(&opd, 2).unwrap();
    assert_eq!(shown.matches("teacher tests/fixtures/models/qwen3 (").count(), 2, "{shown}");
    assert!(shown.contains("Show your work.<|im_end|>\n<|im_start|>assistant\n"), "{shown}");
}

//! A teacher served by a real inference server: llama-cpp-python's OpenAI-compatible server,
//! started here on the loopback address with the real SmolLM2-135M-Instruct GGUF (Q4_1) and
//! stopped after. The server and the GGUF come from PyPI through scripts/assets.py (the server's
//! llama.cpp is compiled once and its wheel cached); a test skips, loudly, only when the
//! registry cannot be reached.
//!
//! Shown: the server's log-probs of a teacher view equal tokbridge's own scores of the
//! converted GGUF within the quantized kernels' tolerance; OPD steps with the served teacher
//! align and count chunks exactly as with the teacher in this process; a server killed
//! mid-run stops the run with one line naming the URL and the rollout, and the run resumes.
mod common;

use common::tempdir::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokbridge::served::{Api, Served, ServerSpec};

/// One test at a time: each starts a server with two threads beside a tokbridge process, and
/// on two cores they would only slow each other down.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The python of the llama-cpp-python server's environment and the SmolLM2 GGUF, or None
/// (after saying so on stderr) when the registry cannot be reached.
fn assets() -> Option<(PathBuf, PathBuf)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/assets.py");
    let mut got = vec![];
    for args in [["server", "llama-cpp-python"], ["gguf", "smollm2"]] {
        let out = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
        if out.status.code() == Some(2) {
            eprintln!("\n*** SKIPPING served-teacher test: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        assert!(out.status.success(), "assets.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        got.push(PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim()));
    }
    Some((got[0].clone(), got[1].clone()))
}

/// A running llama-cpp-python server, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(python: &Path, gguf: &Path, port: u16, log: &Path) -> Server {
        let log = std::fs::File::create(log).expect("server log");
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--logits_all", "true", "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smollm2"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the server starts");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while ureq::get(&format!("{url}/v1/models")).call().is_err() {
            assert!(started.elapsed() < Duration::from_secs(120), "the server did not answer within 120 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

fn converted(gguf: &Path, tmp: &TempDir) -> PathBuf {
    let out = tmp.path().join("smollm2");
    common::ok(common::tokbridge(&["convert", "--gguf", gguf.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    out
}

/// The teacher view of a chat: SmolLM2's template around a question and an answer.
fn teacher_view(tok: &tokbridge::hf::tokenizer::Tokenizer, dir: &Path) -> (Vec<i64>, usize) {
    use tokbridge::hf::chat::{ChatTemplate, Message};
    let chat = ChatTemplate::load(dir).unwrap();
    let prompt = chat.render(&[Message::new("user", "Tom has 341 apples and buys 980 more. How many apples does he have?")], true).unwrap();
    let answer = "Tom has 341 + 980 = 1321 apples.\n#### 1321";
    let ids = tok.encode(&format!("{prompt}{answer}"), false).unwrap();
    let start = tok.encode(&prompt, false).unwrap().len();
    (ids, start)
}

#[test]
fn served_log_probs_match_the_converted_model() {
    let _one = serial();
    let Some((python, gguf)) = assets() else { return };
    let tmp = TempDir::new();
    let dir = converted(&gguf, &tmp);
    let server = Server::start(&python, &gguf, free_port(), &tmp.path().join("server.log"));
    let (model, tok) = tokbridge::models::load_spec(dir.to_str().unwrap(), tch::Device::Cpu, tch::Kind::Float, None, None).unwrap();
    let (ids, start) = teacher_view(&tok, &dir);
    let ours: Vec<f32> = {
        let t = tch::Tensor::from_slice(&ids).unsqueeze(0);
        let lp = tokbridge::train::token_logprobs(&model.logits(&t), &t);
        Vec::<f32>::try_from(lp.get(0).narrow(0, 0, ids.len() as i64 - 1)).unwrap()
    };
    let spec = ServerSpec { url: server.url.clone(), model: Some("smollm2".into()), api: Api::LlamaCppPython, timeout_s: 60.0, max_concurrency: 2, retries: 0 };
    let served = Served::new(&spec).unwrap();
    // The response's tokens (llama-cpp-python gives no value for a BOS, nor for the token after
    // the first one).
    let (theirs, _) = served.score(&[&ids], &[start], &["parity".into()], &tok).unwrap();
    let theirs = &theirs[0];
    let ours = &ours[start - 1..];
    assert_eq!(theirs.len(), ours.len());
    let diffs: Vec<f32> = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0.0, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let response_sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
    eprintln!(
        "served vs in-process log-probs over the {} response tokens: max |diff| {max:.4}, mean {mean:.5}; response log q {:.3} vs {:.3}",
        diffs.len(),
        response_sum(theirs),
        response_sum(ours)
    );
    // llama.cpp multiplies the Q4_1 weights with activations it quantizes to 8 bits; tokbridge
    // runs the dequantized weights in float32.
    // Measured: max 0.44, mean 0.036 nats over 26 tokens. A pairing one token off is nats away.
    assert!(max < 0.75 && mean < 0.06, "max {max}, mean {mean}: {diffs:?}");
}

/// An OPD recipe: the tiny llama fixture student learns from SmolLM2, in this process or at
/// `url`. The learning rate is tiny so that every step samples the same rollouts either way and
/// the teacher side alone can differ.
fn opd_recipe(dir: &Path, teacher: &Path, url: Option<&str>, steps: usize) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let teacher = match url {
        None => format!("teacher: {{path: {}}}", teacher.display()),
        Some(u) => format!("teacher: {{tokenizer: {}, server: {{url: \"{u}\", api: llama_cpp_python, model: smollm2, timeout_s: 120, retries: 1, max_concurrency: 4}}}}", teacher.display()),
    };
    format!(
        "recipe: opd\nseed: 3\noutput_dir: {}\nstudent: {{path: {root}/tests/fixtures/models/llama}}\n{teacher}\ndata: {{train: {root}/tests/fixtures/data/arith_train.jsonl}}\nrollout: {{max_new_tokens: 24}}\noptimizer: {{lr: 1.0e-9}}\ntraining: {{steps: {steps}, prompts_per_step: 4, micro_batch_size: 4, checkpoint_every: 1}}\nlogging: {{tensorboard: false}}\n",
        dir.display()
    )
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("opd/teacher_tokens").is_some()).collect()
}

fn run_recipe(path: &Path, resume: bool) -> std::process::Output {
    let mut args = vec!["run", path.to_str().unwrap()];
    if resume {
        args.push("--resume");
    }
    common::tokbridge(&args)
}

#[test]
fn opd_with_a_served_teacher_aligns_as_in_process_and_survives_the_server_dying() {
    let _one = serial();
    let Some((python, gguf)) = assets() else { return };
    let tmp = TempDir::new();
    let teacher = converted(&gguf, &tmp);
    let port = free_port();
    let log = tmp.path().join("server.log");
    let server = Server::start(&python, &gguf, port, &log);

    // The same steps with the teacher here and served.
    let (local, served) = (tmp.path().join("local"), tmp.path().join("served"));
    for (dir, url) in [(&local, None), (&served, Some(server.url.as_str()))] {
        let recipe = tmp.path().join(format!("{}.yaml", dir.file_name().unwrap().to_str().unwrap()));
        std::fs::write(&recipe, opd_recipe(dir, &teacher, url, 2)).unwrap();
        common::ok(run_recipe(&recipe, false));
    }
    let (a, b) = (metrics(&local), metrics(&served));
    assert_eq!((a.len(), b.len()), (2, 2));
    for (x, y) in a.iter().zip(&b) {
        for key in ["opd/chunks_one_to_one", "opd/chunks_multi_token", "opd/masked_fraction", "opd/teacher_tokens", "opd/response_length", "opd/truncated_rate"] {
            assert_eq!(x[key], y[key], "{key} at step {}", x["step"]);
        }
        let (p, q) = (x["opd/teacher_logprob"].as_f64().unwrap(), y["opd/teacher_logprob"].as_f64().unwrap());
        eprintln!("step {}: teacher log-prob per token in-process {p:.4}, served {q:.4}; teacher time {:.3} s vs {:.3} s", x["step"], x["time/teacher_s"], y["time/teacher_s"]);
        // The student is random, so its samples are text the teacher finds unlikely (about −16
        // nats per token), where the quantized kernels' error is largest: 1% of it is allowed.
        assert!((p - q).abs() < 0.01 * p.abs() + 0.02, "teacher log-prob per token {p} vs {q}");
    }

    // The server dies during a run: the run stops with one line naming the server and a
    // rollout, keeps its checkpoints, and resumes once the server is back.
    let dir = tmp.path().join("killed");
    let recipe = tmp.path().join("killed.yaml");
    std::fs::write(&recipe, opd_recipe(&dir, &teacher, Some(&server.url), 4)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tokbridge")).args(["run", recipe.to_str().unwrap()]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while metrics(&dir).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(300), "no step within 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(!out.status.success(), "the run went on without its teacher: {stderr}");
    assert!(last.starts_with(&format!("error: teacher server http://127.0.0.1:{port}/v1/completions: rollout ")) && last.contains("(after 2 tries)"), "{last}");
    let done = metrics(&dir).len();
    assert!((1..4).contains(&done), "{done} steps before the error");
    let _server = Server::start(&python, &gguf, port, &log);
    common::ok(run_recipe(&recipe, true));
    let steps: Vec<i64> = metrics(&dir).iter().map(|v| v["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, (1..=4).collect::<Vec<_>>());
}

/// An answer recorded from the server (tests/fixtures/served/llama_cpp_python_smollm2.json):
/// both BOS tokens (`<|im_start|>`) are left out of its echo, the special `<|im_end|>` echoes
/// as empty text, one generated token follows, and every value lands on its token.
#[test]
fn a_recorded_llama_cpp_python_answer_parses() {
    let Some((_, gguf)) = assets() else { return };
    let tmp = TempDir::new();
    let tok = tokbridge::hf::tokenizer::Tokenizer::load(&converted(&gguf, &tmp)).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/served/llama_cpp_python_smollm2.json");
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids: Vec<i64> = recorded["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let text = recorded["request"]["prompt"].as_str().unwrap();
    assert_eq!(tok.encode(text, false).unwrap(), ids, "our tokenization of the recorded prompt");
    let got = tokbridge::served::parse_scores(Api::LlamaCppPython, &recorded["answer"], &ids, &tok).unwrap();
    let none: Vec<usize> = (0..ids.len()).filter(|&i| got[i].is_none()).collect();
    assert_eq!(none, [0, 1, 15], "BOS at 0 and 15, and the first echoed token, have no value");
    // "\n" after "user", "ass" after the second BOS, "." and the closing <|im_end|>.
    for (i, want) in [(2, -3.3214938640594482), (16, -0.011563421227037907), (29, -2.017491579055786), (30, -0.8345536589622498)] {
        assert!(got[i].is_some_and(|v| (v - want).abs() < 1e-12), "token {i}: {:?} against {want}", got[i]);
    }
}

/// The SFT baseline's answers from a served teacher: `teacher_responses` has the server sample
/// them (greedy here) and counts the tokens it generated.
#[test]
fn teacher_responses_come_from_the_server() {
    let _one = serial();
    let Some((python, gguf)) = assets() else { return };
    let tmp = TempDir::new();
    let teacher = converted(&gguf, &tmp);
    let server = Server::start(&python, &gguf, free_port(), &tmp.path().join("server.log"));
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tmp.path().join("answers");
    let recipe = tmp.path().join("answers.yaml");
    std::fs::write(
        &recipe,
        format!(
            "recipe: teacher_responses\noutput_dir: {}\nteacher: {{tokenizer: {}, server: {{url: \"{}\", api: llama_cpp_python, max_concurrency: 2}}}}\ndata: {{prompts: {root}/tests/fixtures/data/arith_train.jsonl, max_examples: 3}}\nsampling: {{temperature: 0.0, max_new_tokens: 24}}\nbatch_size: 2\n",
            out.display(),
            teacher.display(),
            server.url
        ),
    )
    .unwrap();
    common::ok(run_recipe(&recipe, false));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("responses.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["response"].as_str().is_some_and(|r| !r.trim().is_empty())), "{lines:?}");
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    let generated = stats["generated_tokens"].as_u64().unwrap();
    assert!(stats["prompts"] == 3 && (3..=72).contains(&generated), "{stats}");
    eprintln!("served answers: {generated} tokens; first: {:?}", lines[0]["response"]);
}

//! Resolving a model spec (a local directory or a hub id such as `Qwen/Qwen3-0.6B`) to a
//! directory in Hugging Face layout, and a dataset path (a local file, or the file-system URL
//! `hf://datasets/openai/gsm8k/main/train-*.parquet`) to its files.
//!
//! Hub ids are looked up in the standard cache first (`$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`; `models--org--name/refs/<revision>` -> `snapshots/<sha>`),
//! with no network. Only when files are missing and `HF_HUB_OFFLINE` is not set does hf-hub
//! download them into that same cache. hf-hub itself reads neither `HF_HUB_CACHE` nor
//! `HF_HUB_OFFLINE`, so both are handled here.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The files a model directory needs, besides the weights.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 4] = ["generation_config.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"];

pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Ok(home) = std::env::var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

fn offline() -> bool {
    matches!(std::env::var("HF_HUB_OFFLINE").as_deref(), Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes") | Ok("ON") | Ok("on"))
}

/// The files of `dir` that a model needs and that are absent.
fn missing_files(dir: &Path, weights: bool) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED.iter().filter(|f| !dir.join(f).exists()).map(|f| f.to_string()).collect();
    if !weights {
        return missing;
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let shards = std::fs::read_to_string(&index)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["weight_map"].as_object().map(|m| m.values().filter_map(|s| s.as_str().map(String::from)).collect::<Vec<_>>()))
            .unwrap_or_default();
        let mut shards: Vec<String> = shards.into_iter().filter(|s| !dir.join(s).exists()).collect();
        shards.sort();
        shards.dedup();
        missing.extend(shards);
    } else if !dir.join("model.safetensors").exists() {
        missing.push("model.safetensors (or model.safetensors.index.json)".into());
    }
    missing
}

/// A name of a hub id or a revision: letters, digits, `-`, `_` and `.`, and neither `.` nor
/// `..`, so that it cannot leave the cache's folder for the repo.
fn hub_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Refuses a hub id `org/name` or a revision (names joined by `/`, as `refs/pr/1`) that could
/// climb out of the cache or the repo, before any file is opened.
fn check_hub_id(what: &str, spec: &str, repo: &str, revision: &str) -> Result<()> {
    let parts: Vec<&str> = repo.split('/').collect();
    anyhow::ensure!(parts.len() == 2 && parts.iter().all(|p| hub_name(p) && !p.contains("--")), "{what} {spec:?}: not a directory and not a hub id of the form org/name (letters, digits, -, _ and .)");
    anyhow::ensure!(revision.split('/').all(hub_name), "{what} {spec:?}: revision {revision:?} is not a branch, tag or commit name (letters, digits, -, _, . and /, no empty, . or .. part)");
    Ok(())
}

/// Refuses a file path inside a hub repo with an empty, `.` or `..` part, a backslash, a
/// `%` escape or a control character: it must name a file of the repo.
fn check_repo_file(spec: &str, file: &str) -> Result<()> {
    let ok = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.chars().any(|c| c == '\\' || c == '%' || c.is_control());
    anyhow::ensure!(file.split('/').all(ok), "dataset {spec:?}: the path {file:?} in the repo has an empty, . or .. part, a backslash, a % escape or a control character");
    Ok(())
}

/// Refuses a path hf-hub gave that does not lie inside the cache (a hub's answer can name
/// the snapshot; hf-hub 0.5 does not check it).
fn inside_cache(cache: &Path, path: PathBuf) -> Result<PathBuf> {
    let root = cache.canonicalize().unwrap_or_else(|_| cache.to_path_buf());
    let real = path.canonicalize().with_context(|| format!("{} (from the hub)", path.display()))?;
    anyhow::ensure!(real.starts_with(&root), "the hub's answer put {} outside the cache {}; refusing it", real.display(), root.display());
    Ok(path)
}

/// A hub repo through hf-hub, each file's commit checked before hf-hub fetches it.
struct HubRepo {
    api: hf_hub::api::sync::ApiRepo,
    /// `datasets/org/name` or `org/name`, as the hub's URLs name it.
    path: String,
    revision: String,
}

impl HubRepo {
    fn new(cache: &Path, dataset: bool, repo: &str, revision: &str) -> Result<Self> {
        use hf_hub::{Repo, RepoType};
        let api = hf_hub::api::sync::ApiBuilder::from_env().with_cache_dir(cache.to_path_buf()).build()?;
        let kind = if dataset { RepoType::Dataset } else { RepoType::Model };
        let path = if dataset { format!("datasets/{repo}") } else { repo.to_string() };
        Ok(Self { api: api.repo(Repo::with_revision(repo.to_string(), kind, revision.to_string())), path, revision: revision.to_string() })
    }

    /// `file`, from the cache or downloaded into it. First the hub is asked (HEAD, as hf-hub
    /// asks) which commit the file comes from: hf-hub 0.5 joins the `X-Repo-Commit` it is
    /// answered to the cache path unchecked, so `../../x` would write outside the cache. An
    /// answer that is not a commit name is refused; a failed request is left to hf-hub to report.
    fn get(&self, file: &str) -> Result<PathBuf> {
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let url = format!("{}/{}/resolve/{}/{file}", endpoint.trim_end_matches('/'), self.path, self.revision.replace('/', "%2F"));
        let agent: ureq::Agent = ureq::Agent::config_builder().max_redirects(0).http_status_as_error(false).timeout_global(Some(std::time::Duration::from_secs(30))).build().into();
        let mut request = agent.head(&url).header("Range", "bytes=0-0");
        if let Some(token) = hub_token() {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Ok(answer) = request.call() {
            if let Some(commit) = answer.headers().get("x-repo-commit") {
                let commit = String::from_utf8_lossy(commit.as_bytes());
                anyhow::ensure!(hub_name(&commit), "the hub at {endpoint} answered X-Repo-Commit {commit:?} for {file} of {}: not a commit name; refusing it", self.path);
            }
        }
        Ok(self.api.get(file)?)
    }
}

/// The token hf-hub would send: `HF_TOKEN`, else the token file of `HF_HOME`.
fn hub_token() -> Option<String> {
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/huggingface"));
    std::env::var("HF_TOKEN").ok().or_else(|| std::fs::read_to_string(home.join("token")).ok()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// The snapshot directory of a cached hub model, if its ref resolves.
fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    cached_repo(cache, "models", repo, revision)
}

/// The snapshot directory of a cached hub repo of a kind (`models`, `datasets`), if its ref resolves.
fn cached_repo(cache: &Path, kind: &str, repo: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("{kind}--{}", repo.replace('/', "--")));
    // A ref names a commit: anything else (a planted `../..`) is not followed.
    let sha = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok().filter(|s| hub_name(s.trim()));
    let snapshot = repo_dir.join("snapshots").join(sha.as_deref().map(str::trim).unwrap_or(revision));
    snapshot.is_dir().then_some(snapshot)
}

/// Resolves `spec` to a local model directory. `spec` is a directory, or `org/name[@revision]`.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    resolve_with(spec, true)
}

/// Like `resolve`, but only config and tokenizer files are needed (no weights are downloaded).
pub fn resolve_tokenizer(spec: &str) -> Result<PathBuf> {
    resolve_with(spec, false)
}

fn resolve_with(spec: &str, weights: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if path.exists() {
        bail!("model {spec:?}: not a directory and not a hub id of the form org/name");
    }
    check_hub_id("model", spec, repo, revision)?;
    let cache = cache_dir();
    if let Some(dir) = cached_snapshot(&cache, repo, revision) {
        if missing_files(&dir, weights).is_empty() {
            return Ok(dir);
        }
    }
    if offline() {
        let missing = cached_snapshot(&cache, repo, revision)
            .map(|d| missing_files(&d, weights).join(", "))
            .unwrap_or_else(|| "every file (the repo is not cached)".into());
        bail!("model {spec}: no such directory, and HF_HUB_OFFLINE is set and the cache {} lacks {missing} of hub id {repo}", cache.display());
    }
    download(&cache, repo, revision, weights).with_context(|| format!("model {spec}: no such directory, and no hub id {repo} in the cache {} (the download failed)", cache.display()))
}

/// Resolves a PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`): a directory,
/// or a hub id from the cache (downloaded into it unless `HF_HUB_OFFLINE` is set).
pub fn resolve_adapter(spec: &str) -> Result<PathBuf> {
    const FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];
    let path = Path::new(spec);
    if path.is_dir() {
        anyhow::ensure!(path.join(FILES[0]).is_file(), "adapter {spec}: no adapter_config.json there");
        return Ok(path.to_path_buf());
    }
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if path.exists() {
        bail!("adapter {spec:?}: not a directory and not a hub id of the form org/name");
    }
    check_hub_id("adapter", spec, repo, revision)?;
    let cache = cache_dir();
    let cached = cached_snapshot(&cache, repo, revision);
    if let Some(dir) = cached.as_ref().filter(|d| FILES.iter().all(|f| d.join(f).is_file())) {
        return Ok(dir.clone());
    }
    if offline() {
        bail!("adapter {spec}: no such directory, and HF_HUB_OFFLINE is set and the cache {} does not hold {} of hub id {repo}", cache.display(), FILES.join(" and "));
    }
    let fetch = || -> Result<PathBuf> {
        let repo = HubRepo::new(&cache, false, repo, revision)?;
        let config = inside_cache(&cache, repo.get(FILES[0])?)?;
        inside_cache(&cache, repo.get(FILES[1])?)?;
        Ok(config.parent().context("cache path without parent")?.to_path_buf())
    };
    fetch().with_context(|| format!("adapter {spec}: no such directory, and no hub id {repo} in the cache {} (the download failed)", cache.display()))
}

/// How a model directory is named for others (PEFT's `base_model_name_or_path`): its hub id
/// when it is a snapshot in the hub cache, else its path.
pub fn name_of(dir: &Path) -> String {
    let parts: Vec<String> = dir.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [.., repo, snapshots, _sha] if snapshots == "snapshots" => match repo.strip_prefix("models--").and_then(|r| r.split_once("--")) {
            Some((org, name)) => format!("{org}/{name}"),
            None => dir.display().to_string(),
        },
        _ => dir.display().to_string(),
    }
}

fn download(cache: &Path, repo: &str, revision: &str, weights: bool) -> Result<PathBuf> {
    let repo = HubRepo::new(cache, false, repo, revision)?;
    let config = inside_cache(cache, repo.get("config.json")?)?;
    let dir = config.parent().context("cache path without parent")?.to_path_buf();
    repo.get("tokenizer.json")?;
    for f in OPTIONAL {
        let _ = repo.get(f); // absent in many repos
    }
    if !weights {
        return Ok(dir);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let mut shards: Vec<&str> = v["weight_map"].as_object().context("index without weight_map")?.values().filter_map(|s| s.as_str()).collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(s)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors")?;
        }
    }
    Ok(dir)
}

/// The files of a dataset path, in name order: a local file; a local pattern with `*` in its
/// file name; or `hf://datasets/ORG/NAME[@REVISION]/PATH` (`*` allowed in the file name, a
/// revision's `/` written `%2F` as the hub's URLs do), taken from the hub cache and downloaded
/// into it unless `HF_HUB_OFFLINE` is set. A pattern on the hub is matched against the repo's
/// file list (one request), so a partly downloaded set of shards is completed, not used as it
/// is; offline, it matches the cached files.
pub fn dataset_files(spec: &str) -> Result<Vec<PathBuf>> {
    let Some(rest) = spec.strip_prefix("hf://") else {
        let path = Path::new(spec);
        if !spec.contains('*') {
            anyhow::ensure!(path.is_file(), "dataset {spec}: no such file");
            return Ok(vec![path.to_path_buf()]);
        }
        let files = matching(Path::new(""), spec).with_context(|| format!("dataset {spec}"))?;
        anyhow::ensure!(!files.is_empty(), "dataset {spec}: no file matches");
        return Ok(files);
    };
    let (repo, revision, file) = hub_dataset(spec, rest)?;
    let file = file.as_str();
    let cache = cache_dir();
    let cached = match cached_repo(&cache, "datasets", &repo, &revision) {
        Some(dir) if file.contains('*') => matching(&dir, file).with_context(|| format!("dataset {spec}"))?,
        Some(dir) => Some(dir.join(file)).filter(|p| p.is_file()).into_iter().collect(),
        None => vec![],
    };
    if !cached.is_empty() && (offline() || !file.contains('*')) {
        return Ok(cached);
    }
    if offline() {
        bail!("dataset {spec}: HF_HUB_OFFLINE is set and the cache {} holds no {file} of hub dataset {repo}", cache.display());
    }
    let fetch = || -> Result<Vec<PathBuf>> {
        let hub = HubRepo::new(&cache, true, &repo, &revision)?;
        let mut names = vec![file.to_string()];
        if file.contains('*') {
            names = hub.api.info()?.siblings.into_iter().map(|s| s.rfilename).filter(|f| glob(file, f)).collect();
            names.iter().try_for_each(|n| check_repo_file(spec, n))?;
            names.sort();
            anyhow::ensure!(!names.is_empty(), "no file of the repo matches {file}");
        }
        names.iter().map(|n| inside_cache(&cache, hub.get(n).with_context(|| format!("downloading {n}"))?)).collect()
    };
    fetch().with_context(|| match cached.len() {
        0 => format!("dataset {spec}: not in the cache {}, and the hub did not give it", cache.display()),
        n => format!("dataset {spec}: the hub did not list the files that match (the cache {} holds {n}; HF_HUB_OFFLINE=1 uses those)", cache.display()),
    })
}

/// `hf://datasets/ORG/NAME[@REVISION]/PATH` (given `rest`, after `hf://`) as its repo id,
/// revision and path in the repo, each checked so that joined to the cache they cannot leave it.
pub fn hub_dataset(spec: &str, rest: &str) -> Result<(String, String, String)> {
    let form = "a hub dataset is hf://datasets/ORG/NAME[@REVISION]/PATH";
    let Some(rest) = rest.strip_prefix("datasets/") else { bail!("dataset {spec}: {form}") };
    let mut parts = rest.splitn(3, '/');
    let (Some(org), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else { bail!("dataset {spec}: {form}") };
    let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
    let revision = revision.replace("%2F", "/").replace("%2f", "/");
    anyhow::ensure!(!org.is_empty() && !name.is_empty() && !file.is_empty() && !file.ends_with('/'), "dataset {spec}: {form}");
    let repo = format!("{org}/{name}");
    check_hub_id("dataset", spec, &repo, &revision)?;
    check_repo_file(spec, file)?;
    Ok((repo, revision, file.to_string()))
}

/// The files under `root` whose path relative to it matches `pattern` (`*` only in its file
/// name), sorted.
fn matching(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let pattern = Path::new(pattern);
    let dir = root.join(pattern.parent().unwrap_or(Path::new("")));
    let name = pattern.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    anyhow::ensure!(!pattern.parent().is_some_and(|d| d.to_string_lossy().contains('*')), "`*` may only appear in the file name");
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { &dir }) else { return Ok(vec![]) };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).filter(|e| glob(&name, &e.file_name().to_string_lossy())).map(|e| dir.join(e.file_name())).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters but `/`:
/// path component by component, each by the greedy wildcard match that backtracks only to the
/// last `*` (at most length × length steps; a recursive matcher is exponential in the stars).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), text.split('/').collect());
    p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| wildcard(&p.chars().collect::<Vec<_>>(), &t.chars().collect::<Vec<_>>()))
}

fn wildcard(p: &[char], t: &[char]) -> bool {
    let (mut i, mut j) = (0, 0);
    // The last `*` seen, and where in `t` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_shards_within_one_directory() {
        assert!(glob("train-*.parquet", "train-00000-of-00002.parquet"));
        assert!(glob("main/train-*", "main/train-00001-of-00002.parquet"));
        assert!(!glob("main/train-*", "main/test-00000-of-00001.parquet"));
        assert!(!glob("*.parquet", "main/train.parquet"), "`*` does not cross directories");
        assert!(glob("a*b*c", "a-b-b-c") && !glob("a*b*c", "a-c-b"));
        assert!(glob("*", "") && glob("a**", "a") && glob("*.jsonl", ".jsonl") && !glob("a*", "b"));
        // #36 item 13: the recursive matcher took exponential time in the stars here.
        let long = format!("{}c.jsonl", "a".repeat(4000));
        assert!(!glob("*a*a*a*a*a*a*a*a*a*a*a*a*b.jsonl", &long));
        assert!(glob("*a*a*a*a*a*a*a*a*a*a*a*a*c.jsonl", &long));
    }
}

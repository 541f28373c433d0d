//! Writing so that nothing is lost, clobbered or half-written: files and directories are
//! staged under a temporary sibling name (`NAME.tmpPID`), synced to disk, and published by one
//! rename (a directory replaces an older one by an atomic exchange where Linux offers it);
//! only a directory tokbridge wrote may be replaced; a run directory is held by an exclusive
//! lock for the life of the process; temporaries a killed process left are removed.
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Written into every exported or converted model directory: the mark that tokbridge may
/// replace it.
pub const MARKER: &str = ".tokbridge-export";

/// A sibling path for writing `path` atomically.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// A crash injected for tests (built with the `faults` feature only, as the tests build it):
/// when `TOKBRIDGE_FAULT` is `POINT:N`, the N-th time this process reaches `POINT` it aborts
/// as a kill -9 would, leaving whatever was written so far. Points: `checkpoint` (before a
/// checkpoint's rename), `latest` (before `checkpoints/latest` is replaced), `metrics` (before
/// a metrics record is written), `export` (before an export replaces its output).
#[cfg(feature = "faults")]
pub fn fault(point: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(spec) = std::env::var("TOKBRIDGE_FAULT") else { return };
    let Some((at, n)) = spec.split_once(':') else { return };
    if at != point {
        return;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.push(point.to_string());
    let count = seen.iter().filter(|p| *p == point).count();
    if n.parse() == Ok(count) {
        eprintln!("fault injected at {point} #{count}");
        std::process::abort();
    }
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn fault(_: &str) {}

/// Flushes a file or directory to disk.
fn sync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))
}

/// Flushes the directory that holds `path`, so a rename into it survives a power loss.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync(p),
        _ => sync(Path::new(".")),
    }
}

/// Flushes every file under `dir` and `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync(&path)?;
        }
    }
    sync(dir)
}

/// Publishes a finished temporary file at `path`: sync, rename, sync the directory.
pub fn publish_file(tmp: &Path, path: &Path) -> Result<()> {
    sync(tmp)?;
    std::fs::rename(tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    publish_file(&tmp, path)
}

/// The names an export or conversion writes (and `save_pretrained`): a directory holding
/// nothing else is a model folder, which `--force` may replace without the marker.
fn is_export_file(name: &str) -> bool {
    crate::files::MODEL_FILES.contains(&name)
        || name == "model.safetensors"
        || name == "model.safetensors.index.json"
        || name == "adapter_model.safetensors"
        || name == "adapter_config.json"
        || (name.starts_with("model-") && name.ends_with(".safetensors"))
        || name == MARKER
}

/// Refuses to replace `out` unless it is empty or a directory tokbridge wrote (its marker).
/// With `force`, a model folder without the marker (nothing but the files an export writes,
/// as `save_pretrained` leaves them) is replaced too; a folder holding anything else never is.
pub fn check_replaceable(out: &Path, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    ensure!(out.is_dir(), "{} exists and is not a directory; refusing to replace it", out.display());
    if out.join(MARKER).is_file() {
        return Ok(());
    }
    let mut empty = true;
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() || !is_export_file(&name) {
            bail!("{} holds {name:?}, which no export writes; refusing to replace a directory tokbridge did not write", out.display());
        }
        empty = false;
    }
    ensure!(
        empty || force,
        "{} holds a model that tokbridge did not write (no {MARKER} marker); refusing to replace it (export's and convert's --force replace it)",
        out.display()
    );
    Ok(())
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet (its
/// nearest existing ancestor is resolved and the rest appended).
pub fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut rest = vec![];
    let mut base = abs.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output directory that overlaps the source it is made from, or lies inside a
/// run's checkpoints (writing there would destroy a checkpoint a resume needs).
pub fn check_output(out: &Path, source: &Path) -> Result<()> {
    let (o, s) = (resolve(out), resolve(source));
    ensure!(!o.starts_with(&s) && !s.starts_with(&o), "--out {} overlaps its source {}; choose a directory outside it", out.display(), source.display());
    if let Some(a) = o.ancestors().find(|a| a.file_name().is_some_and(|n| n == "checkpoints") && a.join("latest").exists()) {
        bail!("--out {} is inside the checkpoints of run {}; choose a directory outside it", out.display(), a.parent().unwrap_or(a).display());
    }
    Ok(())
}

/// Publishes the finished directory `staged` at `out`, replacing a directory tokbridge wrote
/// there: the files are synced, the marker written, and the two swapped in one atomic
/// exchange (renameat2 RENAME_EXCHANGE on Linux), so `out` never goes missing. Where the
/// exchange is unsupported, `out` moves aside to `out.oldPID` first; `recover` puts it back if
/// the process dies between the two renames.
pub fn publish_dir(staged: &Path, out: &Path, force: bool) -> Result<()> {
    std::fs::write(staged.join(MARKER), "written by tokbridge; it may replace this directory\n")?;
    sync_tree(staged)?;
    if !out.exists() {
        std::fs::rename(staged, out).with_context(|| format!("renaming {} to {}", staged.display(), out.display()))?;
        return sync_parent(out);
    }
    check_replaceable(out, force)?;
    fault("export");
    if exchange(staged, out)? {
        // `staged` now holds the old directory.
        sync_parent(out)?;
        return std::fs::remove_dir_all(staged).with_context(|| format!("removing the replaced {}", staged.display()));
    }
    let old = aside_path(out, std::process::id());
    std::fs::rename(out, &old).with_context(|| format!("moving the old {} aside", out.display()))?;
    std::fs::rename(staged, out).with_context(|| format!("renaming {} to {}", staged.display(), out.display()))?;
    sync_parent(out)?;
    std::fs::remove_dir_all(&old).with_context(|| format!("removing the replaced {}", old.display()))
}

/// Writes a recipe's output directory in one piece: `fill` writes into a staging directory
/// beside `out`, which then replaces `out` (`publish_dir`). A folder tokbridge did not write
/// (a user's `train.jsonl`, say) is refused before any work and never overwritten.
pub fn publish_new(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_replaceable(out, false)?;
    let stage = tmp_path(out);
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let done = fill(&stage).and_then(|()| publish_dir(&stage, out, false));
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    done
}

fn aside_path(out: &Path, pid: u32) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".old{pid}"));
    out.with_file_name(name)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL byte", p.display()));
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 reads them and nothing else.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err).with_context(|| format!("exchanging {} and {}", a.display(), b.display())),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> Result<bool> {
    Ok(false)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid == std::process::id() || unsafe { libc::kill(pid as libc::pid_t, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// The pid in a temporary's name (`NAME.tmpPID`, `NAME.oldPID`), if it is one.
fn temp_pid(name: &str) -> Option<(&str, u32)> {
    for tag in [".tmp", ".old"] {
        if let Some(i) = name.rfind(tag) {
            let digits = &name[i + tag.len()..];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Some((&name[..i], digits.parse().ok()?));
            }
        }
    }
    None
}

/// Puts back an `out` that a process killed between the two renames of `publish_dir` left
/// only at `out.oldPID`, and removes the temporaries that dead processes left in `dir`.
pub fn clean_stale(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((base, pid)) = temp_pid(&name) else { continue };
        if pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        let original = dir.join(base);
        if name[base.len()..].starts_with(".old") && !original.exists() {
            std::fs::rename(&path, &original).with_context(|| format!("restoring {} from {}", original.display(), path.display()))?;
            eprintln!("restored {} (a replacement was interrupted)", original.display());
        } else if path.is_dir() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing the stale {}", path.display()))?;
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing the stale {}", path.display()))?;
        }
    }
    Ok(())
}

/// Cleans the temporaries around `path` (in its parent directory) before writing there.
pub fn clean_around(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => clean_stale(p),
        _ => clean_stale(Path::new(".")),
    }
}

/// An exclusive lock on a run directory, held until dropped; the OS releases it when the
/// process dies, so a crash never leaves a stale lock.
pub struct RunLock {
    _file: File,
}

/// Refuses a run's output directory that exists, holds files and was never a run directory
/// (every run directory has the `.lock` that `lock_dir` makes): a run writes `recipe.yaml`,
/// `metrics.jsonl`, checkpoints and its outputs there, and must not overwrite a file it did
/// not create (the user's recipe file, say).
pub fn check_run_dir(dir: &Path) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(dir) else { return Ok(()) };
    if dir.join(".lock").exists() {
        return Ok(());
    }
    if let Some(entry) = entries.next() {
        let name = entry?.file_name();
        bail!(
            "output_dir {} holds {name:?} and is not a tokbridge run directory (no .lock); a run writes recipe.yaml, metrics.jsonl, checkpoints and its outputs there and overwrites no file it did not create: choose a new or empty directory",
            dir.display()
        );
    }
    Ok(())
}

/// Locks `dir` (created if needed) for this process, or says which process holds it.
pub fn lock_dir(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!("{} is in use by another tokbridge process (pid {}); wait for it or choose another directory", dir.display(), holder.trim());
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(RunLock { _file: file })
}

/// Refuses output directories that would write into the current directory, a folder named
/// `null`, the root or the home directory.
pub fn check_output_dir(dir: &Path, key: &str) -> Result<()> {
    let text = dir.to_string_lossy();
    ensure!(!text.trim().is_empty() && text != "null" && text != "~", "{key} must name a directory (got {text:?})");
    let r = resolve(dir);
    ensure!(r.parent().is_some(), "{key} must not be the root directory");
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        ensure!(r != resolve(Path::new(&home)), "{key} must not be the home directory");
    }
    ensure!(r != resolve(Path::new(".")), "{key} must not be the current directory");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tokbridge-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temp_names_carry_their_pid() {
        assert_eq!(temp_pid("model.safetensors.tmp123"), Some(("model.safetensors", 123)));
        assert_eq!(temp_pid("export.old77"), Some(("export", 77)));
        assert_eq!(temp_pid("step-000004"), None);
        assert_eq!(temp_pid("a.tmp"), None);
        assert_eq!(temp_pid("a.tmp12x"), None);
    }

    #[test]
    fn only_a_directory_tokbridge_wrote_is_replaced() {
        let d = scratch("replace");
        let project = d.join("project");
        std::fs::create_dir_all(project.join("data")).unwrap();
        std::fs::write(project.join("config.json"), "{}").unwrap();
        std::fs::write(project.join("NOTES.md"), "mine").unwrap();
        let err = check_replaceable(&project, true).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        let staged = d.join("new");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("config.json"), "{\"v\": 2}").unwrap();
        assert!(publish_dir(&staged, &project, false).is_err());
        assert_eq!(std::fs::read_to_string(project.join("NOTES.md")).unwrap(), "mine", "nothing of the project is lost");
        // An export (marker) is replaced by the next one, atomically.
        let out = d.join("out");
        publish_dir(&staged, &out, false).unwrap();
        assert!(out.join(MARKER).exists() && !staged.exists());
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("config.json"), "{\"v\": 3}").unwrap();
        publish_dir(&staged, &out, false).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), "{\"v\": 3}");
        assert!(!staged.exists(), "the replaced directory is removed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_interrupted_replacement_is_restored_and_dead_temporaries_removed() {
        let d = scratch("stale");
        // A pid that cannot be alive: above the kernel's pid_max limit (2^22).
        let dead = 4_194_400u32;
        std::fs::create_dir_all(aside_path(&d.join("export"), dead)).unwrap();
        std::fs::write(aside_path(&d.join("export"), dead).join("config.json"), "old").unwrap();
        std::fs::create_dir_all(d.join(format!("export.tmp{dead}"))).unwrap();
        std::fs::write(d.join(format!("metrics.jsonl.tmp{dead}")), "x").unwrap();
        let mine = tmp_path(&d.join("live"));
        std::fs::write(&mine, "in progress").unwrap();
        clean_stale(&d).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("export/config.json")).unwrap(), "old", "the old directory is put back");
        assert!(!d.join(format!("export.tmp{dead}")).exists() && !d.join(format!("metrics.jsonl.tmp{dead}")).exists());
        assert!(mine.exists(), "a live process's temporary is kept");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn outputs_inside_the_source_or_a_runs_checkpoints_are_refused() {
        let d = scratch("overlap");
        let ckpts = d.join("run/checkpoints");
        std::fs::create_dir_all(ckpts.join("step-000012")).unwrap();
        std::fs::write(ckpts.join("latest"), "step-000012").unwrap();
        let src = d.join("model");
        std::fs::create_dir_all(&src).unwrap();
        assert!(check_output(&ckpts.join("step-000012"), &src).unwrap_err().to_string().contains("checkpoints"));
        assert!(check_output(&src.join("sub"), &src).unwrap_err().to_string().contains("overlaps"));
        assert!(check_output(&d, &src).unwrap_err().to_string().contains("overlaps"));
        check_output(&d.join("export"), &src).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_locked_directory_names_its_holder() {
        let d = scratch("lock");
        let held = lock_dir(&d).unwrap();
        let err = lock_dir(&d).err().expect("a second lock is refused").to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        lock_dir(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn output_dirs_that_would_clobber_are_refused() {
        for bad in ["", "null", "/", "."] {
            assert!(check_output_dir(Path::new(bad), "output_dir").is_err(), "{bad:?} accepted");
        }
        check_output_dir(Path::new("runs/x"), "output_dir").unwrap();
    }
}

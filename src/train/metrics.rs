//! Run metrics: one JSON object per line in `metrics.jsonl`, each written by one `write` call
//! (so a kill leaves at most a torn last line, which the next open drops), and the same
//! scalars as TensorBoard event files in `tb/`. A resumed run cuts both back to its
//! checkpoint's step: later lines of metrics.jsonl are dropped, and the new event file starts
//! with a SessionLog START at that step, on which TensorBoard purges the older file's later
//! events (its purge-on-restart). Events are built with tensorboard-rs's protos and record
//! writer but written here, on this thread, so a full disk is an error instead of a panic in
//! tensorboard-rs's writer thread. Progress bars for long phases.
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use protobuf::Message;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use tensorboard_proto::event::{Event, SessionLog, SessionLog_SessionStatus};
use tensorboard_rs::record_writer::RecordWriter;

/// Named metric values, in the order they are logged.
pub type Values = Vec<(String, f64)>;

pub struct Metrics {
    path: PathBuf,
    jsonl: File,
    tb: Option<(PathBuf, RecordWriter<File>)>,
}

/// The lines of a metrics.jsonl to keep when a run continues from step `resumed_at`
/// (None: a fresh run keeps nothing): complete lines of steps up to it; a torn last line or
/// anything that is not a metrics record is dropped.
pub fn kept_lines(text: &str, resumed_at: Option<usize>) -> String {
    let Some(at) = resumed_at else { return String::new() };
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= at))
        .collect()
}

impl Metrics {
    /// Opens `run_dir/metrics.jsonl` for a run that starts fresh (`resumed_at` None) or
    /// continues from a checkpoint at step `resumed_at`, and, when `tensorboard`, a new event
    /// file under `run_dir/tb`.
    pub fn open(run_dir: &Path, tensorboard: bool, resumed_at: Option<usize>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let kept = kept_lines(&old, resumed_at);
        if kept != old {
            crate::atomic::write(&path, &kept)?;
        }
        let jsonl = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let tb = if tensorboard {
            let dir = run_dir.join("tb");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if resumed_at.is_none() {
                // A fresh run: older event files belong to a run that is gone.
                for e in std::fs::read_dir(&dir)?.flatten() {
                    std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                }
            }
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let file = dir.join(format!("events.out.tfevents.{:010}.tokbridge.{}.0", secs as u64, std::process::id()));
            let f = File::create(&file).with_context(|| format!("creating {}", file.display()))?;
            let mut w = RecordWriter::new(f);
            let mut first = Event::new();
            first.set_wall_time(secs);
            first.set_file_version("brain.Event:2".into());
            write_event(&mut w, &first, &file)?;
            if let Some(step) = resumed_at {
                let mut start = Event::new();
                start.set_wall_time(secs);
                start.set_step(step as i64);
                let mut log = SessionLog::new();
                log.set_status(SessionLog_SessionStatus::START);
                start.set_session_log(log);
                write_event(&mut w, &start, &file)?;
            }
            Some((file, w))
        } else {
            None
        };
        Ok(Self { path, jsonl, tb })
    }

    /// Logs `values` at `step`: `{"step": step, name: value, ...}` and one scalar per name.
    pub fn log(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, v) in values {
            obj.insert(k.to_string(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into));
        }
        let line = format!("{}\n", serde_json::Value::Object(obj));
        crate::atomic::fault("metrics");
        self.jsonl.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        if let Some((file, w)) = &mut self.tb {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            for (k, v) in values {
                let mut e = Event::new();
                e.set_wall_time(secs);
                e.set_step(step as i64);
                e.set_summary(tensorboard_rs::summary::scalar(k, *v as f32));
                write_event(w, &e, file)?;
            }
            w.flush().with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    }
}

fn write_event(w: &mut RecordWriter<File>, e: &Event, file: &Path) -> Result<()> {
    let bytes = e.write_to_bytes().with_context(|| format!("encoding an event for {}", file.display()))?;
    w.write(&bytes).with_context(|| format!("writing {}", file.display()))
}

/// A progress bar on stderr (hidden when `show` is false or stderr is not a terminal).
pub fn progress(len: u64, prefix: &str, show: bool) -> ProgressBar {
    let bar = if show { ProgressBar::new(len) } else { ProgressBar::hidden() };
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::kept_lines;

    #[test]
    fn a_resume_keeps_complete_lines_up_to_its_checkpoint() {
        let text = "{\"step\":1,\"a\":1}\n{\"step\":2,\"a\":2}\n{\"step\":3,\"a\":3}\n{\"step\":3,\"e\":1}\n{\"step\":4,\"a\":";
        assert_eq!(kept_lines(text, Some(2)), "{\"step\":1,\"a\":1}\n{\"step\":2,\"a\":2}\n");
        assert_eq!(kept_lines(text, Some(3)).lines().count(), 4, "the torn last line is dropped");
        assert_eq!(kept_lines(text, None), "", "a fresh run keeps nothing");
        assert_eq!(kept_lines("{\"step\":1}\nnot json\n", Some(9)), "{\"step\":1}\n");
    }
}

//! Run metrics: one JSON object per line in `metrics.jsonl` (flushed each write, so a killed
//! run keeps what it logged) and the same scalars as TensorBoard event files through
//! tensorboard-rs in `tb/`. Progress bars for long phases.
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use tensorboard_rs::summary_writer::SummaryWriter;

pub struct Metrics {
    jsonl: File,
    tb: Option<SummaryWriter>,
}

impl Metrics {
    /// Appends to `run_dir/metrics.jsonl` (a resumed run continues the file) and, when
    /// `tensorboard`, writes a new event file under `run_dir/tb`.
    pub fn open(run_dir: &Path, tensorboard: bool) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let jsonl = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let tb = if tensorboard {
            let dir = run_dir.join("tb");
            // tensorboard-rs panics on I/O errors; create and check the directory first.
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(SummaryWriter::new(&dir))
        } else {
            None
        };
        Ok(Self { jsonl, tb })
    }

    /// Logs `values` at `step`: `{"step": step, name: value, ...}` and one scalar per name.
    pub fn log(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, v) in values {
            obj.insert(k.to_string(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into));
            if let Some(tb) = &mut self.tb {
                tb.add_scalar(k, *v as f32, step);
            }
        }
        writeln!(self.jsonl, "{}", serde_json::Value::Object(obj)).context("writing metrics.jsonl")?;
        self.jsonl.flush().context("writing metrics.jsonl")?;
        if let Some(tb) = &mut self.tb {
            tb.flush();
        }
        Ok(())
    }
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

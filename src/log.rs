//! The `info!` lines: progress and warnings about the data that every rank of a multi-process
//! run would print alike, printed by rank 0 only (torchrun's ranks would all print them).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on this process prints no `info!` lines: it is a rank other than 0 of a
/// multi-process run, whose lines rank 0 already prints (torchrun's ranks would all print them).
pub fn quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line of progress or a warning about the data on stderr, which every rank would say alike:
/// printed by rank 0 only. Rank-specific lines and errors use `eprintln!`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        if !$crate::log::is_quiet() {
            eprintln!($($arg)*);
        }
    };
}

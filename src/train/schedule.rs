//! Learning-rate schedules: linear warmup, then cosine, linear or constant decay to
//! `min_lr_ratio * lr`, the shapes of transformers' `get_*_schedule_with_warmup`.
use crate::spec::{Decay, ScheduleSpec};
use std::f64::consts::PI;

/// The learning rate of optimizer step `step` (0-based) out of `total`. Warmup reaches the full
/// rate at its last step: step `s < warmup` gets `lr * (s + 1) / warmup`.
pub fn lr_at(step: usize, total: usize, base_lr: f64, s: &ScheduleSpec) -> f64 {
    if step < s.warmup_steps {
        return base_lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    let span = total.saturating_sub(s.warmup_steps).max(1) as f64;
    let progress = ((step - s.warmup_steps) as f64 / span).min(1.0);
    let shape = match s.decay {
        Decay::Cosine => 0.5 * (1.0 + (PI * progress).cos()),
        Decay::Linear => 1.0 - progress,
        Decay::Constant => 1.0,
    };
    base_lr * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_and_linear() {
        let s = ScheduleSpec { warmup_steps: 4, decay: Decay::Cosine, min_lr_ratio: 0.1 };
        assert_eq!(lr_at(0, 14, 1.0, &s), 0.25);
        assert_eq!(lr_at(3, 14, 1.0, &s), 1.0);
        assert!((lr_at(4, 14, 1.0, &s) - 1.0).abs() < 1e-12);
        // Halfway through the decay the cosine is at the midpoint between 1 and 0.1.
        assert!((lr_at(9, 14, 1.0, &s) - 0.55).abs() < 1e-12);
        let l = ScheduleSpec { decay: Decay::Linear, ..s.clone() };
        assert!((lr_at(9, 14, 2.0, &l) - 1.1).abs() < 1e-12);
        let c = ScheduleSpec { decay: Decay::Constant, ..s };
        assert_eq!(lr_at(13, 14, 3.0, &c), 3.0);
    }
}

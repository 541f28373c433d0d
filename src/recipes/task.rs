//! The `make_task` recipe: a seeded arithmetic word-problem task with worked solutions that end
//! in `#### answer`, written as train and held-out JSONL splits with no prompt in both.
//!
//! Problems take two steps on numbers of three to five digits (a purchase, then a sale or a
//! loss), so the digits of every intermediate result have to be produced token by token and
//! tokenizers that split digits differently disagree on them.
use crate::data::Rng;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::HashSet;
use crate::spec::*;
use anyhow::ensure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `recipe: make_task`: the demo's seeded arithmetic word-problem task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakeTask {
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    #[serde(default)]
    pub seed: u64,
    /// Writes train.jsonl and test.jsonl here.
    pub output_dir: PathBuf,
    pub train_size: usize,
    pub test_size: usize,
    /// A validation split (`val.jsonl`), disjoint from both, for choosing settings.
    #[serde(default)]
    pub val_size: usize,
    #[serde(default = "d_min_digits")]
    pub min_digits: usize,
    #[serde(default = "d_max_digits")]
    pub max_digits: usize,
    /// Whether steps may carry or borrow (false: each step changes exactly one digit).
    #[serde(default = "yes")]
    pub carries: bool,
}

fn d_min_digits() -> usize {
    3
}

fn d_max_digits() -> usize {
    5
}

impl crate::spec::Schema for MakeTask {
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.train_size > 0 && self.test_size > 0, "train_size and test_size must be positive");
        ensure!(self.min_digits >= 1 && self.min_digits <= self.max_digits && self.max_digits <= 12, "need 1 <= min_digits <= max_digits <= 12");
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

const NAMES: [&str; 8] = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Ines"];
const THINGS: [(&str, &str, &str); 6] = [
    ("apples", "buys", "sells"),
    ("stamps", "collects", "gives away"),
    ("coins", "earns", "spends"),
    ("books", "orders", "donates"),
    ("sheep", "buys", "sells"),
    ("marbles", "wins", "loses"),
];

/// One problem: (prompt, worked solution). With `carries` false, the added hundreds never carry
/// and the removed tens never borrow, so each step changes exactly one digit: a task a small
/// model learns in minutes on a CPU, where every digit must still be written out.
pub fn problem(rng: &mut Rng, digits: usize, carries: bool) -> (String, String) {
    let pick = |rng: &mut Rng, n: u64| rng.next_u64() % n;
    let name = NAMES[pick(rng, NAMES.len() as u64) as usize];
    let (thing, gain, lose) = THINGS[pick(rng, THINGS.len() as u64) as usize];
    let lo = 10u64.pow(digits as u32 - 1);
    let mut a = lo + pick(rng, 9 * lo);
    let (b, c) = if carries {
        ((1 + pick(rng, 9)) * 100, (1 + pick(rng, 9)) * 10)
    } else {
        // Hundreds digit h of a at most 8, tens digit t at least 1; then b = X00 with
        // h + X <= 9 and c = Y0 with Y <= t.
        let (h, t) = (pick(rng, 9), 1 + pick(rng, 9));
        a = a - (a / 100 % 10) * 100 - (a / 10 % 10) * 10 + h * 100 + t * 10;
        ((1 + pick(rng, 9 - h)) * 100, (1 + pick(rng, t)) * 10)
    };
    let s1 = a + b;
    let s2 = s1 - c;
    let prompt = format!("{name} has {a} {thing}. {name} {gain} {b} more and then {lose} {c}. How many {thing} does {name} have now?");
    let solution = format!("{name} starts with {a} {thing}. After getting {b} more: {a} + {b} = {s1}. After losing {c}: {s1} - {c} = {s2}.\n#### {s2}");
    (prompt, solution)
}

pub fn run(r: &MakeTask) -> Result<()> {
    let mut rng = Rng(r.seed);
    let mut seen = HashSet::new();
    let mut make = |n: usize, rng: &mut Rng| -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let digits = r.min_digits + (rng.next_u64() % (r.max_digits - r.min_digits + 1) as u64) as usize;
            let (p, s) = problem(rng, digits, r.carries);
            if seen.insert(p.clone()) {
                out.push((p, s));
            }
        }
        out
    };
    let train = make(r.train_size, &mut rng);
    let test = make(r.test_size, &mut rng);
    // Drawn after the test split, so adding it leaves train and test as they were.
    let val = make(r.val_size, &mut rng);
    std::fs::create_dir_all(&r.output_dir).with_context(|| format!("creating {}", r.output_dir.display()))?;
    for (name, rows) in [("train.jsonl", &train), ("test.jsonl", &test), ("val.jsonl", &val)] {
        if rows.is_empty() && name == "val.jsonl" {
            continue;
        }
        let path = r.output_dir.join(name);
        let text: String = rows.iter().map(|(p, s)| format!("{}\n", json!({ "prompt": p, "response": s }))).collect();
        crate::atomic::write(&path, text)?;
    }
    crate::info!("make_task: {} train, {} validation and {} held-out test problems in {}", train.len(), val.len(), test.len(), r.output_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::eval::final_answer;

    #[test]
    fn solutions_are_correct_and_seeded() {
        let mut rng = Rng(5);
        for i in 0..400 {
            let (p, s) = problem(&mut rng, 4, i % 2 == 0);
            let nums: Vec<u64> = p.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
            assert_eq!(nums.len(), 3, "{p}");
            let want = nums[0] + nums[1] - nums[2];
            assert_eq!(final_answer(&s), Some(want.to_string()), "{p} / {s}");
            assert!((1000..10000).contains(&nums[0]), "{p}");
            if i % 2 == 1 {
                // Carry-free: each step changes one digit of the running total.
                let diff = |x: u64, y: u64| x.to_string().chars().zip(y.to_string().chars()).filter(|(a, b)| a != b).count();
                assert_eq!(diff(nums[0], nums[0] + nums[1]), 1, "{p}");
                assert_eq!(diff(nums[0] + nums[1], want), 1, "{p}");
            }
        }
        assert_eq!(problem(&mut Rng(9), 5, true), problem(&mut Rng(9), 5, true));
    }
}

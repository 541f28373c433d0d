//! The `make_task` recipe: a seeded arithmetic word-problem task with worked solutions that end
//! in `#### answer`, written as train and held-out JSONL splits with no prompt in both.
//!
//! Problems take two steps on numbers of three to five digits (a purchase, then a sale or a
//! loss), so the digits of every intermediate result have to be produced token by token and
//! tokenizers that split digits differently disagree on them.
use crate::data::Rng;
use crate::recipe::MakeTask;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::HashSet;
use std::io::Write;

const NAMES: [&str; 8] = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Ines"];
const THINGS: [(&str, &str, &str); 6] = [
    ("apples", "buys", "sells"),
    ("stamps", "collects", "gives away"),
    ("coins", "earns", "spends"),
    ("books", "orders", "donates"),
    ("sheep", "buys", "sells"),
    ("marbles", "wins", "loses"),
];

/// One problem: (prompt, worked solution).
pub fn problem(rng: &mut Rng, digits: usize) -> (String, String) {
    let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n as u64) as usize;
    let name = NAMES[pick(rng, NAMES.len())];
    let (thing, gain, lose) = THINGS[pick(rng, THINGS.len())];
    let lo = 10u64.pow(digits as u32 - 1);
    let a = lo + rng.next_u64() % (9 * lo);
    // The added amount is a round number of hundreds, the removed one of tens: the carries stay
    // local, so a small model can learn the task, but every digit still has to be written.
    let b = (1 + rng.next_u64() % 9) * 100;
    let s1 = a + b;
    let c = (1 + rng.next_u64() % 9) * 10;
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
            let (p, s) = problem(rng, digits);
            if seen.insert(p.clone()) {
                out.push((p, s));
            }
        }
        out
    };
    let train = make(r.train_size, &mut rng);
    let test = make(r.test_size, &mut rng);
    std::fs::create_dir_all(&r.output_dir).with_context(|| format!("creating {}", r.output_dir.display()))?;
    for (name, rows) in [("train.jsonl", &train), ("test.jsonl", &test)] {
        let path = r.output_dir.join(name);
        let tmp = crate::hf::safetensors::tmp_path(&path);
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (p, s) in rows.iter() {
            writeln!(f, "{}", json!({ "prompt": p, "response": s }))?;
        }
        drop(f);
        std::fs::rename(&tmp, &path)?;
    }
    eprintln!("make_task: {} train and {} held-out problems in {}", train.len(), test.len(), r.output_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::eval::final_answer;

    #[test]
    fn solutions_are_correct_and_seeded() {
        let mut rng = Rng(5);
        for _ in 0..200 {
            let (p, s) = problem(&mut rng, 4);
            let nums: Vec<u64> = p.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
            assert_eq!(nums.len(), 3, "{p}");
            let want = nums[0] + nums[1] - nums[2];
            assert_eq!(final_answer(&s), Some(want.to_string()), "{p} / {s}");
        }
        assert_eq!(problem(&mut Rng(9), 5), problem(&mut Rng(9), 5));
    }
}

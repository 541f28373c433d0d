//! The `make_task` recipe: a seeded arithmetic word-problem task with worked solutions that end
//! in `#### answer`, written as train and held-out JSONL splits with no prompt in both.
//!
//! Two kinds. `arithmetic` (regime A of the demo): two steps on numbers of three to five digits
//! (a purchase, then a sale or a loss), one canonical solution each, so the digits of every
//! intermediate result have to be produced token by token and tokenizers that split digits
//! differently disagree on them. `ledger` (regime B): a week of one-digit gains and losses to a
//! two-digit stock, 4-8 steps and about 180-300 tokens, whose worked solutions are drawn from
//! many valid paths (the days forward or backward, one running total or separate totals of
//! gains and losses, each line in one of two forms, an optional check), so a teacher trained on
//! them spreads its distribution over correct answers (`paths: canonical` keeps one).
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
    /// `arithmetic` (two steps, one canonical solution) or `ledger` (a week of changes, many
    /// solution paths).
    #[serde(default)]
    pub kind: TaskKind,
    /// ledger: the fewest and most daily changes per problem (each one step of the solution).
    #[serde(default = "d_events")]
    pub min_events: usize,
    #[serde(default = "d_events")]
    pub max_events: usize,
    /// ledger: `varied` solutions (many paths) or one `canonical` path.
    #[serde(default)]
    pub paths: Paths,
}

/// Which problems `make_task` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    #[default]
    Arithmetic,
    Ledger,
}

fn d_events() -> usize {
    7
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
        ensure!(self.min_events >= 1 && self.min_events <= self.max_events && self.max_events <= DAYS.len(), "need 1 <= min_events <= max_events <= {}", DAYS.len());
        Ok(())
    }

    fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// A draw from 0..n.
fn pick(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// A draw from lo..=hi.
fn between(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + pick(rng, (hi - lo + 1) as u64) as usize
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

const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Which worked solutions a `ledger` task writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Paths {
    /// Each solution drawn from many valid paths: the days forward or backward, one running
    /// total or separate totals of gains and losses, each line in one of two forms, an optional
    /// check.
    #[default]
    Varied,
    /// One canonical path per problem: the events in the prompt's order, no check.
    Canonical,
}

/// One event of a ledger problem: its day, whether it adds, and how many.
#[derive(Clone, Copy)]
struct Event {
    day: &'static str,
    gain: bool,
    amount: u64,
}

/// One `ledger` problem: a starting stock of two digits and a change of one digit on each of
/// the first days of a week (gains and losses, the losses together less than the start, so the
/// running total of every solution path stays positive).
#[derive(Clone)]
pub struct Ledger {
    name: &'static str,
    thing: (&'static str, &'static str, &'static str),
    start: u64,
    events: Vec<Event>,
}

impl Ledger {
    pub fn draw(rng: &mut Rng, events: usize) -> Ledger {
        let name = NAMES[pick(rng, NAMES.len() as u64) as usize];
        let thing = THINGS[pick(rng, THINGS.len() as u64) as usize];
        let start = 30 + pick(rng, 70);
        loop {
            let evs: Vec<Event> = DAYS[..events].iter().map(|&day| Event { day, gain: pick(rng, 5) >= 2, amount: 1 + pick(rng, 9) }).collect();
            if evs.iter().filter(|e| !e.gain).map(|e| e.amount).sum::<u64>() < start {
                return Ledger { name, thing, start, events: evs };
            }
        }
    }

    pub fn prompt(&self) -> String {
        let (name, (thing, gain, lose)) = (self.name, self.thing);
        let told: Vec<String> = self.events.iter().map(|e| format!("On {} {name} {} {}.", e.day, if e.gain { gain } else { lose }, e.amount)).collect();
        format!("{name} has {} {thing}. {} How many {thing} does {name} have at the end?", self.start, told.join(" "))
    }

    pub fn answer(&self) -> u64 {
        self.events.iter().fold(self.start, |t, e| if e.gain { t + e.amount } else { t - e.amount })
    }

    /// A worked solution drawn as `paths` says. `varied`: the days forward or backward; one
    /// running total, or a total of the gains and one of the losses combined with the start at
    /// the end (either way round); each line in one of two forms; an optional check line.
    /// `canonical`: forward, one running total, one form, no check.
    pub fn solve(&self, rng: &mut Rng, paths: Paths) -> String {
        let (start, answer, name) = (self.start, self.answer(), self.name);
        let verb = |e: &Event| if e.gain { self.thing.1 } else { self.thing.2 };
        let mut lines = vec![format!("{name} starts with {start} {}.", self.thing.0)];
        let varied = paths == Paths::Varied;
        // Every path visits the days in one direction, and every line names its day, its change
        // and the totals it updates, so the state of a path is in its text.
        let order: Vec<Event> = if varied && pick(rng, 2) == 1 { self.events.iter().rev().copied().collect() } else { self.events.clone() };
        let told = |e: &Event| format!("{}: {name} {} {}", e.day, verb(e), e.amount);
        if !varied || pick(rng, 2) == 0 {
            // One running total; each line in one of two forms.
            let mut total = start;
            for e in &order {
                let (x, next) = (e.amount, if e.gain { total + e.amount } else { total - e.amount });
                lines.push(match (e.gain, varied && pick(rng, 2) == 1) {
                    (true, false) => format!("{}, so {total} + {x} = {next}.", told(e)),
                    (true, true) => format!("{}, and {x} + {total} = {next}.", told(e)),
                    (false, false) => format!("{}, so {total} - {x} = {next}.", told(e)),
                    (false, true) => format!("{}, taking {x} away: {total} - {x} = {next}.", told(e)),
                });
                total = next;
            }
        } else {
            // Two totals, the gains and the losses, each line adding to one; then both combined
            // with the start, either way round.
            let (mut g, mut l) = (0, 0);
            for e in &order {
                let (kind, sum) = if e.gain { ("gains", &mut g) } else { ("losses", &mut l) };
                lines.push(if pick(rng, 2) == 0 {
                    format!("{}, {kind} {} + {} = {}.", told(e), *sum, e.amount, *sum + e.amount)
                } else {
                    format!("{}, so {kind} are {} + {} = {}.", told(e), *sum, e.amount, *sum + e.amount)
                });
                *sum += e.amount;
            }
            lines.push(if l == 0 {
                format!("Gains {g}, no losses: {start} + {g} = {answer}.")
            } else if g == 0 {
                format!("No gains, losses {l}: {start} - {l} = {answer}.")
            } else if pick(rng, 2) == 0 {
                format!("Gains {g}, losses {l}: {start} + {g} = {}, then {} - {l} = {answer}.", start + g, start + g)
            } else {
                format!("Gains {g}, losses {l}: {start} - {l} = {}, then {} + {g} = {answer}.", start - l, start - l)
            });
        }
        if varied && pick(rng, 2) == 0 {
            lines.push(format!("Check: undoing every change from {answer} gives back {start}."));
        }
        lines.push(format!("#### {answer}"));
        lines.join("\n")
    }
}

pub fn run(r: &MakeTask) -> Result<()> {
    let mut rng = Rng(r.seed);
    let mut seen = HashSet::new();
    let mut make = |n: usize, rng: &mut Rng| -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (p, s) = match r.kind {
                TaskKind::Arithmetic => {
                    let digits = between(rng, r.min_digits, r.max_digits);
                    problem(rng, digits, r.carries)
                }
                TaskKind::Ledger => {
                    let events = between(rng, r.min_events, r.max_events);
                    let problem = Ledger::draw(rng, events);
                    (problem.prompt(), problem.solve(rng, r.paths))
                }
            };
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
    crate::atomic::publish_new(&r.output_dir, |dir| {
        for (name, rows) in [("train.jsonl", &train), ("test.jsonl", &test), ("val.jsonl", &val)] {
            if rows.is_empty() && name == "val.jsonl" {
                continue;
            }
            let text: String = rows.iter().map(|(p, s)| format!("{}\n", json!({ "prompt": p, "response": s }))).collect();
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    })
    .with_context(|| format!("make_task: output_dir {}", r.output_dir.display()))?;
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

    /// Every `a + b = c` / `a - b = c` in `text` holds; returns how many there are.
    fn check_lines(text: &str) -> usize {
        let words: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == ':').filter(|w| !w.is_empty()).collect();
        let num = |w: &str| w.trim_end_matches(['.', ',']).parse::<i64>().ok();
        let mut n = 0;
        for w in words.windows(5) {
            if let (Some(a), Some(b), "=", Some(c)) = (num(w[0]), num(w[2]), w[3], num(w[4])) {
                match w[1] {
                    "+" => assert_eq!(a + b, c, "{text}"),
                    "-" => assert_eq!(a - b, c, "{text}"),
                    _ => continue,
                }
                n += 1;
            }
        }
        n
    }

    #[test]
    fn ledger_solutions_take_many_correct_paths() {
        let (mut rng, mut spread) = (Rng(3), 0);
        for _ in 0..300 {
            let p = Ledger::draw(&mut rng, 7);
            let prompt = p.prompt();
            let canonical = p.solve(&mut rng, Paths::Canonical);
            assert_eq!(check_lines(&canonical), 7, "{canonical}");
            assert_eq!(final_answer(&canonical), Some(p.answer().to_string()));
            assert_eq!(canonical, p.solve(&mut rng, Paths::Canonical), "one canonical path");
            assert!(prompt.contains(&format!("has {} ", p.start)) && prompt.matches(" On ").count() == 7, "{prompt}");
            let varied: Vec<String> = (0..8).map(|_| p.solve(&mut rng, Paths::Varied)).collect();
            for s in &varied {
                // 7 or 8 lines of work: seven changes, and with two totals the line combining them
                // (one or two operations).
                assert!((7..=9).contains(&check_lines(s)), "{s}");
                assert_eq!(final_answer(s), Some(p.answer().to_string()), "{s}");
                assert!(!s.contains(" -") || p.events.iter().any(|e| !e.gain), "{s}");
            }
            let distinct = varied.iter().collect::<HashSet<_>>().len();
            assert!(distinct >= 2, "8 draws gave one solution: {varied:?}");
            spread += distinct;
        }
        // 8 draws give about 6 different solutions on average (a third keep the prompt's order).
        assert!(spread as f64 / 300.0 > 5.0, "{spread}");
        // The same seed draws the same problem and path.
        let a = Ledger::draw(&mut Rng(4), 5);
        let b = Ledger::draw(&mut Rng(4), 5);
        assert_eq!((a.prompt(), a.solve(&mut Rng(1), Paths::Varied)), (b.prompt(), b.solve(&mut Rng(1), Paths::Varied)));
    }
}

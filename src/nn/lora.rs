//! LoRA adapters as PEFT's `LoraLayer` defines them: a frozen layer `W` gains `scale * B A`,
//! `A` (rank, in) Kaiming-uniform with a = sqrt(5) (uniform in ±1/sqrt(in)), `B` (out, rank)
//! zeros, `scale = alpha / rank` (rsLoRA: `alpha / sqrt(rank)`). Modules are chosen by their
//! Hugging Face name as PEFT's `target_modules` does: a name equal to a target or ending in
//! `.target`. GPT-2's `Conv1D` layers store `W` as (in, out) (PEFT's `fan_in_fan_out`); the
//! adapters keep PEFT's shapes either way. `dropout` (PEFT's `lora_dropout`) drops the adapters'
//! input inside `training` only.
//!
//! The adapters live in their own VarStore, under PEFT's names without its
//! `base_model.model.` prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`), so the base
//! model's store, loader and export stay as they are. A model is built with adapters inside
//! `with_adapters`, which each layer's constructor consults.
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use tch::nn::{Init, Path, VarStore};
use tch::{Device, Kind, Tensor};

/// The adapters to train or load: PEFT's LoraConfig fields that change the numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank.
    pub r: i64,
    /// Scale numerator (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// Hugging Face module names (`q_proj`, `v_proj`, GPT-2's `c_attn`, ...).
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.
    #[serde(default)]
    pub use_rslora: bool,
    /// PEFT's `lora_dropout`: dropout on the adapters' input while training (not while sampling,
    /// scoring or evaluating).
    #[serde(default)]
    pub dropout: f64,
    /// Modules trained in full beside the adapters (PEFT's `modules_to_save`, e.g. `lm_head`),
    /// saved whole in the adapter file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_to_save: Vec<String>,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self, key: &str) -> Result<()> {
        ensure!((1..=16_384).contains(&self.r), "{key}.r must be from 1 to 16384");
        ensure!(self.alpha.is_finite() && self.alpha > 0.0, "{key}.alpha must be positive");
        ensure!(!self.target_modules.is_empty(), "{key}.target_modules must name at least one module");
        ensure!((0.0..1.0).contains(&self.dropout), "{key}.dropout must be in [0, 1)");
        ensure!(self.modules_to_save.iter().all(|m| !m.is_empty()), "{key}.modules_to_save: empty module name");
        Ok(())
    }

    /// Checks that a recipe's `lora` (`key`) says what the loaded adapter `path` is: the adapter
    /// keeps its own rank, scale, targets and saved modules; only the dropout is the recipe's.
    pub fn agrees_with(&self, loaded: &LoraSpec, key: &str, path: &std::path::Path) -> Result<()> {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let pairs = [
            ("r", self.r.to_string(), loaded.r.to_string()),
            ("alpha", self.alpha.to_string(), loaded.alpha.to_string()),
            ("use_rslora", self.use_rslora.to_string(), loaded.use_rslora.to_string()),
            ("target_modules", format!("{:?}", sorted(&self.target_modules)), format!("{:?}", sorted(&loaded.target_modules))),
            ("modules_to_save", format!("{:?}", sorted(&self.modules_to_save)), format!("{:?}", sorted(&loaded.modules_to_save))),
        ];
        for (name, ours, theirs) in pairs {
            ensure!(ours == theirs, "{key}.{name} {ours} differs from the adapter's {theirs} ({}): the adapter keeps its own; make them agree", path.display());
        }
        Ok(())
    }

    fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// Whether the base weight `name` (`lm_head.weight`) belongs to a module of `modules_to_save`.
    pub fn saves(&self, name: &str) -> bool {
        let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
        self.modules_to_save.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// PEFT's adapter_config.json for these adapters on `base` (`fan_in_fan_out` for GPT-2's
    /// Conv1D layers, whose weights are stored (in, out)).
    pub fn peft_config(&self, base: &str, fan_in_fan_out: bool) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": fan_in_fan_out,
            "inference_mode": true,
            "modules_to_save": if self.modules_to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.modules_to_save) },
        })
    }

    /// Reads a PEFT adapter_config.json; refuses what would change the numbers and is not
    /// supported (DoRA, bias training, per-module ranks).
    pub fn from_peft_config(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let at = |k: &str| format!("{}: {k}", path.display());
        ensure!(v["peft_type"] == "LORA", "{}", at("peft_type must be LORA"));
        ensure!(!v["use_dora"].as_bool().unwrap_or(false), "{}", at("use_dora is not supported"));
        ensure!(v["bias"].as_str().unwrap_or("none") == "none", "{}", at("bias must be none"));
        let per_module = |k: &str| v[k].as_object().is_some_and(|m| !m.is_empty());
        ensure!(!per_module("rank_pattern") && !per_module("alpha_pattern"), "{}", at("rank_pattern and alpha_pattern are not supported"));
        // PEFT reads a string as a regular expression over whole module paths.
        ensure!(!v["target_modules"].is_string(), "{}", at("target_modules as a regular expression is not supported (list the module names)"));
        let targets = v["target_modules"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
        for key in ["layers_to_transform", "layers_pattern", "exclude_modules"] {
            let set = &v[key];
            ensure!(set.is_null() || set.as_array().is_some_and(Vec::is_empty), "{}", at(&format!("{key} is not supported (adapters on every layer the target modules name)")));
        }
        let spec = LoraSpec {
            r: v["r"].as_i64().with_context(|| at("no r"))?,
            alpha: v["lora_alpha"].as_f64().with_context(|| at("no lora_alpha"))?,
            target_modules: targets,
            use_rslora: v["use_rslora"].as_bool().unwrap_or(false),
            dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
            modules_to_save: v["modules_to_save"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default(),
        };
        spec.validate(&path.display().to_string())?;
        Ok(spec)
    }
}

/// One layer's adapter pair.
#[derive(Debug)]
pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    scale: f64,
    dropout: f64,
}

impl Adapter {
    /// `scale * dropout(x) A^T B^T`, computed in float32 and returned in `x`'s dtype; the
    /// dropout only inside `training`.
    pub fn delta(&self, x: &Tensor) -> Tensor {
        let mut h = x.to_kind(Kind::Float);
        if self.dropout > 0.0 && TRAINING.with(Cell::get) {
            h = h.dropout(self.dropout, true);
        }
        (h.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scale).to_kind(x.kind())
    }

    /// `scale * B A`: the (out, in) matrix that merging adds to the base weight.
    pub fn merged(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }
}

thread_local! {
    static PLAN: RefCell<Option<(LoraSpec, VarStore)>> = const { RefCell::new(None) };
    static TRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a training step's forward and backward) with the adapters' dropout on, as PEFT
/// does in `model.train()`; sampling and scoring outside it see no dropout.
pub fn training<R>(f: impl FnOnce() -> R) -> R {
    let before = TRAINING.with(|t| t.replace(true));
    let out = f();
    TRAINING.with(|t| t.set(before));
    out
}

/// Runs `build` (a model's constructor) with adapters on the layers `spec` targets; returns
/// its result and the adapters' store (float32, trainable, initialised as PEFT does).
pub fn with_adapters<R>(spec: &LoraSpec, device: Device, build: impl FnOnce() -> R) -> (R, VarStore) {
    PLAN.with(|p| *p.borrow_mut() = Some((spec.clone(), VarStore::new(device))));
    let out = build();
    let (_, vs) = PLAN.with(|p| p.borrow_mut().take()).expect("the plan set above");
    (out, vs)
}

/// The rank of the adapters a model being built under `with_adapters` will get.
pub fn planned_rank() -> Option<i64> {
    PLAN.with(|p| p.borrow().as_ref().map(|(spec, _)| spec.r))
}

/// The adapter for the layer at `p` with the given (out, in) sizes, when a plan is active
/// and targets it.
pub fn attach(p: &Path, in_dim: i64, out_dim: i64) -> Option<Adapter> {
    PLAN.with(|plan| {
        let plan = plan.borrow();
        let (spec, vs) = plan.as_ref()?;
        let module: Vec<&str> = p.components().collect();
        if !spec.targets(&module.join(".")) {
            return None;
        }
        let root = module.iter().fold(vs.root(), |q, c| q / *c);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = (&root / "lora_A").var("weight", &[spec.r, in_dim], Init::Uniform { lo: -bound, up: bound });
        let b = (&root / "lora_B").var("weight", &[out_dim, spec.r], Init::Const(0.));
        Some(Adapter { a, b, scale: spec.scale(), dropout: spec.dropout })
    })
}

/// PEFT's tensor name for one of our adapter variables.
pub fn peft_name(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// Our adapter variable name for a PEFT tensor name (`...lora_A.default.weight` included).
pub fn our_name(peft: &str) -> String {
    peft.strip_prefix("base_model.model.").unwrap_or(peft).replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_whole_trailing_names() {
        let s = LoraSpec { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "c_attn".into()], use_rslora: false, dropout: 0.0, modules_to_save: vec!["lm_head".into()] };
        assert!(s.saves("lm_head.weight") && !s.saves("model.embed_tokens.weight") && !s.saves("model.layers.0.mlp.lm_head_x.weight"));
        assert!(s.targets("model.layers.0.self_attn.q_proj"));
        assert!(s.targets("transformer.h.1.attn.c_attn"));
        assert!(!s.targets("model.layers.0.self_attn.qq_proj"));
        assert!(!s.targets("model.layers.0.self_attn.k_proj"));
        assert_eq!(s.scale(), 2.0);
        assert_eq!(LoraSpec { use_rslora: true, ..s }.scale(), 4.0);
    }

    #[test]
    fn names_round_trip_through_peft() {
        let ours = "model.layers.0.self_attn.q_proj.lora_A.weight";
        assert_eq!(peft_name(ours), "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(our_name(&peft_name(ours)), ours);
        assert_eq!(our_name("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"), "model.layers.0.self_attn.q_proj.lora_B.weight");
    }
}

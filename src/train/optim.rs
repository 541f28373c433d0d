//! AdamW with decoupled weight decay (`torch.optim.AdamW`), written in Rust so its state can be
//! checkpointed (tch's built-in optimizers cannot save theirs). Norms, biases and embeddings get
//! no decay. Parameters that are not float32 keep a float32 master copy that the update uses.
use crate::ops;
use crate::hf::safetensors::Checkpoint;
use crate::spec::OptimizerSpec;
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

struct Param {
    name: String,
    var: Tensor,
    /// float32 master weights when `var` is not float32.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

pub struct AdamW {
    params: Vec<Param>,
    spec: OptimizerSpec,
    /// Updates taken so far.
    pub steps: i64,
}

/// Whether a parameter gets weight decay: matrices do, except embedding tables.
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.contains("embed") && !name.ends_with("wte.weight") && !name.ends_with("wpe.weight")
}

impl AdamW {
    /// AdamW over the named variables that require grad (`Model::trainable`, or a store's).
    pub fn new(vars: Vec<(String, Tensor)>, spec: &OptimizerSpec) -> Self {
        let mut vars: Vec<(String, Tensor)> = vars.into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let master = (var.kind() != Kind::Float).then(|| var.detach().to_kind(Kind::Float));
                let zeros = || Tensor::zeros(var.size(), (Kind::Float, var.device()));
                Param { decay: decays(&name, var.dim()), exp_avg: zeros(), exp_avg_sq: zeros(), name, var, master }
            })
            .collect();
        Self { params, spec: spec.clone(), steps: 0 }
    }

    /// The parameters it updates, in its (name) order.
    pub fn vars(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    /// Removes the gradients (torch's `set_to_none`): the next backward writes them afresh
    /// instead of adding to zeros.
    pub fn zero_grad(&mut self) {
        for p in &self.params {
            ops::clear_grad(&p.var);
        }
    }

    /// The global L2 norm of all gradients, in float32.
    pub fn grad_norm(&self) -> f64 {
        let _g = tch::no_grad_guard();
        // One read of the device for all parameters, not one per parameter.
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm_scalaropt_dtype(2.0, Kind::Float))
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        Tensor::stack(&norms, 0).norm().double_value(&[])
    }

    /// Scales gradients so their global norm is at most `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: Option<f64>) -> f64 {
        let norm = self.grad_norm();
        if let Some(max) = max {
            if norm > max && norm.is_finite() {
                let _g = tch::no_grad_guard();
                let scale = max / (norm + 1e-6);
                for p in &self.params {
                    let mut g = p.var.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            }
        }
        norm
    }

    /// One AdamW update at learning rate `lr` through torch's fused kernel (what
    /// `torch.optim.AdamW(fused=True)` runs: one pass over each parameter), once for the
    /// parameters with weight decay and once for those without. Parameters without a
    /// gradient are left alone, as torch does.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        let Some(first) = self.params.first() else { return Ok(()) };
        self.steps += 1;
        let step = Tensor::full([], self.steps as f64, (Kind::Float, first.var.device()));
        for decay in [true, false] {
            let (mut w, mut g, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for p in self.params.iter().filter(|p| p.decay == decay) {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                w.push(p.master.as_ref().unwrap_or(&p.var).shallow_clone());
                g.push(grad.to_kind(Kind::Float).contiguous());
                m.push(p.exp_avg.shallow_clone());
                v.push(p.exp_avg_sq.shallow_clone());
            }
            if w.is_empty() {
                continue;
            }
            let wd = if decay { self.spec.weight_decay } else { 0.0 };
            ops::fused_adamw(&w, &g, &m, &v, &step, lr, self.spec.betas, wd, self.spec.eps)?;
        }
        for p in &mut self.params {
            if let (Some(master), true) = (&p.master, p.var.grad().defined()) {
                p.var.f_copy_(&master.to_kind(p.var.kind()))?;
            }
        }
        Ok(())
    }

    /// Moments (and master weights) under `exp_avg.NAME`, `exp_avg_sq.NAME`, `master.NAME`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.shallow_clone()));
            if let Some(m) = &p.master {
                out.push((format!("master.{}", p.name), m.shallow_clone()));
            }
        }
        out
    }

    /// Restores what `state_tensors` saved, after `steps` updates.
    pub fn load_state(&mut self, ckpt: &Checkpoint, steps: i64) -> Result<()> {
        let _g = tch::no_grad_guard();
        for p in &mut self.params {
            for (key, dst) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let t = ckpt.tensor(&format!("{key}.{}", p.name)).with_context(|| format!("optimizer state of {}", p.name))?;
                dst.f_copy_(&t.to_device(dst.device()))?;
            }
            if let Some(m) = &mut p.master {
                let t = ckpt.tensor(&format!("master.{}", p.name)).with_context(|| format!("master weights of {}", p.name))?;
                m.f_copy_(&t.to_device(m.device()))?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

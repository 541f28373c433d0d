//! AdamW with decoupled weight decay (`torch.optim.AdamW`), written in Rust so its state can be
//! checkpointed (tch's built-in optimizers cannot save theirs). Norms, biases and embeddings get
//! no decay. Parameters that are not float32 keep a float32 master copy that the update uses.
use crate::hf::safetensors::Checkpoint;
use crate::recipe::OptimizerSpec;
use anyhow::{Context, Result};
use tch::nn::VarStore;
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
    pub fn new(vs: &VarStore, spec: &OptimizerSpec) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
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

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// The global L2 norm of all gradients, in float32.
    pub fn grad_norm(&self) -> f64 {
        let _g = tch::no_grad_guard();
        let sq: f64 = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
            .sum();
        sq.sqrt()
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

    /// One AdamW update at learning rate `lr`, in place and in the order of torch's
    /// single-tensor AdamW (`lerp_`, `addcmul_`, `addcdiv_`): one temporary per parameter.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.steps += 1;
        let [b1, b2] = self.spec.betas;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for p in &mut self.params {
            let grad = p.var.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.to_kind(Kind::Float);
            let mut w = match &p.master {
                Some(m) => m.shallow_clone(),
                None => p.var.shallow_clone(),
            };
            if p.decay && self.spec.weight_decay > 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * self.spec.weight_decay);
            }
            let _ = p.exp_avg.lerp_(&grad, 1.0 - b1);
            let _ = p.exp_avg_sq.g_mul_scalar_(b2).addcmul_(&grad, &(&grad * (1.0 - b2)));
            if lr > 0.0 {
                // w -= lr / bc1 * m / (sqrt(v / bc2) + eps), as w += m / denom with the step folded into denom.
                let mut denom = p.exp_avg_sq.sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt()).g_add_scalar_(self.spec.eps).g_mul_scalar_(-bc1 / lr);
                let _ = w.addcdiv_(&p.exp_avg, &denom);
            }
            if p.master.is_some() {
                let _ = p.var.copy_(&w.to_kind(p.var.kind()));
            }
        }
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

//! AdamW with decoupled weight decay (`torch.optim.AdamW`), written in Rust so its state can be
//! checkpointed (tch's built-in optimizers cannot save theirs). Norms, biases and embeddings get
//! no decay. Parameters that are not float32 keep a float32 master copy that the update uses.
//! Under ZeRO (`AdamW::sharded`) each rank keeps the state of its shard of the flattened
//! parameters only (DeepSpeed's partitioning; stage 2: and the summed gradients of it), and
//! checkpoints gather the state whole.
use crate::ops;
use crate::hf::safetensors::Checkpoint;
use crate::spec::OptimizerSpec;
use super::dist::Dist;
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// The part of one parameter this rank updates, and its state: all of it, or under ZeRO the
/// part inside this rank's shard of the flattened parameters.
struct Param {
    name: String,
    var: Tensor,
    /// Where the part starts in the flattened parameter, and its length.
    start: i64,
    len: i64,
    /// Under ZeRO, where the part starts in this rank's shard.
    at: i64,
    /// float32 master weights of the part when `var` is not float32.
    master: Option<Tensor>,
    /// The moments of the part, flat float32.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

/// ZeRO stage 1 (DeepSpeed's optimizer-state partitioning): the trainable parameters,
/// flattened one after the other in name order, are cut into `world` contiguous shards of
/// `per_rank` elements (the last one padded); each rank keeps the moments and master weights
/// of its own shard only, updates that shard, and an all-gather gives every rank the new
/// weights.
struct Shard<'d> {
    dist: &'d Dist,
    /// Every trainable parameter in name order, with where it starts in the flat space.
    all: Vec<(String, Tensor, i64)>,
    total: i64,
    per_rank: i64,
    /// The most elements per rank one all-gather carries (the gradient buckets' size).
    chunk: i64,
    /// Stage 2: this rank's shard of the summed gradients (the reducer writes it; the
    /// parameters keep no gradient).
    grads: Option<Tensor>,
}

pub struct AdamW<'d> {
    params: Vec<Param>,
    spec: OptimizerSpec,
    shard: Option<Shard<'d>>,
    /// Updates taken so far.
    pub steps: i64,
}

/// Whether a parameter gets weight decay: matrices do, except embedding tables.
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.contains("embed") && !name.ends_with("wte.weight") && !name.ends_with("wpe.weight")
}

impl<'d> AdamW<'d> {
    /// AdamW over the named variables that require grad (`Model::trainable`, or a store's).
    pub fn new(vars: Vec<(String, Tensor)>, spec: &OptimizerSpec) -> Self {
        let vars = trainable(vars);
        let params = vars.into_iter().map(|(name, var)| Param::part(name, var, 0, -1)).collect();
        Self { params, spec: spec.clone(), shard: None, steps: 0 }
    }

    /// AdamW whose state is sharded over the ranks of `dist` (ZeRO stage 1): this rank keeps
    /// the state of its shard only; at `stage` 2 the summed gradients of its shard too.
    /// `chunk_bytes` bounds each all-gather.
    pub fn sharded(vars: Vec<(String, Tensor)>, spec: &OptimizerSpec, dist: &'d Dist, chunk_bytes: f64, stage: usize) -> Result<Self> {
        let vars = trainable(vars);
        let kinds: std::collections::BTreeSet<String> = vars.iter().map(|(_, t)| format!("{:?}", t.kind())).collect();
        anyhow::ensure!(kinds.len() <= 1, "training.zero: the trainable parameters have several dtypes ({}); ZeRO gathers them as one", kinds.into_iter().collect::<Vec<_>>().join(", "));
        let mut all = Vec::with_capacity(vars.len());
        let mut total = 0i64;
        for (name, var) in vars {
            let n = var.numel() as i64;
            all.push((name, var, total));
            total += n;
        }
        let world = dist.world as i64;
        let per_rank = (total + world - 1) / world.max(1);
        let (lo, hi) = (dist.rank as i64 * per_rank, ((dist.rank as i64 + 1) * per_rank).min(total));
        let mut params = vec![];
        for (name, var, at) in &all {
            let (a, b) = ((*at).max(lo), (at + var.numel() as i64).min(hi));
            if a < b {
                let mut part = Param::part(name.clone(), var.shallow_clone(), a - at, b - a);
                part.at = a - lo;
                params.push(part);
            }
        }
        let elem = all.first().map_or(4, |(_, t, _)| t.kind().elt_size_in_bytes()) as f64;
        let chunk = ((chunk_bytes / elem) as i64).clamp(1 << 16, per_rank.max(1 << 16));
        let grads = (stage >= 2).then(|| all.first().map(|(_, t, _)| Tensor::zeros([per_rank], (t.kind(), t.device())))).flatten();
        Ok(Self { params, spec: spec.clone(), shard: Some(Shard { dist, all, total, per_rank, chunk, grads }), steps: 0 })
    }

    /// Stage 2: the buffer the gradient reducer sums this rank's shard into, and its size.
    pub fn owned_grads(&self) -> Option<(&Tensor, i64)> {
        let s = self.shard.as_ref()?;
        Some((s.grads.as_ref()?, s.per_rank))
    }

    /// The gradient of this part: the parameter's, or under stage 2 the owned shard's.
    fn grad_of(&self, p: &Param) -> Option<Tensor> {
        if let Some(g) = self.shard.as_ref().and_then(|s| s.grads.as_ref()) {
            return Some(g.narrow(0, p.at, p.len));
        }
        let g = p.var.grad();
        g.defined().then(|| p.flat(&g))
    }

    /// The bytes of optimizer state this rank holds (moments and master weights).
    pub fn state_bytes(&self) -> u64 {
        self.params.iter().map(|p| (2 + u64::from(p.master.is_some())) * 4 * p.len as u64).sum()
    }

    /// Stage 2: the bytes of this rank's shard of the summed gradients.
    pub fn owned_grad_bytes(&self) -> u64 {
        self.owned_grads().map_or(0, |(t, _)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
    }

    /// Every trainable parameter, in name order (under ZeRO too, where this rank updates a
    /// shard of them).
    pub fn vars(&self) -> Vec<Tensor> {
        match &self.shard {
            Some(s) => s.all.iter().map(|(_, t, _)| t.shallow_clone()).collect(),
            None => self.params.iter().map(|p| p.var.shallow_clone()).collect(),
        }
    }

    /// Removes the gradients (torch's `set_to_none`): the next backward writes them afresh
    /// instead of adding to zeros.
    pub fn zero_grad(&mut self) {
        for v in self.vars() {
            ops::clear_grad(&v);
        }
    }

    /// The global L2 norm of all gradients, in float32 (under stage 2, of every rank's shard).
    pub fn grad_norm(&self) -> Result<f64> {
        let _g = tch::no_grad_guard();
        if let Some((s, g)) = self.shard.as_ref().and_then(|s| Some((s, s.grads.as_ref()?))) {
            let mine = g.to_kind(Kind::Float).square().sum(Kind::Float).double_value(&[]);
            return Ok(s.dist.sum(&[mine], "summing the gradient norm")?[0].sqrt());
        }
        // One read of the device for all parameters, not one per parameter.
        let norms: Vec<Tensor> = self
            .vars()
            .iter()
            .map(|v| v.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm_scalaropt_dtype(2.0, Kind::Float))
            .collect();
        if norms.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::stack(&norms, 0).norm().double_value(&[]))
    }

    /// Scales gradients so their global norm is at most `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: Option<f64>) -> Result<f64> {
        let norm = self.grad_norm()?;
        if let Some(max) = max {
            if norm > max && norm.is_finite() {
                let _g = tch::no_grad_guard();
                let scale = max / (norm + 1e-6);
                let mut grads: Vec<Tensor> = self.vars().iter().map(Tensor::grad).filter(Tensor::defined).collect();
                grads.extend(self.shard.as_ref().and_then(|s| s.grads.as_ref()).map(Tensor::shallow_clone));
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        Ok(norm)
    }

    /// One AdamW update at learning rate `lr` through torch's fused kernel (what
    /// `torch.optim.AdamW(fused=True)` runs: one pass over each parameter), once for the
    /// parameters with weight decay and once for those without. Parameters without a
    /// gradient are left alone, as torch does. Under ZeRO this rank updates its shard, and the
    /// ranks then exchange the new weights.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        self.steps += 1;
        let Some(first) = self.params.first() else { return self.gather_weights() };
        let step = Tensor::full([], self.steps as f64, (Kind::Float, first.var.device()));
        for decay in [true, false] {
            let (mut w, mut g, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for p in self.params.iter().filter(|p| p.decay == decay) {
                let Some(grad) = self.grad_of(p) else { continue };
                w.push(p.master.as_ref().map_or_else(|| p.flat(&p.var), Tensor::shallow_clone));
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
        for p in &self.params {
            if let (Some(master), true) = (&p.master, self.grad_of(p).is_some()) {
                p.flat(&p.var).f_copy_(&master.to_kind(p.var.kind()))?;
            }
        }
        self.gather_weights()
    }

    /// ZeRO: every rank's shard of the new weights to every rank.
    fn gather_weights(&self) -> Result<()> {
        let Some(s) = &self.shard else { return Ok(()) };
        let Some((_, first, _)) = s.all.first() else { return Ok(()) };
        let (kind, device) = (first.kind(), first.device());
        s.gather(kind, device, "gathering the updated weights", |at, n| s.pieces(at, n).map(|(i, off, len)| s.all[i].1.view(-1).narrow(0, off, len)).collect(), |at, block| {
            for (i, off, len) in s.pieces(at, block.size()[0]) {
                let local = s.all[i].2 + off - at;
                s.all[i].1.view(-1).narrow(0, off, len).copy_(&block.narrow(0, local, len));
            }
        })
    }

    /// Moments (and master weights) under `exp_avg.NAME`, `exp_avg_sq.NAME`, `master.NAME`,
    /// each in its parameter's shape. Under ZeRO every rank calls it, and the whole state is
    /// gathered to rank 0 (the others get an empty list): a checkpoint holds the same file at
    /// any world size and stage, so a run resumes under another one.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let _g = tch::no_grad_guard();
        let Some(s) = &self.shard else {
            let mut out = Vec::new();
            for p in &self.params {
                out.push((format!("exp_avg.{}", p.name), p.exp_avg.view(p.var.size().as_slice())));
                out.push((format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.view(p.var.size().as_slice())));
                if let Some(m) = &p.master {
                    out.push((format!("master.{}", p.name), m.view(p.var.size().as_slice())));
                }
            }
            return Ok(out);
        };
        let main = s.dist.is_main();
        let with_master = s.all.first().is_some_and(|(_, t, _)| t.kind() != Kind::Float);
        let mut out = Vec::new();
        for key in ["exp_avg", "exp_avg_sq", "master"] {
            if key == "master" && !with_master {
                continue;
            }
            // Rank 0 assembles the state on the CPU, one chunk at a time.
            let full = if main { Tensor::zeros([s.total], (Kind::Float, tch::Device::Cpu)) } else { Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)) };
            let device = self.params.first().map_or(tch::Device::Cpu, |p| p.var.device());
            let part = |p: &Param| match key {
                "exp_avg" => p.exp_avg.shallow_clone(),
                "exp_avg_sq" => p.exp_avg_sq.shallow_clone(),
                _ => p.master.as_ref().map_or_else(|| p.flat(&p.var).to_kind(Kind::Float), Tensor::shallow_clone),
            };
            let mine = |at: i64, n: i64| -> Vec<Tensor> {
                s.pieces(at, n)
                    .map(|(i, off, len)| {
                        let p = self.params.iter().find(|p| p.name == s.all[i].0).expect("a piece of this rank's shard is one of its parts");
                        part(p).narrow(0, off - p.start, len)
                    })
                    .collect()
            };
            s.gather(Kind::Float, device, "gathering the optimizer state", mine, |at, block| {
                if main {
                    let n = block.size()[0].min(s.total - at);
                    if n > 0 {
                        full.narrow(0, at, n).copy_(&block.narrow(0, 0, n));
                    }
                }
            })?;
            if main {
                for (name, var, at) in &s.all {
                    out.push((format!("{key}.{name}"), full.narrow(0, *at, var.numel() as i64).view(var.size().as_slice())));
                }
            }
        }
        Ok(out)
    }

    /// Restores what `state_tensors` saved (at any world size and stage), after `steps` updates.
    pub fn load_state(&mut self, ckpt: &Checkpoint, steps: i64) -> Result<()> {
        let _g = tch::no_grad_guard();
        for p in &mut self.params {
            let part = |t: Tensor, what: &str| -> Result<Tensor> {
                anyhow::ensure!(t.numel() as i64 >= p.start + p.len, "the {what} of {} has {} elements, not {}", p.name, t.numel(), p.var.numel());
                Ok(t.reshape([-1]).narrow(0, p.start, p.len))
            };
            for key in ["exp_avg", "exp_avg_sq"] {
                let t = ckpt.tensor(&format!("{key}.{}", p.name)).with_context(|| format!("optimizer state of {}", p.name))?;
                let t = part(t, "optimizer state")?;
                let dst = if key == "exp_avg" { &mut p.exp_avg } else { &mut p.exp_avg_sq };
                dst.f_copy_(&t.to_device(dst.device()))?;
            }
            if p.master.is_some() {
                let t = ckpt.tensor(&format!("master.{}", p.name)).with_context(|| format!("master weights of {}", p.name))?;
                let t = part(t, "master weights")?;
                if let Some(m) = &mut p.master {
                    m.f_copy_(&t.to_device(m.device()))?;
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// The variables that require grad, in name order.
fn trainable(vars: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vars.into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

impl Param {
    /// The part of `var` from `start` of `len` elements (-1: all of it), with fresh state.
    fn part(name: String, var: Tensor, start: i64, len: i64) -> Self {
        let len = if len < 0 { var.numel() as i64 } else { len };
        let flat = var.detach().reshape([-1]).narrow(0, start, len);
        let master = (var.kind() != Kind::Float).then(|| flat.to_kind(Kind::Float));
        let zeros = || Tensor::zeros([len], (Kind::Float, var.device()));
        Param { decay: decays(&name, var.dim()), exp_avg: zeros(), exp_avg_sq: zeros(), name, var, start, len, at: 0, master }
    }

    /// This part of `t` (the parameter or its gradient), flat: a view of a contiguous one.
    fn flat(&self, t: &Tensor) -> Tensor {
        t.reshape([-1]).narrow(0, self.start, self.len)
    }
}

impl Shard<'_> {
    /// The parameters' pieces inside the flat range [at, at + n): (index in `all`, offset in
    /// the flattened parameter, length), in order.
    fn pieces(&self, at: i64, n: i64) -> impl Iterator<Item = (usize, i64, i64)> + '_ {
        let end = (at + n).min(self.total);
        self.all.iter().enumerate().filter_map(move |(i, (_, var, start))| {
            let (a, b) = ((*start).max(at), (start + var.numel() as i64).min(end));
            (a < b).then(|| (i, a - start, b - a))
        })
    }

    /// All-gathers the flat space chunk by chunk: `mine(at, n)` gives this rank's pieces of
    /// [at, at + n) (its own shard's), which are padded to `n`; `put(at, block)` receives each
    /// rank's block, which starts at flat index `at`.
    fn gather(&self, kind: Kind, device: tch::Device, what: &str, mine: impl Fn(i64, i64) -> Vec<Tensor>, mut put: impl FnMut(i64, &Tensor)) -> Result<()> {
        let (world, rank) = (self.dist.world as i64, self.dist.rank as i64);
        let mut c = 0;
        while c < self.per_rank {
            let n = self.chunk.min(self.per_rank - c);
            let mut parts = mine(rank * self.per_rank + c, n);
            let have: i64 = parts.iter().map(|t| t.size()[0]).sum();
            if have < n {
                parts.push(Tensor::zeros([n - have], (kind, device)));
            }
            let input = Tensor::cat(&parts.iter().map(|t| t.to_kind(kind)).collect::<Vec<_>>(), 0);
            let output = Tensor::empty([world * n], (kind, device));
            self.dist.all_gather(&input, &output, what)?;
            for r in 0..world {
                put(r * self.per_rank + c, &output.narrow(0, r * n, n));
            }
            c += n;
        }
        Ok(())
    }
}

//! Data parallelism on torch's own distributed engine: c10d's TCPStore rendezvous, Gloo
//! process group, and NCCL for CUDA tensors where every rank has a GPU of its own (dist.cpp),
//! set up from the launcher's environment as torchrun sets it
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), or by `tokbridge run
//! --nproc N`, which starts the N local ranks itself.
//!
//! Every rank holds the whole model and the same optimizer state; each computes the gradients
//! of its share of a step's examples, scaled by the step's global normaliser, and a sum
//! all-reduce (in buckets, overlapping the backward: `GradSync`) makes every rank's gradients
//! the gradients of the whole batch, so every rank takes the same step. Rank 0 writes metrics,
//! checkpoints and exports. With `WORLD_SIZE` unset (or 1 without `MASTER_PORT`) there is no
//! `Dist` and no distributed code runs.
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// `tokbridge run --nproc N`: runs this program with `args` as ranks 0..N of one group on this
/// machine (torchrun's variables, a free port, the CPU's threads shared out unless
/// OMP_NUM_THREADS is set), and stops them all when one fails.
pub fn launch(n: usize, args: &[std::ffi::OsString]) -> Result<()> {
    let exe = std::env::current_exe().context("finding the tokbridge executable")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port for the rendezvous")?.port();
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get()).div_ceil(n).max(1);
    let mut children = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(args).env("RANK", rank.to_string()).env("LOCAL_RANK", rank.to_string()).env("WORLD_SIZE", n.to_string()).env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        stop_with_parent(&mut cmd);
        children.push(cmd.spawn().with_context(|| format!("starting rank {rank}"))?);
    }
    let mut running: Vec<usize> = (0..n).collect();
    while !running.is_empty() {
        let mut failed = None;
        running.retain(|&rank| match children[rank].try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !status.success() && failed.is_none() {
                    failed = Some((rank, status.to_string()));
                }
                false
            }
            Err(e) => {
                failed.get_or_insert((rank, e.to_string()));
                false
            }
        });
        if let Some((rank, status)) = failed {
            for &other in &running {
                let _ = children[other].kill();
                let _ = children[other].wait();
            }
            anyhow::bail!("rank {rank} of {n} failed ({status}); the other ranks were stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Has the kernel stop a rank (SIGTERM) when its launcher dies, even by `kill -9`, instead of
/// leaving it to train on as an orphan holding the run's lock.
fn stop_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe, and nothing else runs between the
        // fork and the exec.
        unsafe {
            cmd.pre_exec(move || {
                // The launcher may have died before the request took effect.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != launcher {
                    return Err(std::io::Error::other("the launcher is gone"));
                }
                Ok(())
            });
        }
    }
}

/// Seconds a collective (or the rendezvous) may wait for the other ranks before the run stops:
/// `TOKBRIDGE_DIST_TIMEOUT_S`, default 1800 (rank 0 evaluates while the others wait).
fn timeout_ms() -> Result<i64> {
    match std::env::var("TOKBRIDGE_DIST_TIMEOUT_S") {
        Ok(v) => Ok((v.parse::<f64>().ok().filter(|s| *s > 0.0).with_context(|| format!("TOKBRIDGE_DIST_TIMEOUT_S={v:?} is not a positive number of seconds"))? * 1000.0) as i64),
        Err(_) => Ok(1_800_000),
    }
}

/// The gradient buckets' size in MiB: `TOKBRIDGE_DIST_BUCKET_MB`, default 25 (DDP's
/// `bucket_cap_mb`).
pub fn bucket_mib() -> Result<f64> {
    match std::env::var("TOKBRIDGE_DIST_BUCKET_MB") {
        Ok(v) => v.parse::<f64>().ok().filter(|m| *m > 0.0).with_context(|| format!("TOKBRIDGE_DIST_BUCKET_MB={v:?} is not a positive number of MiB")),
        Err(_) => Ok(25.0),
    }
}

/// This process's place in a multi-process run.
pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// Gathers so far: every rank makes them in the same order, so the count keeps keys apart.
    gathers: std::sync::atomic::AtomicUsize,
    /// The GPU of the first CUDA stage and whether NCCL carries its tensors (`use_device`).
    gpu: std::sync::Mutex<Option<(usize, bool)>>,
    #[cfg(tokbridge_dist)]
    group: *mut std::ffi::c_void,
}

fn env_usize(key: &str) -> Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| format!("{key}={v:?} is not a non-negative integer"))?)),
        Err(_) => Ok(None),
    }
}

impl Dist {
    /// The run's rank and world from the environment; None for a single process. The group
    /// lasts as long as the returned value: a pipeline's or a sweep's stages all run in it,
    /// each announcing its device (`use_device`).
    pub fn from_env() -> Result<Option<Dist>> {
        let Some(world) = env_usize("WORLD_SIZE")? else { return Ok(None) };
        // One process joins a group of one only where a launcher set up a rendezvous for it
        // (torchrun --nproc-per-node 1 does), as torch.distributed would; else it runs alone.
        if world == 1 && std::env::var_os("MASTER_PORT").is_none() {
            return Ok(None);
        }
        anyhow::ensure!(world >= 1, "WORLD_SIZE=0 is not a number of processes");
        let rank = env_usize("RANK")?.context("WORLD_SIZE is set but RANK is not (launch with torchrun's variables or tokbridge run --nproc N)")?;
        anyhow::ensure!(rank < world, "RANK={rank} is not below WORLD_SIZE={world}");
        let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
        let port = env_usize("MASTER_PORT")?.context("WORLD_SIZE is set but MASTER_PORT is not")?;
        anyhow::ensure!((1..65536).contains(&port), "MASTER_PORT={port} is not a port");
        let dist = Self::join(rank, world, &addr, port as u16).with_context(|| format!("rank {rank} of {world}: joining the group at {addr}:{port}"))?;
        if rank > 0 {
            crate::log::quiet();
        }
        Ok(Some(dist))
    }

    /// Joins rank `rank` of `world` to the group whose store rank 0 serves at addr:port, for
    /// training on `device` (what `from_env` and `use_device` do with the launcher's variables).
    pub fn connect(rank: usize, world: usize, addr: &str, port: u16, device: tch::Device) -> Result<Dist> {
        let dist = Self::join(rank, world, addr, port).with_context(|| format!("rank {rank} of {world}: joining the group at {addr}:{port}"))?;
        dist.use_device(device)?;
        Ok(dist)
    }

    /// This rank trains or generates on `device` next (every rank calls it at the same point).
    /// At the first CUDA device the ranks vote on NCCL: it carries CUDA tensors when every
    /// rank asks for it (one GPU per local rank, a build with NCCL), Gloo everything else.
    pub fn use_device(&self, device: tch::Device) -> Result<()> {
        let tch::Device::Cuda(gpu) = device else { return Ok(()) };
        let mut chosen = self.gpu.lock().map_err(|_| anyhow::anyhow!("rank {}: the GPU choice's lock is poisoned", self.rank))?;
        match *chosen {
            Some((g, nccl)) if g == gpu || !nccl => return Ok(()),
            Some((g, _)) => anyhow::bail!("rank {} of {}: this stage runs on cuda:{gpu}, but the group's NCCL communicator is on cuda:{g} (keep every stage of a multi-process run on cuda:LOCAL_RANK)", self.rank, self.world),
            None => {}
        }
        let local = env_usize("LOCAL_RANK")?.unwrap_or(self.rank);
        // SAFETY: a query without arguments.
        let built = unsafe { ffi::tb_dist_has_nccl() } != 0;
        let mine = built && gpu == local;
        let votes = self.sum(&[f64::from(u8::from(mine))], "choosing the GPU backend")?[0] as usize;
        if votes < self.world {
            let why = if !built { "this build has no NCCL (scripts/bootstrap --cuda fetches its headers)".to_string() } else { format!("{} of {} ranks are not on a GPU of their own (cuda:LOCAL_RANK)", self.world - votes, self.world) };
            eprintln!("rank {} of {}: gradients on cuda:{gpu} go through Gloo: {why}", self.rank, self.world);
            *chosen = Some((gpu, false));
            return Ok(());
        }
        // SAFETY: the group is live; every rank makes this call.
        self.call("adding the NCCL process group", |g| unsafe { ffi::tb_dist_add_nccl(g, self.rank as i32, self.world as i32, gpu as i32) })?;
        eprintln!("rank {} of {}: CUDA tensors go through NCCL on cuda:{gpu}", self.rank, self.world);
        *chosen = Some((gpu, true));
        Ok(())
    }

    #[cfg(tokbridge_dist)]
    fn join(rank: usize, world: usize, addr: &str, port: u16) -> Result<Dist> {
        let c_addr = std::ffi::CString::new(addr).context("MASTER_ADDR holds a NUL byte")?;
        // c10d would retry a name that does not resolve until its timeout (30 minutes).
        std::net::ToSocketAddrs::to_socket_addrs(&(addr, port)).with_context(|| format!("MASTER_ADDR {addr} does not resolve"))?;
        let timeout = timeout_ms()?;
        let mut group = std::ptr::null_mut();
        // Say what this rank waits for every minute (four times within a shorter timeout),
        // while c10d waits in silence.
        let every = std::time::Duration::from_millis((timeout as u64 / 4).clamp(1, 60_000));
        let (done, waiting) = std::sync::mpsc::channel::<()>();
        let at = format!("{addr}:{port}");
        let watcher = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = waiting.recv_timeout(every) {
                let others = if rank == 0 { format!("the other {} rank(s) to connect to", world - 1) } else { "rank 0 at".to_string() };
                eprintln!("rank {rank} of {world}: waiting for {others} {at} ({:.0} s of the {:.0} s timeout)", started.elapsed().as_secs_f64(), timeout as f64 / 1000.0);
            }
        });
        // SAFETY: the address outlives the call; `group` receives a pointer that Drop frees once.
        let err = unsafe { ffi::tb_dist_init(rank as i32, world as i32, c_addr.as_ptr(), port as i32, timeout, &mut group) };
        drop(done);
        let _ = watcher.join();
        ffi::check("c10d Gloo process group", err)?;
        eprintln!("rank {rank} of {world}: joined the Gloo process group at {addr}:{port}");
        Ok(Dist { rank, world, gathers: Default::default(), gpu: Default::default(), group })
    }

    #[cfg(not(tokbridge_dist))]
    fn join(_rank: usize, world: usize, _addr: &str, _port: u16) -> Result<Dist> {
        let _ = timeout_ms()?;
        anyhow::bail!("WORLD_SIZE={world} asks for {world} processes, but this build has no multi-process training: gloo's headers were missing when it was built (run scripts/bootstrap, then cargo build)")
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Sums `ts` over the ranks, in place.
    pub fn all_reduce(&self, ts: &[Tensor], what: &str) -> Result<()> {
        self.call(what, |g| {
            let ptrs: Vec<_> = ts.iter().map(|t| t.as_ptr() as *mut std::ffi::c_void).collect();
            // SAFETY: the tensors are live for the call.
            unsafe { ffi::tb_dist_all_reduce(g, ptrs.as_ptr(), ptrs.len()) }
        })
    }

    /// The sum of `values` over the ranks (float64).
    pub fn sum(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        self.all_reduce(std::slice::from_ref(&t), what)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// The largest of every rank's `value` (each rank's in its own slot of one sum).
    pub fn max(&self, value: f64, what: &str) -> Result<f64> {
        let mut each = vec![0.0; self.world];
        each[self.rank] = value;
        Ok(self.sum(&each, what)?.into_iter().fold(f64::NEG_INFINITY, f64::max))
    }

    /// `output` (world x the size of `input`, one dtype, on one device) becomes every rank's
    /// `input` in rank order.
    pub fn all_gather(&self, input: &Tensor, output: &Tensor, what: &str) -> Result<()> {
        anyhow::ensure!(output.numel() == input.numel() * self.world && output.kind() == input.kind(), "rank {}: all-gather of {} into {} elements", self.rank, input.numel(), output.numel());
        // SAFETY: both tensors are live for the call.
        self.call(what, |g| unsafe { ffi::tb_dist_all_gather(g, input.as_ptr() as *mut std::ffi::c_void, output.as_ptr() as *mut std::ffi::c_void) })
    }

    /// Rank 0's `values` on every rank.
    pub fn broadcast(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        self.call(what, |g| {
            let p = [t.as_ptr() as *mut std::ffi::c_void];
            // SAFETY: the tensor is live for the call.
            unsafe { ffi::tb_dist_broadcast(g, p.as_ptr(), 1, 0) }
        })?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self, what: &str) -> Result<()> {
        // SAFETY: the group is live.
        self.call(what, |g| unsafe { ffi::tb_dist_barrier(g) })
    }

    /// The gradient reducer for `params` (the optimizer's parameters, the same list on every
    /// rank): their gradients are summed over the ranks, in their own dtype, in buckets of at
    /// most `bucket_mib` MiB (`bucket_mib()`), all-reduced while the backward still runs.
    ///
    /// `owned` (ZeRO stage 2): this rank's shard of the flattened gradients and the shard size;
    /// each sum then goes only to the rank that owns it, into that tensor, and the parameters
    /// keep no gradient.
    pub fn grad_sync(&self, params: &[Tensor], bucket_mib: f64, owned: Option<(&Tensor, i64)>) -> Result<GradSync<'_>> {
        let ptrs: Vec<_> = params.iter().map(|t| t.as_ptr() as *mut std::ffi::c_void).collect();
        let mut reducer = std::ptr::null_mut();
        let (buffer, per_rank) = owned.map_or((std::ptr::null_mut(), 0), |(t, n)| (t.as_ptr() as *mut std::ffi::c_void, n));
        // SAFETY: the tensors are live for the call (the reducer keeps its own references).
        self.call("setting up the gradient all-reduce", |g| unsafe { ffi::tb_reducer_new(g, ptrs.as_ptr(), ptrs.len(), (bucket_mib * 1048576.0) as i64, per_rank, buffer, &mut reducer) })?;
        Ok(GradSync { dist: self, reducer })
    }

    /// Rank 0 gets every rank's `bytes` (in rank order) through the store; the others get
    /// None. Every rank must call it at the same points; `tag` says what is gathered.
    pub fn gather(&self, tag: &str, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let call = self.gathers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = |r: usize| format!("tokbridge/{call}/{tag}/{r}");
        let mine = std::ffi::CString::new(key(self.rank)).context("a gather tag holds a NUL byte")?;
        // SAFETY: key and data are live for the call.
        self.call(&format!("sending {tag} to rank 0"), |g| unsafe { ffi::tb_dist_store_set(g, mine.as_ptr(), bytes.as_ptr(), bytes.len()) })?;
        if !self.is_main() {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(self.world);
        for r in 0..self.world {
            let k = std::ffi::CString::new(key(r)).context("a gather tag holds a NUL byte")?;
            let (mut ptr, mut n) = (std::ptr::null_mut::<u8>(), 0usize);
            // SAFETY: on success `ptr` is a malloc'd buffer of `n` bytes, copied and freed here.
            self.call(&format!("receiving {tag} from rank {r}"), |g| unsafe { ffi::tb_dist_store_take(g, k.as_ptr(), &mut ptr, &mut n) })?;
            let v = unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec();
            unsafe { ffi::free_buffer(ptr) };
            all.push(v);
        }
        Ok(Some(all))
    }

    /// Checks that every rank holds the weights rank 0 holds (a float64 fingerprint of all of
    /// them, compared exactly), before rank 0 writes them as the run's checkpoint.
    pub fn check_replicas(&self, params: &[Tensor]) -> Result<()> {
        let _g = tch::no_grad_guard();
        let mut f = 0.0;
        for (i, p) in params.iter().enumerate() {
            let d = p.to_kind(Kind::Double);
            f += (i + 1) as f64 * d.sum(Kind::Double).double_value(&[]) + (&d * &d).sum(Kind::Double).double_value(&[]);
        }
        let f0 = self.broadcast(&[f], "comparing the ranks' weights")?[0];
        let differing = self.sum(&[f64::from(u8::from(f.to_bits() != f0.to_bits()))], "comparing the ranks' weights")?[0];
        anyhow::ensure!(differing == 0.0, "the ranks' weights have diverged: {differing} of {} ranks differ from rank 0", self.world);
        Ok(())
    }

    #[cfg(tokbridge_dist)]
    fn call(&self, what: &str, f: impl FnOnce(*mut std::ffi::c_void) -> *mut std::ffi::c_char) -> Result<()> {
        ffi::check(&format!("rank {} of {}: {what}", self.rank, self.world), f(self.group))
            .map_err(|e| anyhow::anyhow!("{e} (did another rank stop?)"))
    }

    #[cfg(not(tokbridge_dist))]
    fn call(&self, _what: &str, _f: impl FnOnce(*mut std::ffi::c_void) -> *mut std::ffi::c_char) -> Result<()> {
        unreachable!("a Dist exists only in builds with multi-process training")
    }
}

#[cfg(tokbridge_dist)]
impl Drop for Dist {
    fn drop(&mut self) {
        // SAFETY: created by tb_dist_init and freed only here.
        unsafe { ffi::tb_dist_free(self.group) }
    }
}

/// Sums a step's gradients over the ranks, overlapping the all-reduce with the backward
/// (dist.cpp's reducer, on autograd's post-accumulate-grad hooks of every parameter while it
/// lives): `arm` before the step's last backward on this rank, `finish` after it.
pub struct GradSync<'a> {
    dist: &'a Dist,
    reducer: *mut std::ffi::c_void,
}

impl GradSync<'_> {
    /// The next backward is this rank's last of the step: gradients are sent as they become final.
    pub fn arm(&self) {
        // SAFETY: the reducer is live.
        unsafe { ffi::tb_reducer_arm(self.reducer) }
    }

    /// Sends the buckets not yet sent, waits for all, and makes every parameter's gradient the
    /// sum over the ranks (a parameter without a gradient on a rank counts as zeros there).
    pub fn finish(&self) -> Result<()> {
        let _g = tch::no_grad_guard();
        // SAFETY: the reducer is live; the call returns once its collectives are done.
        self.dist.call("all-reducing the gradients", |_| unsafe { ffi::tb_reducer_finish(self.reducer) })
    }

    /// The last step's metrics: `dist/buckets` per step, the fraction of them all-reduced
    /// while the backward ran (`dist/overlapped`; 0 in the first step, which learns the order),
    /// `dist/resent` (1 when a gradient came after its bucket was sent, so what every rank
    /// added since was all-reduced as well), and the most MiB of summed-gradient buckets this
    /// rank held at once (all of them under stage 0 and 1; those in flight under stage 2).
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let (mut buckets, mut early, mut resent, mut peak) = (0, 0, 0, 0i64);
        // SAFETY: the reducer is live; the outputs are plain integers.
        unsafe { ffi::tb_reducer_stats(self.reducer, &mut buckets, &mut early, &mut resent, &mut peak) };
        vec![
            ("dist/buckets", buckets as f64),
            ("dist/overlapped", early as f64 / buckets.max(1) as f64),
            ("dist/resent", f64::from(resent)),
            ("memory/gradient_buckets_peak_mib", peak as f64 / 1048576.0),
        ]
    }
}

impl Drop for GradSync<'_> {
    fn drop(&mut self) {
        // SAFETY: created by tb_reducer_new and freed only here; it removes its hooks.
        unsafe { ffi::tb_reducer_free(self.reducer) }
    }
}

#[cfg(tokbridge_dist)]
mod ffi {
    use std::ffi::{c_char, c_void, CStr};
    extern "C" {
        pub fn tb_dist_init(rank: i32, world: i32, addr: *const c_char, port: i32, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
        pub fn tb_dist_free(g: *mut c_void);
        pub fn tb_dist_all_reduce(g: *mut c_void, ts: *const *mut c_void, n: usize) -> *mut c_char;
        pub fn tb_dist_broadcast(g: *mut c_void, ts: *const *mut c_void, n: usize, root: i32) -> *mut c_char;
        pub fn tb_dist_all_gather(g: *mut c_void, input: *mut c_void, output: *mut c_void) -> *mut c_char;
        pub fn tb_dist_barrier(g: *mut c_void) -> *mut c_char;
        pub fn tb_dist_store_set(g: *mut c_void, key: *const c_char, data: *const u8, n: usize) -> *mut c_char;
        pub fn tb_dist_store_take(g: *mut c_void, key: *const c_char, out: *mut *mut u8, n: *mut usize) -> *mut c_char;
        pub fn tb_dist_has_nccl() -> i32;
        pub fn tb_dist_add_nccl(g: *mut c_void, rank: i32, world: i32, device: i32) -> *mut c_char;
        pub fn tb_reducer_new(g: *mut c_void, ps: *const *mut c_void, n: usize, cap_bytes: i64, per_rank: i64, owned: *mut c_void, out: *mut *mut c_void) -> *mut c_char;
        pub fn tb_reducer_arm(r: *mut c_void);
        pub fn tb_reducer_finish(r: *mut c_void) -> *mut c_char;
        pub fn tb_reducer_stats(r: *mut c_void, buckets: *mut usize, sent_early: *mut usize, resent: *mut i32, peak_bytes: *mut i64);
        pub fn tb_reducer_free(r: *mut c_void);
        fn tb_free(p: *mut c_char);
    }

    /// Releases a buffer dist.cpp allocated.
    pub unsafe fn free_buffer(p: *mut u8) {
        tb_free(p as *mut c_char)
    }

    /// dist.cpp's error message (null: success) as a `Result`.
    pub fn check(what: &str, err: *mut c_char) -> anyhow::Result<()> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null result is a NUL-terminated string from strdup, released once here.
        let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { tb_free(err) };
        anyhow::bail!("{what}: {}", text.lines().next().unwrap_or("c10d error"))
    }
}

#[cfg(not(tokbridge_dist))]
mod ffi {
    pub unsafe fn tb_dist_all_reduce(_: *mut std::ffi::c_void, _: *const *mut std::ffi::c_void, _: usize) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_dist_broadcast(_: *mut std::ffi::c_void, _: *const *mut std::ffi::c_void, _: usize, _: i32) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_dist_all_gather(_: *mut std::ffi::c_void, _: *mut std::ffi::c_void, _: *mut std::ffi::c_void) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_dist_barrier(_: *mut std::ffi::c_void) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_dist_store_set(_: *mut std::ffi::c_void, _: *const std::ffi::c_char, _: *const u8, _: usize) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_dist_store_take(_: *mut std::ffi::c_void, _: *const std::ffi::c_char, _: *mut *mut u8, _: *mut usize) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn free_buffer(_: *mut u8) {}
    pub unsafe fn tb_dist_has_nccl() -> i32 {
        0
    }
    pub unsafe fn tb_dist_add_nccl(_: *mut std::ffi::c_void, _: i32, _: i32, _: i32) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_reducer_new(_: *mut std::ffi::c_void, _: *const *mut std::ffi::c_void, _: usize, _: i64, _: i64, _: *mut std::ffi::c_void, _: *mut *mut std::ffi::c_void) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_reducer_arm(_: *mut std::ffi::c_void) {}
    pub unsafe fn tb_reducer_finish(_: *mut std::ffi::c_void) -> *mut std::ffi::c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn tb_reducer_stats(_: *mut std::ffi::c_void, _: *mut usize, _: *mut usize, _: *mut i32, _: *mut i64) {}
    pub unsafe fn tb_reducer_free(_: *mut std::ffi::c_void) {}
}

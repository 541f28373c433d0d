//! Parsing the `--device` and `--dtype` choices users give, saying which device a run uses,
//! and its peak memory.
use anyhow::{bail, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "cpu" => Device::Cpu,
        "auto" if tch::Cuda::is_available() => cuda(local_rank())?,
        "auto" => Device::Cpu,
        "cuda" | "gpu" => cuda(local_rank())?,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n)?,
            _ => bail!("unknown device {other:?} (use cpu, cuda, cuda:N or auto)"),
        },
    })
}

/// The GPU of this process in a multi-process launch (`LOCAL_RANK`, as torchrun sets it, when
/// `WORLD_SIZE` > 1), else 0: `device: cuda` means one GPU per rank.
fn local_rank() -> usize {
    let multi = std::env::var("WORLD_SIZE").ok().and_then(|w| w.trim().parse::<usize>().ok()).is_some_and(|w| w > 1);
    if !multi {
        return 0;
    }
    std::env::var("LOCAL_RANK").ok().and_then(|r| r.trim().parse().ok()).unwrap_or(0)
}

fn cuda(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if count == 0 {
        bail!("device cuda was asked for, but libtorch sees no CUDA GPU (a CPU-only libtorch, or no GPU/driver)");
    }
    if n >= count {
        bail!("device cuda:{n} was asked for, but only {count} CUDA device(s) exist");
    }
    // libtorch's SDPA prefers cuDNN's attention on Hopper, which builds a plan for every new
    // sequence length: on an H200 the first decode of a 1B llama cost 99 ms per token with it
    // and 10 ms without (flash / memory-efficient kernels; steady state 7-12 ms either way).
    // Rollouts, evaluations and padded batches meet new lengths all the time.
    crate::ops::sdp_backends(true, true, true, false);
    Ok(Device::Cuda(n))
}

/// The memory this host can still give (`MemAvailable` of /proc/meminfo), in bytes; `None`
/// where that is not known.
pub fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Lets the process keep and reuse the memory that freed tensors leave (glibc's malloc). By
/// default glibc maps every block above 32 MiB afresh and unmaps it when freed, so every
/// training step page-faults its large tensors in again and the kernel zeroes each page: a tenth
/// of a CPU training step went there. Now every block comes from the heap, which is never
/// trimmed: memory stays at the high-water mark of the run and is reused. Called once at start
/// by the binaries (BENCHMARKS.md: with `Model::backward_tokens`'s chunks, 10% faster SFT
/// steps for 17% more peak memory than chunks kept under glibc's mmap threshold).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `f32`, `bf16` or `f16` (and their long names).
pub fn parse_dtype(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" | "float32" | "fp32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" | "fp16" => Kind::Half,
        other => bail!("unknown dtype {other:?} (use f32, bf16 or f16)"),
    })
}

/// A line naming `device`: the GPU's index and count, or the CPU thread count.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n} (of {} CUDA device(s), cuDNN {})", tch::Cuda::device_count(), if tch::Cuda::cudnn_is_available() { "on" } else { "off" }),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

/// Peak memory so far in GiB. On CPU the process's peak resident set (VmHWM). On CUDA the
/// memory in use on the device as the CUDA runtime reports it: libtorch's caching allocator
/// keeps what it reserved at its peak, so this is the peak reservation plus the CUDA context
/// (and whatever other processes hold on that GPU). None when it cannot be read.
pub fn peak_memory_gib(device: Device) -> Option<f64> {
    const GIB: f64 = (1u64 << 30) as f64;
    match device {
        Device::Cuda(n) => cuda_used_bytes(n).map(|b| b as f64 / GIB),
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024.0 / GIB)
        }
    }
}

/// total − free bytes of CUDA device `n`, through the CUDA runtime libtorch already loaded
/// (looked up at run time, so CPU builds need no CUDA symbol).
fn cuda_used_bytes(n: usize) -> Option<u64> {
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let sym = |name: &std::ffi::CStr| {
        // SAFETY: dlsym with RTLD_DEFAULT only looks a name up among the loaded libraries.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (get, set, info) = (sym(c"cudaGetDevice")?, sym(c"cudaSetDevice")?, sym(c"cudaMemGetInfo")?);
    // SAFETY: the symbols are the CUDA runtime's functions with these C signatures.
    unsafe {
        let (get, set, info): (GetDevice, SetDevice, MemGetInfo) = (std::mem::transmute::<*mut libc::c_void, GetDevice>(get), std::mem::transmute::<*mut libc::c_void, SetDevice>(set), std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info));
        let mut current = 0i32;
        if get(&mut current) != 0 || set(n as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let status = info(&mut free, &mut total);
        set(current);
        (status == 0).then(|| (total - free) as u64)
    }
}

// torch.distributed's engine (c10d) for data parallelism, behind a small C ABI (src/train/dist.rs):
// a TCPStore rendezvous and a ProcessGroupGloo, as `torch.distributed.init_process_group("gloo")`
// builds them, plus a ProcessGroupNCCL for CUDA tensors where the build has NCCL's headers and
// every rank has its own GPU (PyTorch's "cpu:gloo,cuda:nccl"); the collectives training needs
// (sum all-reduce, all-gather, broadcast, barrier), the store's set and get (rank 0 gathers generations
// through it), and the gradient reducer: DDP's scheme of buckets all-reduced while the backward
// still runs, driven by autograd's post-accumulate-grad hooks.
// Compiled only where gloo's headers are present (scripts/bootstrap puts Debian's libgloo-dev
// headers beside libtorch's; the library itself is inside libtorch_cpu). Errors come back as
// a malloc'd message, as in ops.cpp.
#include <ATen/ATen.h>
#include "../ops/ffi.h"
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <c10/util/Logging.h>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;  // for CUDA tensors, when set
  std::chrono::milliseconds timeout;

  // The backend for these tensors: NCCL for CUDA ones where the group has it, else Gloo
  // (which also moves CUDA tensors, through the host).
  c10d::Backend& backend(const std::vector<at::Tensor>& ts) {
    return (nccl && !ts.empty() && ts[0].is_cuda()) ? *nccl : *gloo;
  }

  void all_reduce(std::vector<at::Tensor>& ts) { backend(ts).allreduce(ts)->wait(); }
};

using tb::list;

// The message of `e`, without the C++ stack that c10's errors append to what().
char* error(const std::exception& e) {
  if (auto c = dynamic_cast<const c10::Error*>(&e)) return strdup(c->what_without_backtrace());
  return strdup(e.what());
}

// Silences c10's log (stderr) while it lives: c10d logs every failed connection attempt with
// the exception's C++ stack, and the error returned says what failed in one line.
struct QuietLog {
  int before = FLAGS_caffe2_log_level;
  QuietLog() { FLAGS_caffe2_log_level = 3; }  // FATAL only
  ~QuietLog() { FLAGS_caffe2_log_level = before; }
};

// Sums the parameters' gradients over the ranks while the backward runs, as DDP's reducer
// does: the parameters are split into buckets of at most `cap` bytes of gradient, in the
// gradients' dtype (a bf16 model's are summed in bf16, as DDP sums them); a
// bucket is all-reduced (asynchronously) once every parameter in it has received its last
// gradient of the step, buckets in the same order on every rank, and `finish` sends what is
// left, waits, and writes the sums back as the gradients.
//
// A parameter's gradient is final when autograd's AccumulateGrad (or ops.cpp's
// tb_accumulate_grad, which runs the same hook) has run for it as many times as it does in one
// step's last backward (twice for a tied matrix whose head gradient is added outside
// autograd). That is learned in the first step, which reduces everything in `finish`: rank 0's
// order of the parameters' gradients becoming final and their counts are broadcast, and the
// buckets are rebuilt in that order, so that they fill one after the other as the backward
// runs. A gradient added after its bucket was sent (a step whose graph
// differs from the first) is caught: every rank then all-reduces what was added since the
// sends (gradients are released when sent) and adds it to the sums: slower, never wrong.
struct Reducer;

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  Reducer* r;
  size_t i;
  ReadyHook(Reducer* r, size_t i) : r(r), i(i) {}
  void operator()(const torch::autograd::Variable&) override;
};

struct Reducer {
  Group* g;
  std::vector<at::Tensor> params;
  int64_t cap;
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::vector<int64_t> expected;  // AccumulateGrad runs per parameter in a step's last backward
  // Per step:
  std::vector<int64_t> count;
  std::vector<size_t> missing;  // per bucket: parameters not yet final
  std::vector<int64_t> stamp;   // per parameter: when it last received a gradient (-1: never)
  int64_t tick = 0;
  std::vector<at::Tensor> flats;
  std::vector<std::vector<c10::intrusive_ptr<c10d::Work>>> works;
  // ZeRO stage 2 (per_rank > 0): each gradient sum goes only to the rank that owns it (its
  // contiguous shard of `per_rank` elements of the parameters flattened in the list's order),
  // which keeps it in `owned`; a bucket is released as soon as its reductions are done.
  int64_t per_rank = 0;
  int rank = 0;
  at::Tensor owned;
  std::vector<int64_t> offset;  // per parameter: where it starts, flattened
  struct Piece {
    int64_t at, len, dst;  // in the bucket, its length, in `owned`
    int owner;
  };
  std::vector<std::vector<Piece>> pieces;  // per bucket, in bucket order
  int64_t alive = 0, peak = 0;             // bytes of buckets held, and the most this step
  int64_t last_peak = 0;                   // the most the last step held
  size_t next = 0;  // the next bucket to send
  bool armed = false, learned = false, late = false;
  // What the last `finish` found: buckets sent during the backward, and whether a late
  // gradient made the ranks all-reduce what was added after the sends.
  size_t sent_early = 0;
  bool resent = false;
  std::string failure;
  std::mutex mu;

  Reducer(Group* g, std::vector<at::Tensor> ps, int64_t cap, int64_t per_rank, at::Tensor owned)
      : g(g), params(std::move(ps)), cap(cap), per_rank(per_rank), rank(g->gloo->getRank()), owned(std::move(owned)) {
    int64_t at = 0;
    for (auto& p : params) {
      offset.push_back(at);
      at += p.numel();
    }
    std::vector<size_t> seq(params.size());
    for (size_t i = 0; i < seq.size(); ++i) seq[i] = seq.size() - 1 - i;  // the last parameters first
    build(seq);
    expected.assign(params.size(), 0);
    for (size_t i = 0; i < params.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(params[i], std::make_unique<ReadyHook>(this, i));
    reset();
  }

  ~Reducer() {
    for (auto& p : params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  }

  // Buckets in `seq`'s order, each of one dtype (the gradients' own, as DDP's), at most `cap`
  // bytes unless one gradient alone is larger. A bucket's place in the order is that of its
  // first parameter.
  void build(const std::vector<size_t>& seq) {
    buckets.clear();
    bucket_of.assign(params.size(), 0);
    std::vector<std::pair<at::ScalarType, size_t>> open;  // per dtype: its bucket being filled
    std::vector<int64_t> bytes;
    for (size_t i : seq) {
      at::ScalarType t = params[i].scalar_type();
      int64_t b = int64_t(params[i].element_size()) * params[i].numel();
      auto o = std::find_if(open.begin(), open.end(), [&](const auto& e) { return e.first == t; });
      if (o == open.end() || bytes[o->second] + b > cap) {
        buckets.emplace_back();
        bytes.push_back(0);
        if (o == open.end()) o = open.insert(open.end(), {t, 0});
        o->second = buckets.size() - 1;
      }
      buckets[o->second].push_back(i);
      bucket_of[i] = o->second;
      bytes[o->second] += b;
    }
    // Stage 2: each bucket's pieces by owner.
    pieces.assign(buckets.size(), {});
    if (per_rank == 0) return;
    for (size_t k = 0; k < buckets.size(); ++k) {
      int64_t q = 0;
      for (size_t i : buckets[k]) {
        int64_t lo = offset[i], hi = lo + params[i].numel();
        for (int64_t a = lo; a < hi;) {
          int owner = int(a / per_rank);
          int64_t end = std::min(hi, (owner + 1) * per_rank);
          pieces[k].push_back({q + a - lo, end - a, a - owner * per_rank, owner});
          a = end;
        }
        q += hi - lo;
      }
    }
  }

  void reset() {
    count.assign(params.size(), 0);
    missing.clear();
    for (auto& b : buckets) {
      // A parameter autograd never accumulated in the first step gets its gradient some other
      // way (ops::accumulate_grad) or not at all: its bucket waits for `finish`.
      size_t m = 0, other = 0;
      for (size_t i : b) (expected[i] > 0 ? m : other) += 1;
      missing.push_back(m + (other > 0));
    }
    stamp.assign(params.size(), -1);
    tick = 0;
    flats.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), {});
    alive = peak = 0;
    next = 0;
    armed = late = false;
  }

  // Called by AccumulateGrad (on autograd's thread) after it wrote parameter i's gradient.
  void ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed) return;
    ++count[i];
    stamp[i] = tick++;
    if (!learned) return;
    size_t b = bucket_of[i];
    if (b < next) {
      late = true;  // its bucket has been sent without this gradient
      return;
    }
    if (count[i] == expected[i] && --missing[b] == 0) {
      while (next < buckets.size() && missing[next] == 0) send(next++);
    }
  }

  // Bucket b's gradients as they are now, flat (zeros for a parameter without one); the
  // gradients themselves are released, so a step holds one copy of them, not two.
  at::Tensor take(size_t b) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> parts;
    for (size_t i : buckets[b]) {
      at::Tensor& p = params[i];
      const at::Tensor& gr = p.grad();
      parts.push_back(gr.defined() ? gr.to(p.scalar_type()).reshape({-1}) : at::zeros({p.numel()}, p.options()));
    }
    at::Tensor flat = at::cat(parts);
    for (size_t i : buckets[b]) params[i].mutable_grad().reset();
    return flat;
  }

  // Starts the all-reduce of bucket b (stage 2: a reduce to the owner of each run of its
  // pieces), and under stage 2 releases the buckets sent before it whose reductions are done.
  void send(size_t b) {
    try {
      std::vector<at::Tensor> flat{take(b)};
      flats[b] = flat[0];
      alive += flat[0].nbytes();
      peak = std::max(peak, alive);
      if (per_rank == 0) {
        works[b].push_back(g->backend(flat).allreduce(flat));
        return;
      }
      reduce(flat[0], b, works[b]);
      // Release what is done; past two buckets' worth in flight, wait for the oldest.
      for (size_t k = 0; k < b; ++k) {
        if (!flats[k].defined()) continue;
        bool done = true;
        for (auto& w : works[k]) done = done && w->isCompleted();
        if (done || alive > 2 * cap) keep(k);
      }
    } catch (const std::exception& e) {
      if (failure.empty()) failure = e.what();
    }
  }

  // Stage 2: reduces `flat` (bucket b's layout) to the owners, one collective per run of pieces
  // with one owner.
  void reduce(const at::Tensor& flat, size_t b, std::vector<c10::intrusive_ptr<c10d::Work>>& out) {
    auto& ps = pieces[b];
    for (size_t i = 0; i < ps.size();) {
      size_t j = i;
      int64_t len = 0;
      while (j < ps.size() && ps[j].owner == ps[i].owner) len += ps[j++].len;
      std::vector<at::Tensor> part{flat.narrow(0, ps[i].at, len)};
      c10d::ReduceOptions o;
      o.rootRank = ps[i].owner;
      out.push_back(g->backend(part).reduce(part, o));
      i = j;
    }
  }

  // Stage 2: waits for bucket k's reductions, keeps this rank's pieces and releases the bucket.
  void keep(size_t k) {
    for (auto& w : works[k]) w->wait();
    works[k].clear();
    at::NoGradGuard no_grad;
    for (auto& p : pieces[k])
      if (p.owner == rank) owned.narrow(0, p.dst, p.len).copy_(flats[k].narrow(0, p.at, p.len));
    alive -= flats[k].nbytes();
    flats[k] = at::Tensor();
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    at::NoGradGuard no_grad;
    sent_early = next;
    while (next < buckets.size()) send(next++);
    for (size_t b = 0; b < buckets.size(); ++b) {
      try {
        if (per_rank > 0 && flats[b].defined()) {
          keep(b);
          continue;
        }
        for (auto& w : works[b]) w->wait();
      } catch (const std::exception& e) {
        if (failure.empty()) failure = e.what();
      }
    }
    if (!failure.empty()) {
      std::string f = failure;
      failure.clear();
      reset();
      throw std::runtime_error(f);
    }
    // Did any rank add a gradient after its bucket was sent? What was added since (the
    // gradients were released when sent) is all-reduced too and added: the sums are linear.
    std::vector<at::Tensor> flag{at::full({1}, late ? 1.0 : 0.0, at::kDouble)};
    g->gloo->allreduce(flag)->wait();
    resent = flag[0].item<double>() > 0;
    if (resent) {
      for (size_t b = 0; b < buckets.size(); ++b) {
        std::vector<at::Tensor> rest{take(b)};
        if (per_rank > 0) {
          std::vector<c10::intrusive_ptr<c10d::Work>> ws;
          reduce(rest[0], b, ws);
          for (auto& w : ws) w->wait();
          for (auto& p : pieces[b])
            if (p.owner == rank) owned.narrow(0, p.dst, p.len).add_(rest[0].narrow(0, p.at, p.len));
          continue;
        }
        g->backend(rest).allreduce(rest)->wait();
        flats[b].add_(rest[0]);
      }
    }
    // The sums become the gradients: views of the bucket (stage 2: they are in `owned`, and
    // the parameters keep no gradient).
    for (size_t b = 0; per_rank == 0 && b < buckets.size(); ++b) {
      int64_t off = 0;
      for (size_t i : buckets[b]) {
        at::Tensor& p = params[i];
        int64_t n = p.numel();
        p.mutable_grad() = flats[b].narrow(0, off, n).view(p.sizes());
        off += n;
      }
      flats[b] = at::Tensor();
    }
    if (!learned) learn();
    last_peak = peak;
    reset();
  }

  // After the first step: rank 0's order of the parameters' gradients becoming final, and
  // how many times each was accumulated, on every rank.
  void learn() {
    size_t n = params.size();
    std::vector<size_t> seq;
    for (size_t k = 0; k < n; ++k)
      if (stamp[n - 1 - k] >= 0) seq.push_back(n - 1 - k);
    std::stable_sort(seq.begin(), seq.end(), [&](size_t a, size_t b) { return stamp[a] < stamp[b]; });
    for (size_t k = 0; k < n; ++k)
      if (stamp[n - 1 - k] < 0) seq.push_back(n - 1 - k);  // never through autograd: sent by `finish`
    std::vector<at::Tensor> t{at::empty({int64_t(2 * n)}, at::kDouble)};
    auto a = t[0].accessor<double, 1>();
    for (size_t k = 0; k < n; ++k) {
      a[k] = double(seq[k]);
      a[n + k] = double(count[k]);
    }
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    g->gloo->broadcast(t, o)->wait();
    a = t[0].accessor<double, 1>();
    bool any = false;
    for (size_t k = 0; k < n; ++k) {
      seq[k] = size_t(a[k]);
      expected[k] = int64_t(a[n + k]);
      any = any || expected[k] > 0;
    }
    if (!any) return;  // rank 0 ran no backward in this step's last micro-batch: learn later
    build(seq);
    learned = true;
  }
};

void ReadyHook::operator()(const torch::autograd::Variable&) { r->ready(i); }
}  // namespace

extern "C" {

// Rank `rank` of `world` joins the group whose store rank 0 serves at addr:port.
char* tb_dist_init(int rank, int world, const char* addr, int port, long timeout_ms, void** out) {
  QuietLog quiet;
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = rank == 0;
    o.numWorkers = world;
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), o);
    auto opts = c10d::ProcessGroupGloo::Options::create(g->timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(addr)));
    g->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, opts);
    *out = g.release();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// Whether this build can add an NCCL backend (compiled with NCCL's headers).
int tb_dist_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// Adds the NCCL backend for CUDA tensors, this rank on GPU `device` (every rank calls it, or
// none). Its communicators are made at the first collective.
char* tb_dist_add_nccl(void* gp, int rank, int world, int device) {
  try {
#ifdef USE_C10D_NCCL
    auto g = static_cast<Group*>(gp);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = g->timeout;
    auto store = c10::make_intrusive<c10d::PrefixStore>("nccl/", g->store);
    g->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    return nullptr;
#else
    (void)gp, (void)rank, (void)world, (void)device;
    return strdup("this build has no NCCL (built without NCCL's headers)");
#endif
  } catch (const std::exception& e) {
    return error(e);
  }
}

void tb_dist_free(void* g) {
  delete static_cast<Group*>(g);
}

// Sums each tensor over the ranks, in place (one collective for the list).
char* tb_dist_all_reduce(void* g, at::Tensor** ts, size_t n) {
  try {
    auto tensors = list(ts, n);
    static_cast<Group*>(g)->all_reduce(tensors);
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// Every rank's tensors become rank `root`'s.
char* tb_dist_broadcast(void* gp, at::Tensor** ts, size_t n, int root) {
  try {
    auto tensors = list(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(gp)->backend(tensors).broadcast(tensors, o)->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// `out` (world x the size of `in`, one dtype) becomes every rank's `in`, in rank order.
char* tb_dist_all_gather(void* gp, at::Tensor* in, at::Tensor* out) {
  try {
    std::vector<at::Tensor> ts{*in};
    static_cast<Group*>(gp)->backend(ts)._allgather_base(*out, *in)->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// Puts `data` under `key` in the group's store (rank 0's TCPStore).
char* tb_dist_store_set(void* g, const char* key, const uint8_t* data, size_t n) {
  try {
    static_cast<Group*>(g)->store->set(std::string(key), std::vector<uint8_t>(data, data + n));
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// Waits for `key` in the store (up to the group's timeout), hands its value over as a
// malloc'd buffer (released with tb_free) and deletes the key.
char* tb_dist_store_take(void* g, const char* key, uint8_t** out, size_t* n) {
  try {
    auto& store = static_cast<Group*>(g)->store;
    std::vector<uint8_t> v = store->get(std::string(key));
    store->deleteKey(std::string(key));
    *n = v.size();
    *out = static_cast<uint8_t*>(malloc(v.size() > 0 ? v.size() : 1));
    if (!v.empty()) memcpy(*out, v.data(), v.size());
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

char* tb_dist_barrier(void* g) {
  try {
    static_cast<Group*>(g)->gloo->barrier()->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// A gradient reducer over `params` (hooks on each until tb_reducer_free), buckets of at most
// `cap_bytes`; with `per_rank` > 0 (ZeRO stage 2), the sums of this rank's shard go to `owned`.
char* tb_reducer_new(void* g, at::Tensor** ps, size_t n, int64_t cap_bytes, int64_t per_rank, at::Tensor* owned, void** out) {
  try {
    *out = new Reducer(static_cast<Group*>(g), list(ps, n), cap_bytes, per_rank, owned ? *owned : at::Tensor());
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// The next backward is the step's last on this rank: its gradients are final as they arrive.
void tb_reducer_arm(void* r) {
  auto rd = static_cast<Reducer*>(r);
  std::lock_guard<std::mutex> lock(rd->mu);
  rd->armed = true;
}

// Sends what is left, waits, and makes every parameter's gradient the sum over the ranks.
char* tb_reducer_finish(void* r) {
  try {
    static_cast<Reducer*>(r)->finish();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e);
  }
}

// The reducer's buckets, how many of them the last finish found already sent (all-reduced
// while the backward ran), whether it had to send all of them again, and the most bytes of
// buckets it held at once in the last step.
void tb_reducer_stats(void* r, size_t* buckets, size_t* sent_early, int* resent, int64_t* peak_bytes) {
  auto rd = static_cast<Reducer*>(r);
  std::lock_guard<std::mutex> lock(rd->mu);
  *buckets = rd->buckets.size();
  *sent_early = rd->sent_early;
  *resent = rd->resent;
  *peak_bytes = rd->last_peak;
}

void tb_reducer_free(void* r) {
  delete static_cast<Reducer*>(r);
}
}

// torch.distributed's engine (c10d) for data parallelism, behind a small C ABI (src/train/dist.rs):
// a TCPStore rendezvous and a ProcessGroupGloo, as `torch.distributed.init_process_group("gloo")`
// builds them, the three collectives training needs (sum all-reduce, broadcast, barrier), and
// the store's set and get, through which rank 0 gathers what the ranks generated.
// Compiled only where gloo's headers are present (scripts/bootstrap puts Debian's libgloo-dev
// headers beside libtorch's; the library itself is inside libtorch_cpu). Errors come back as
// a malloc'd message, as in ops.cpp.
#include <ATen/core/Tensor.h>
#include "ffi.h"
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

using tb::list;
}  // namespace

extern "C" {

// Rank `rank` of `world` joins the group whose store rank 0 serves at addr:port.
char* tb_dist_init(int rank, int world, const char* addr, int port, long timeout_ms, void** out) {
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = rank == 0;
    o.numWorkers = world;
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto g = new Group();
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), o);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(addr)));
    g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, opts);
    *out = g;
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

void tb_dist_free(void* g) {
  delete static_cast<Group*>(g);
}

// Sums each tensor over the ranks, in place (one collective for the list).
char* tb_dist_all_reduce(void* g, at::Tensor** ts, size_t n) {
  try {
    auto tensors = list(ts, n);
    static_cast<Group*>(g)->pg->allreduce(tensors)->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Every rank's tensors become rank `root`'s.
char* tb_dist_broadcast(void* g, at::Tensor** ts, size_t n, int root) {
  try {
    auto tensors = list(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(g)->pg->broadcast(tensors, o)->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Puts `data` under `key` in the group's store (rank 0's TCPStore).
char* tb_dist_store_set(void* g, const char* key, const uint8_t* data, size_t n) {
  try {
    static_cast<Group*>(g)->store->set(std::string(key), std::vector<uint8_t>(data, data + n));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
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
    return strdup(e.what());
  }
}

char* tb_dist_barrier(void* g) {
  try {
    static_cast<Group*>(g)->pg->barrier()->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}
}

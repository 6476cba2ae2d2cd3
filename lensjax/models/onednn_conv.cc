// oneDNN 2-D convolutions for JAX on CPU, as XLA FFI handlers (docs/cpu-speed.md, "oneDNN convolutions").
//
// Three handlers, with plain row-major buffers at the boundary, all of one element type: float32, or bfloat16
// (oneDNN accumulates in float32 and rounds the result; AMX or AVX-512 BF16 kernels where the CPU has them):
//   lensjax_onednn_conv_forward          x (N, H, W, I), w (KH, KW, I, O)    -> y  (N, OH, OW, O)
//   lensjax_onednn_conv_backward_data    dy (N, OH, OW, O), w (KH, KW, I, O) -> dx (N, H, W, I)
//   lensjax_onednn_conv_backward_weights x (N, H, W, I), dy (N, OH, OW, O)  -> dw (KH, KW, I, O)
// Attributes (int64 pairs, height then width): `strides`, `dilation` (1 = none, as in lax), `padding_low` and
// `padding_high` (zeros added before and after each spatial axis, >= 0). The shapes not given by the operands come
// from the result buffer. Weights go through oneDNN's preferred (blocked) layout when the primitive asks for one;
// activations stay NHWC. Primitives are built once per shape and kept in a process-wide cache.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// OpenMP, oneDNN's threading runtime in the pinned build (libgomp). The team size is a per-thread setting.
extern "C" int omp_get_max_threads();
extern "C" void omp_set_num_threads(int);

namespace {

// Convolutions of fewer multiply-adds run on one thread, without a lock: XLA runs independent ones (a
// convolution's dX and dW, parallel branches) on its other threads meanwhile, and a team's start-up and
// synchronisation cost more than they save on such small work. Larger ones run on several threads (see Threads).
// Forward convolutions mostly follow one another (a forward pass is a chain), so they take several threads from a
// lower size than the gradients, which come in independent pairs (docs/cpu-speed.md, "Threads per call").
constexpr double kForwardTeamMinMacs = 1e8;
constexpr double kBackwardTeamMinMacs = 5e8;

enum class Kind { kForward, kBackwardData, kBackwardWeights };

// How a convolution of at least the team threshold runs on several threads. `kPool` (the default): its batch is
// cut into one equal part per thread of XLA's own CPU thread pool, each part a one-thread oneDNN call, run by the
// calling thread and the pool's others as they come free; so oneDNN never starts threads of its own beside XLA's
// and nothing oversubscribes the cores (docs/cpu-speed.md, "Threads per call"). `kTeam`: oneDNN's OpenMP team,
// one such call at a time. LENSJAX_ONEDNN_THREADS=team|pool overrides the default, read once per process. A batch
// that does not split into one equal part per pool thread (fewer images than threads included: the team would
// leave no core idle), a pool of one thread and a bfloat16 kernel gradient (whose parts would be summed in
// bfloat16) take the team.
enum class Threads { kPool, kTeam };

Threads ThreadsMode() {
  static const Threads mode = [] {
    const char* text = std::getenv("LENSJAX_ONEDNN_THREADS");
    return text != nullptr && std::string(text) == "team" ? Threads::kTeam : Threads::kPool;
  }();
  return mode;
}

// The team threshold of `kind`. LENSJAX_ONEDNN_TEAM_MIN_MACS overrides both ("N") or each ("FORWARD,BACKWARD"),
// read once per process, for measuring other thresholds.
double TeamMinMacs(Kind kind) {
  static const std::pair<double, double> thresholds = [] {
    std::pair<double, double> value{kForwardTeamMinMacs, kBackwardTeamMinMacs};
    const char* text = std::getenv("LENSJAX_ONEDNN_TEAM_MIN_MACS");
    if (text != nullptr && *text != '\0') {
      char* rest = nullptr;
      value.first = value.second = std::strtod(text, &rest);
      if (*rest == ',') value.second = std::strtod(rest + 1, nullptr);
    }
    return value;
  }();
  return kind == Kind::kForward ? thresholds.first : thresholds.second;
}

// Everything that determines a primitive: the kind, NHWC input dims, HWIO kernel dims, output spatial dims, the
// window attributes and the element type.
using Key = std::tuple<int, std::vector<int64_t>>;

struct Geometry {
  int64_t n, h, w, in, out, kh, kw, oh, ow;
  dnnl::memory::dims strides, dilation, padding_low, padding_high;  // oneDNN: dilation 0 = none
  dnnl::memory::data_type type = dnnl::memory::data_type::f32;

  dnnl::memory::desc src(dnnl::memory::format_tag tag = dnnl::memory::format_tag::nhwc) const {
    return {{n, in, h, w}, type, tag};
  }
  dnnl::memory::desc dst(dnnl::memory::format_tag tag = dnnl::memory::format_tag::nhwc) const {
    return {{n, out, oh, ow}, type, tag};
  }
  dnnl::memory::desc weights(dnnl::memory::format_tag tag = dnnl::memory::format_tag::hwio) const {
    return {{out, in, kh, kw}, type, tag};
  }
  // Multiply-adds of the convolution (the same for its two gradients).
  double macs() const { return static_cast<double>(n) * oh * ow * in * out * kh * kw; }
  std::vector<int64_t> key() const {
    std::vector<int64_t> k{n, h, w, in, out, kh, kw, oh, ow, static_cast<int64_t>(type)};
    for (const auto* v : {&strides, &dilation, &padding_low, &padding_high}) k.insert(k.end(), v->begin(), v->end());
    return k;
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A primitive with its descriptor, and the reorders between the caller's HWIO kernel and the layout the
// primitive chose (absent when it chose HWIO itself).
struct Entry {
  dnnl::primitive primitive;
  dnnl::memory::desc weights_desc;     // the layout the primitive reads or writes its (diff) weights in
  size_t scratchpad_bytes = 0;
  bool weights_reordered = false;
  dnnl::reorder weights_reorder;       // HWIO -> weights_desc (forward, backward data), or back (backward weights)
};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, const dnnl::primitive_attr& attr) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.src(),
      g.weights(dnnl::memory::format_tag::any), g.dst(), g.strides, g.dilation, g.padding_low, g.padding_high,
      attr);
}

// The descriptor of a backward convolution primitive (backward data or backward weights), hinted by the forward.
template <typename Primitive>
typename Primitive::primitive_desc BackwardDesc(const Geometry& g, const dnnl::primitive_attr& attr) {
  return typename Primitive::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, g.src(), g.weights(dnnl::memory::format_tag::any), g.dst(),
      g.strides, g.dilation, g.padding_low, g.padding_high, ForwardDesc(g, attr), attr);
}

Entry Build(Kind kind, const Geometry& g) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per thread: concurrent calls never share one
  Entry entry;
  dnnl::memory::desc scratchpad;
  if (kind == Kind::kForward) {
    auto pd = ForwardDesc(g, attr);
    entry.primitive = dnnl::convolution_forward(pd);
    entry.weights_desc = pd.weights_desc();
    scratchpad = pd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data>(g, attr);
    entry.primitive = dnnl::convolution_backward_data(pd);
    entry.weights_desc = pd.weights_desc();
    scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = BackwardDesc<dnnl::convolution_backward_weights>(g, attr);
    entry.primitive = dnnl::convolution_backward_weights(pd);
    entry.weights_desc = pd.diff_weights_desc();
    scratchpad = pd.scratchpad_desc();
  }
  entry.scratchpad_bytes = scratchpad.get_size();
  entry.weights_reordered = entry.weights_desc != g.weights();
  if (entry.weights_reordered) {
    entry.weights_reorder = kind == Kind::kBackwardWeights
                                ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), entry.weights_desc,
                                                                              Engine(), g.weights()))
                                : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), g.weights(), Engine(),
                                                                              entry.weights_desc));
  }
  return entry;
}

// Primitives are immutable once built and safe to execute from several threads at once; the mutex guards only
// the map. Entries are never removed: a network has a few dozen conv shapes.
const Entry& Lookup(Kind kind, const Geometry& g) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  Key key{static_cast<int>(kind), g.key()};
  std::get<1>(key).push_back(omp_get_max_threads());  // built for the calling thread's team size (see Run)
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found == cache.end()) found = cache.emplace(key, std::make_unique<Entry>(Build(kind, g))).first;
  return *found->second;
}

// The oneDNN element type of three buffers of one type, float32 or bfloat16.
ffi::Error ElementType(ffi::DataType a, ffi::DataType b, ffi::DataType c, dnnl::memory::data_type* type) {
  if (a != b || a != c || (a != ffi::DataType::F32 && a != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument("onednn conv: expected three float32 or three bfloat16 buffers");
  }
  *type = a == ffi::DataType::F32 ? dnnl::memory::data_type::f32 : dnnl::memory::data_type::bf16;
  return ffi::Error::Success();
}

ffi::Error MakeGeometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> w_dims,
                        ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> padding_low,
                        ffi::Span<const int64_t> padding_high, Geometry* g) {
  if (x_dims.size() != 4 || w_dims.size() != 4 || y_dims.size() != 4 || strides.size() != 2 ||
      dilation.size() != 2 || padding_low.size() != 2 || padding_high.size() != 2) {
    return ffi::Error::InvalidArgument("onednn conv: expected NHWC/HWIO operands and 2 spatial attributes");
  }
  *g = Geometry{x_dims[0], x_dims[1], x_dims[2], x_dims[3], w_dims[3], w_dims[0], w_dims[1], y_dims[1], y_dims[2],
                {strides[0], strides[1]}, {dilation[0] - 1, dilation[1] - 1},
                {padding_low[0], padding_low[1]}, {padding_high[0], padding_high[1]}};
  if (w_dims[2] != g->in || y_dims[0] != g->n || y_dims[3] != g->out) {
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not agree");
  }
  return ffi::Error::Success();
}

// A buffer of each calling thread that only grows (the scratchpad, the reordered weights): later calls reuse its
// pages instead of mapping and zero-filling fresh ones. 64-byte aligned, as oneDNN prefers.
class ThreadBuffer {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_ || data_ == nullptr) {
      size_ = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
      data_.reset(static_cast<char*>(std::aligned_alloc(64, size_)));
      if (data_ == nullptr) throw std::bad_alloc();
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(char* pointer) const { std::free(pointer); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
};

// One primitive runs at a time. XLA's CPU runtime calls independent custom calls (a convolution's input and
// kernel gradients) from several of its worker threads at once, and each call would start its own OpenMP team
// on the same cores: measured in IS-Net's step, concurrent calls ran 3-4x slower than one after the other.
std::mutex& ExecutionMutex() {
  static std::mutex mutex;
  return mutex;
}

// Sets the calling thread's OpenMP team size for one call and puts the previous one back.
class TeamSize {
 public:
  explicit TeamSize(int threads) : previous_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~TeamSize() { omp_set_num_threads(previous_); }
  int threads() const { return omp_get_max_threads(); }

 private:
  int previous_;
};

// Executes a cached primitive with the calling thread's scratchpad: `weights` is already in the layout the
// primitive reads or writes (entry.weights_desc).
void Execute(Kind kind, const Entry& entry, const Geometry& g, void* src, void* weights, void* dst) {
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  thread_local ThreadBuffer scratch_buffer;
  dnnl::memory src_memory(g.src(), engine, src), dst_memory(g.dst(), engine, dst);
  dnnl::memory weights_memory(entry.weights_desc, engine, weights);
  dnnl::memory scratchpad({{static_cast<int64_t>(entry.scratchpad_bytes)}, dnnl::memory::data_type::u8,
                           dnnl::memory::format_tag::x},
                          engine, scratch_buffer.Get(entry.scratchpad_bytes));
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SCRATCHPAD, scratchpad}};
  if (kind == Kind::kForward) {
    args.insert({{DNNL_ARG_SRC, src_memory}, {DNNL_ARG_WEIGHTS, weights_memory}, {DNNL_ARG_DST, dst_memory}});
  } else if (kind == Kind::kBackwardData) {
    args.insert({{DNNL_ARG_DIFF_SRC, src_memory}, {DNNL_ARG_WEIGHTS, weights_memory},
                 {DNNL_ARG_DIFF_DST, dst_memory}});
  } else {
    args.insert({{DNNL_ARG_SRC, src_memory}, {DNNL_ARG_DIFF_WEIGHTS, weights_memory},
                 {DNNL_ARG_DIFF_DST, dst_memory}});
  }
  entry.primitive.execute(stream, args);
  stream.wait();
}

// Runs `parts` tasks, task(0) .. task(parts - 1), on the calling thread and on the threads of XLA's pool that come
// free meanwhile; returns when all have run. The caller takes tasks until none is left, then waits only for those
// other threads have started, so a busy pool costs no waiting. The first exception of a task is rethrown.
void RunParts(ffi::ThreadPool& pool, int parts, const std::function<void(int)>& task) {
  struct Job {
    std::atomic<int> next{0};
    int parts = 0, done = 0;
    const std::function<void(int)>* task = nullptr;  // valid while the caller waits: tasks start before it returns
    std::mutex mutex;
    std::condition_variable finished;
    std::exception_ptr error;
  };
  auto job = std::make_shared<Job>();
  job->parts = parts;
  job->task = &task;
  auto take_tasks = [](Job& job) {
    for (int part; (part = job.next.fetch_add(1)) < job.parts;) {
      std::exception_ptr error;
      try {
        (*job.task)(part);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(job.mutex);
      if (error && !job.error) job.error = error;
      if (++job.done == job.parts) job.finished.notify_all();
    }
  };
  for (int helper = 1; helper < parts; ++helper) pool.Schedule([job, take_tasks] { take_tasks(*job); });
  take_tasks(*job);
  std::unique_lock<std::mutex> lock(job->mutex);
  job->finished.wait(lock, [&] { return job->done == job->parts; });
  if (job->error) std::rethrow_exception(job->error);
}

// The batch parts `kind` runs in on `pool`, or 1 for a whole call (see Threads).
int64_t BatchParts(Kind kind, const Geometry& g, ffi::ThreadPool& pool) {
  if (ThreadsMode() != Threads::kPool || g.macs() < TeamMinMacs(kind)) return 1;
  if (kind == Kind::kBackwardWeights && g.type != dnnl::memory::data_type::f32) return 1;
  const int64_t threads = pool.num_threads();
  return threads > 1 && g.n % threads == 0 ? threads : 1;
}

// Runs the convolution as `BatchParts` equal batch parts: `weights` is the caller's HWIO kernel (read, or written
// for backward weights). Several parts run on one thread each (see Threads); one part is the whole call on the
// calling thread, with oneDNN's team where it is at least the team threshold (one such call at a time). Forward and
// input-gradient parts read the kernel, reordered once, and write their own images of the result; kernel-gradient
// parts each write a partial kernel gradient, summed in part order into the first (float32 when there are several).
ffi::Error Run(Kind kind, const Geometry& g, void* src, void* weights, void* dst, ffi::ThreadPool& pool) {
  try {
    const int64_t parts = BatchParts(kind, g, pool);
    const int threads = parts == 1 && g.macs() >= TeamMinMacs(kind) ? omp_get_max_threads() : 1;
    TeamSize team(threads);
    std::unique_lock<std::mutex> one_at_a_time(ExecutionMutex(), std::defer_lock);
    if (threads > 1) one_at_a_time.lock();  // a one-thread call starts no team: no need to wait
    Geometry part = g;
    part.n = g.n / parts;
    const Entry& entry = Lookup(kind, part);
    const size_t element = dnnl::memory::data_type_size(g.type);
    const size_t src_step = part.n * g.h * g.w * g.in * element, dst_step = part.n * g.oh * g.ow * g.out * element;
    char* src_bytes = static_cast<char*>(src);
    char* dst_bytes = static_cast<char*>(dst);
    dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    dnnl::memory user_weights(g.weights(), engine, weights);
    // The primitive's kernel: the caller's where it reads HWIO itself, else a buffer. Kernel-gradient parts
    // write one each: part 0 into that kernel, the others into buffers of their own after it.
    const size_t bytes = entry.weights_desc.get_size();
    const bool backward_weights = kind == Kind::kBackwardWeights;
    const int64_t buffers = (entry.weights_reordered ? 1 : 0) + (backward_weights ? parts - 1 : 0);
    thread_local ThreadBuffer weights_buffer;
    char* buffer = static_cast<char*>(weights_buffer.Get(bytes * buffers));
    char* kernel = entry.weights_reordered ? buffer : static_cast<char*>(weights);
    auto part_weights = [&](int64_t i) -> void* {
      if (!backward_weights || i == 0) return kernel;
      return buffer + (entry.weights_reordered ? i : i - 1) * bytes;
    };
    dnnl::memory primitive_weights(entry.weights_desc, engine, kernel);
    if (!backward_weights && entry.weights_reordered) {
      entry.weights_reorder.execute(stream, user_weights, primitive_weights);
      stream.wait();
    }
    RunParts(pool, static_cast<int>(parts), [&](int i) {
      TeamSize part_team(threads);  // the threads of XLA's pool that take parts run them on one thread too
      Execute(kind, entry, part, src_bytes + i * src_step, part_weights(i), dst_bytes + i * dst_step);
    });
    if (backward_weights) {
      float* sum = reinterpret_cast<float*>(kernel);
      for (int64_t i = 1; i < parts; ++i) {
        const float* add = static_cast<const float*>(part_weights(i));
        for (size_t k = 0; k < bytes / sizeof(float); ++k) sum[k] += add[k];
      }
      if (entry.weights_reordered) {
        entry.weights_reorder.execute(stream, primitive_weights, user_weights);
        stream.wait();
      }
    }
  } catch (const std::exception& error) {  // dnnl::error, or an allocation that failed
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + error.what());
  }
  return ffi::Error::Success();
}

// The geometry of a call from its NHWC input, HWIO kernel and NHWC output buffers (whichever of them are the
// operands and which the result) and the window attributes.
ffi::Error CallGeometry(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, const ffi::AnyBuffer& y,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                        ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> padding_high, Geometry* g) {
  if (auto error = MakeGeometry(x.dimensions(), w.dimensions(), y.dimensions(), strides, dilation, padding_low,
                                padding_high, g);
      error.failure()) {
    return error;
  }
  return ElementType(x.element_type(), w.element_type(), y.element_type(), &g->type);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                   ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> padding_high) {
  Geometry g;
  if (auto error = CallGeometry(x, w, *y, strides, dilation, padding_low, padding_high, &g); error.failure()) {
    return error;
  }
  return Run(Kind::kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data(), pool);
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                        ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> padding_high) {
  Geometry g;
  if (auto error = CallGeometry(*dx, w, dy, strides, dilation, padding_low, padding_high, &g); error.failure()) {
    return error;
  }
  return Run(Kind::kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data(), pool);
}

ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                           ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> padding_high) {
  Geometry g;
  if (auto error = CallGeometry(x, *dw, dy, strides, dilation, padding_low, padding_high, &g); error.failure()) {
    return error;
  }
  return Run(Kind::kBackwardWeights, g, x.untyped_data(), dw->untyped_data(), dy.untyped_data(), pool);
}

}  // namespace

// Creates the CPU engine; the number of threads oneDNN will use, or -1 where no CPU engine can be created (the
// Python side then keeps XLA's convolutions).
extern "C" int lensjax_onednn_threads() {
  try {
    Engine();
  } catch (const dnnl::error&) {
    return -1;
  }
  return omp_get_max_threads();
}

// Whether this CPU runs bfloat16 convolutions natively (AVX-512 BF16 or AMX; elsewhere oneDNN would emulate them
// slowly or have no kernel): 1 or 0. The Python side then keeps XLA's convolutions for bfloat16 operands.
extern "C" int lensjax_onednn_native_bf16() {
  try {
    // The ISA values are bit masks, each containing those it extends (AMX ones contain AVX-512 BF16).
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
    return (isa & bf16) == bf16 ? 1 : 0;
  } catch (const dnnl::error&) {
    return 0;
  }
}

#define LENSJAX_ONEDNN_HANDLER(name, function)                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, function,                                                         \
                                ffi::Ffi::Bind()                                                        \
                                    .Ctx<ffi::ThreadPool>()                                             \
                                    .Arg<ffi::AnyBuffer>()                                              \
                                    .Arg<ffi::AnyBuffer>()                                              \
                                    .Ret<ffi::AnyBuffer>()                                              \
                                    .Attr<ffi::Span<const int64_t>>("strides")                          \
                                    .Attr<ffi::Span<const int64_t>>("dilation")                         \
                                    .Attr<ffi::Span<const int64_t>>("padding_low")                      \
                                    .Attr<ffi::Span<const int64_t>>("padding_high"))

LENSJAX_ONEDNN_HANDLER(lensjax_onednn_conv_forward, Forward);
LENSJAX_ONEDNN_HANDLER(lensjax_onednn_conv_backward_data, BackwardData);
LENSJAX_ONEDNN_HANDLER(lensjax_onednn_conv_backward_weights, BackwardWeights);

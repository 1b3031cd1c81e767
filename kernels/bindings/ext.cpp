// nanobind bindings of the hot path: NumPy arrays in, no copies, the GIL released while C++ runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <stdexcept>
#include <string>
#include <thread>

#include "../src/hotpath.h"
// The GPU launchers and their kernels, compiled here in CPU-emulation mode (compat.h, fiber_emulator.h): the emu_*
// functions below call the very launcher code the GPU runs (grid, block, constants), see tests/kernels.
#include "../cuda/hotpath.cu"
#include "../cuda/selftest_kernels.cuh"
#include "../multi_scale_subtraction/mss.cu"
#include "../position_attention/pam.cu"
#include "../channel_attention/cam.cu"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Frame = nb::ndarray<uint8_t, nb::ndim<3>, nb::device::cpu>;
using F32_2D = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

int default_threads(int t) {
  if (t > 0) return t;
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

void check_frame(const Frame& f, const char* what) {
  if (f.shape(2) != 3) throw std::invalid_argument(std::string(what) + ": expected a BGR frame [H, W, 3]");
  if (f.stride(2) != 1 || f.stride(1) != 3)
    throw std::invalid_argument(std::string(what) + ": pixels must be packed (row stride may differ)");
}

void preprocess(Frame src, nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu> dst, std::array<float, 3> mean,
                std::array<float, 3> stdv, int threads) {
  check_frame(src, "preprocess src");
  if (dst.shape(0) != 1 || dst.shape(1) != 3) throw std::invalid_argument("preprocess dst: expected [1, 3, h, w]");
  const int h = static_cast<int>(dst.shape(2)), w = static_cast<int>(dst.shape(3));
  float* f32 = nullptr;
  uint16_t* f16 = nullptr;
  if (dst.dtype() == nb::dtype<float>())
    f32 = static_cast<float*>(dst.data());
  else if (dst.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && dst.dtype().bits == 16)
    f16 = static_cast<uint16_t*>(dst.data());
  else
    throw std::invalid_argument("preprocess dst: dtype must be float32 or float16");
  nb::gil_scoped_release nogil;
  polypseg::preprocess_bgr(static_cast<const uint8_t*>(src.data()), static_cast<int>(src.shape(0)),
                           static_cast<int>(src.shape(1)), src.stride(0), h, w, mean.data(), stdv.data(), f32, f16,
                           default_threads(threads));
}

int64_t overlay(Frame frame, F32_2D logits, float logit_threshold, std::array<uint8_t, 3> fill, int alpha256,
                std::array<uint8_t, 3> outline, std::optional<nb::ndarray<uint8_t, nb::ndim<2>, nb::c_contig>> mask,
                int threads) {
  check_frame(frame, "overlay frame");
  const int H = static_cast<int>(frame.shape(0)), W = static_cast<int>(frame.shape(1));
  uint8_t* m = nullptr;
  if (mask) {
    if (mask->shape(0) != static_cast<size_t>(H) || mask->shape(1) != static_cast<size_t>(W))
      throw std::invalid_argument("overlay mask: must be [H, W] like the frame");
    m = mask->data();
  }
  nb::gil_scoped_release nogil;
  return polypseg::overlay(static_cast<uint8_t*>(frame.data()), H, W, frame.stride(0), logits.data(),
                           static_cast<int>(logits.shape(0)), static_cast<int>(logits.shape(1)), logit_threshold,
                           fill.data(), alpha256, outline.data(), m, default_threads(threads));
}

void check_launch(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::invalid_argument(std::string(what) + ": the launcher refused the arguments");
}

// The CUDA kernels of kernels/cuda, executed on the CPU through their GPU launchers (tests only; slow by design).
void emu_preprocess(Frame src, nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu> dst, std::array<float, 3> mean,
                    std::array<float, 3> stdv) {
  check_frame(src, "emu_preprocess src");
  if (dst.shape(0) != 1 || dst.shape(1) != 3) throw std::invalid_argument("emu_preprocess dst: expected [1, 3, h, w]");
  const int h = static_cast<int>(dst.shape(2)), w = static_cast<int>(dst.shape(3));
  const auto* s = static_cast<const unsigned char*>(src.data());
  const int H = static_cast<int>(src.shape(0)), W = static_cast<int>(src.shape(1));
  int fp16 = 0;
  if (dst.dtype() == nb::dtype<float>())
    fp16 = 0;
  else if (dst.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && dst.dtype().bits == 16)
    fp16 = 1;
  else
    throw std::invalid_argument("emu_preprocess dst: dtype must be float32 or float16");
  check_launch(polypseg_cuda_preprocess(s, H, W, (long long)src.stride(0), h, w, mean.data(), stdv.data(), dst.data(),
                                        fp16, nullptr),
               "emu_preprocess");
}

uint64_t emu_overlay(Frame frame, F32_2D logits, float thr, std::array<uint8_t, 3> fill, int alpha256,
                     std::array<uint8_t, 3> outline) {
  check_frame(frame, "emu_overlay frame");
  const int H = static_cast<int>(frame.shape(0)), W = static_cast<int>(frame.shape(1));
  unsigned long long count = 0;
  check_launch(polypseg_cuda_overlay(static_cast<unsigned char*>(frame.data()), H, W, (long long)frame.stride(0),
                                     logits.data(), (int)logits.shape(0), (int)logits.shape(1), thr, fill.data(),
                                     alpha256, outline.data(), &count, nullptr),
               "emu_overlay");
  return count;
}

// The launch schedule of every emulated launch (block and thread order, race checker); returns the previous one as
// (order, seed, race_check). Orders: "alternate" (default), "forward", "reverse", "random" (seeded shuffle).
std::tuple<std::string, uint64_t, bool> emu_schedule(std::optional<std::string> order, std::optional<uint64_t> seed,
                                                     std::optional<bool> race_check) {
  static const char* const kNames[] = {"alternate", "forward", "reverse", "random"};
  pp_emu::Schedule& s = pp_emu::schedule();
  std::tuple<std::string, uint64_t, bool> previous{kNames[static_cast<int>(s.order)], s.seed, s.race_check};
  if (order) {
    int i = 0;
    while (i < 4 && *order != kNames[i]) ++i;
    if (i == 4) throw std::invalid_argument("emu_schedule: order must be alternate, forward, reverse or random");
    s.order = static_cast<pp_emu::Order>(i);
  }
  if (seed) s.seed = *seed;
  if (race_check) s.race_check = *race_check;
  return previous;
}

// Emulator self-test: block sums with and without the first barrier (fiber scheduler, poisoned shared memory).
nb::ndarray<nb::numpy, float, nb::ndim<1>> emu_block_sum(nb::ndarray<const float, nb::ndim<1>, nb::c_contig> in,
                                                          int block, bool first_barrier) {
  if (block <= 0 || block > 1024 || (block & (block - 1)))
    throw std::invalid_argument("block must be a power of two in 1..1024");
  const int n = static_cast<int>(in.shape(0));
  const int nblocks = (n + block - 1) / block;
  auto* out = new float[nblocks];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  if (first_barrier)
    pp_fiber::launch(dim3(nblocks), dim3(block), polypseg_selftest::block_sum_kernel<true>, in.data(), out, n);
  else
    pp_fiber::launch(dim3(nblocks), dim3(block), polypseg_selftest::block_sum_kernel<false>, in.data(), out, n);
  return nb::ndarray<nb::numpy, float, nb::ndim<1>>(out, {static_cast<size_t>(nblocks)}, owner);
}

int emu_last_writer(int blocks, int threads) {
  if (blocks <= 0 || threads <= 0 || threads > 1024) throw std::invalid_argument("emu_last_writer: bad launch");
  int out = -1;
  pp_fiber::launch(dim3(blocks), dim3(threads), polypseg_selftest::last_writer_kernel, &out);
  return out;
}

void emu_shared_out_of_bounds() {
  float out[33] = {};
  pp_fiber::launch(dim3(1), dim3(33), polypseg_selftest::shared_out_of_bounds_kernel, out);
}

void emu_divergent_barrier() {
  float out[32] = {};
  pp_fiber::launch(dim3(1), dim3(32), polypseg_selftest::divergent_barrier_kernel, out);
}

// MultiScaleSubtraction kernel source executed on the CPU (fiber emulator: real barriers, poisoned shared memory).
void emu_mss(nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu> a,
             nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu> b,
             nb::ndarray<nb::ndim<4>, nb::c_contig, nb::device::cpu> d,
             std::optional<nb::ndarray<const float, nb::ndim<2>, nb::c_contig>> bn) {
  const bool f32 = a.dtype() == nb::dtype<float>();
  const bool f16 = a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && a.dtype().bits == 16;
  if (!f32 && !f16) throw std::invalid_argument("emu_mss: dtype must be float32 or float16");
  if (b.dtype() != a.dtype() || d.dtype() != a.dtype()) throw std::invalid_argument("emu_mss: dtypes differ");
  const int N = (int)a.shape(0), C = (int)a.shape(1), h = (int)a.shape(2), w = (int)a.shape(3);
  const int H = (int)b.shape(2), W = (int)b.shape(3);
  if ((int)b.shape(0) != N || (int)b.shape(1) != C || d.shape(0) != b.shape(0) || d.shape(1) != b.shape(1) ||
      d.shape(2) != b.shape(2) || d.shape(3) != b.shape(3))
    throw std::invalid_argument("emu_mss: shapes do not match");
  polypseg_mss::Params p{N, C, h, w, H, W, 0, nullptr, nullptr, nullptr, nullptr};
  if (bn) {
    if (bn->shape(0) != 4 || (int)bn->shape(1) != C) throw std::invalid_argument("emu_mss: bn must be [4, C]");
    const float* q = bn->data();
    p.num_scales = 2;
    p.g3 = q;
    p.h3 = q + C;
    p.g5 = q + 2 * C;
    p.h5 = q + 3 * C;
  }
  check_launch(polypseg_mss_launch(a.data(), b.data(), d.data(), N, C, h, w, H, W, p.num_scales, p.g3, p.h3, p.g5,
                                  p.h5, f16 ? 1 : 0, nullptr),
               "emu_mss");
}

using Any3 = nb::ndarray<nb::ndim<3>, nb::c_contig, nb::device::cpu>;

bool is_f16(const Any3& a) {
  return a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && a.dtype().bits == 16;
}

void check_dtypes(std::initializer_list<const Any3*> arrays, const char* what) {
  const Any3& first = **arrays.begin();
  if (!(first.dtype() == nb::dtype<float>()) && !is_f16(first))
    throw std::invalid_argument(std::string(what) + ": dtype must be float32 or float16");
  for (const Any3* a : arrays)
    if (!(a->dtype() == first.dtype())) throw std::invalid_argument(std::string(what) + ": dtypes differ");
}

// PositionAttention kernel source on the CPU (fiber emulator). q, k [B, D, N]; v, x, out [B, C, N].
void emu_pam(Any3 q, Any3 k, Any3 v, Any3 x, Any3 out, float gamma) {
  check_dtypes({&q, &k, &v, &x, &out}, "emu_pam");
  const int B = (int)v.shape(0), C = (int)v.shape(1), N = (int)v.shape(2), D = (int)q.shape(1);
  for (const Any3* a : {&q, &k})
    if ((int)a->shape(0) != B || (int)a->shape(1) != D || (int)a->shape(2) != N)
      throw std::invalid_argument("emu_pam: q and k must be [B, D, N]");
  for (const Any3* a : {&x, &out})
    if ((int)a->shape(0) != B || (int)a->shape(1) != C || (int)a->shape(2) != N)
      throw std::invalid_argument("emu_pam: v, x and out must be [B, C, N]");
  check_launch(polypseg_pam_launch(q.data(), k.data(), v.data(), x.data(), out.data(), B, C, D, N, gamma,
                                  is_f16(q) ? 1 : 0, nullptr),
               "emu_pam");
}

// ChannelAttention kernel source on the CPU (fiber emulator). x, out [B, C, N].
void emu_cam(Any3 x, Any3 out, float gamma) {
  check_dtypes({&x, &out}, "emu_cam");
  const int B = (int)x.shape(0), C = (int)x.shape(1), N = (int)x.shape(2);
  if (out.shape(0) != x.shape(0) || out.shape(1) != x.shape(1) || out.shape(2) != x.shape(2))
    throw std::invalid_argument("emu_cam: out must have x's shape");
  check_launch(polypseg_cam_launch(x.data(), out.data(), B, C, N, gamma, is_f16(x) ? 1 : 0, nullptr), "emu_cam");
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "polypseg C++ hot path (pre/post-processing of video frames)";
  m.def("preprocess", &preprocess, "src"_a, "dst"_a, "mean"_a, "std"_a, "threads"_a = 0,
        "BGR uint8 [H, W, 3] → normalised RGB planes written into dst [1, 3, h, w] (float32 or float16).");
  m.def("overlay", &overlay, "frame"_a, "logits"_a, "logit_threshold"_a, "fill"_a, "alpha256"_a, "outline"_a,
        "mask"_a = nb::none(), "threads"_a = 0,
        "Annotate frame in place from logits [h, w]; returns the foreground pixel count.");
  m.def("float_to_half", &polypseg::float_to_half, "x"_a);
  m.def("emu_mss", &emu_mss, "a"_a, "b"_a, "d"_a, "bn"_a = nb::none(),
        "CPU execution of the MultiScaleSubtraction CUDA kernel (tests); bn = [g3, h3, g5, h5] rows.");
  m.def("emu_pam", &emu_pam, "q"_a, "k"_a, "v"_a, "x"_a, "out"_a, "gamma"_a,
        "CPU execution of the PositionAttention CUDA kernel (tests).");
  m.def("emu_cam", &emu_cam, "x"_a, "out"_a, "gamma"_a, "CPU execution of the ChannelAttention CUDA kernel (tests).");
  m.def("emu_schedule", &emu_schedule, "order"_a = nb::none(), "seed"_a = nb::none(), "race_check"_a = nb::none(),
        "Set the schedule of emulated launches (order: alternate, forward, reverse, random; seed of the shuffle; "
        "race_check: shared-memory race/bounds checker); returns the previous (order, seed, race_check).");
  m.def("emu_block_sum", &emu_block_sum, "x"_a, "block"_a, "first_barrier"_a = true);
  m.def("emu_divergent_barrier", &emu_divergent_barrier);
  m.def("emu_last_writer", &emu_last_writer, "blocks"_a, "threads"_a);
  m.def("emu_shared_out_of_bounds", &emu_shared_out_of_bounds);
  m.def("emu_preprocess", &emu_preprocess, "src"_a, "dst"_a, "mean"_a, "std"_a,
        "CPU execution of the CUDA preprocess kernel (tests).");
  m.def("emu_overlay", &emu_overlay, "frame"_a, "logits"_a, "logit_threshold"_a, "fill"_a, "alpha256"_a, "outline"_a,
        "CPU execution of the CUDA overlay kernel (tests); returns the foreground pixel count.");
}

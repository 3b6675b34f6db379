#include "registry.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "autograd.h"
#include "error.h"

namespace ls {

// ---- Attrs ----
const AttrValue* Attrs::find(const std::string& k) const {
  for (auto& kv : items)
    if (kv.first == k) return &kv.second;
  return nullptr;
}
Attrs& Attrs::set(const std::string& k, AttrValue v) {
  for (auto& kv : items)
    if (kv.first == k) { kv.second = std::move(v); return *this; }
  items.emplace_back(k, std::move(v));
  return *this;
}
int64_t Attrs::i(const std::string& k, int64_t def) const {
  const AttrValue* v = find(k);
  if (!v) return def;
  if (auto p = std::get_if<int64_t>(v)) return *p;
  if (auto p = std::get_if<bool>(v)) return *p;
  throw TypeError(cat("argument '", k, "' must be an integer"));
}
int64_t Attrs::i(const std::string& k) const {
  LS_CHECK(has(k), TypeError, "missing integer argument '", k, "'");
  return i(k, 0);
}
double Attrs::f(const std::string& k, double def) const {
  const AttrValue* v = find(k);
  if (!v) return def;
  if (auto p = std::get_if<double>(v)) return *p;
  if (auto p = std::get_if<int64_t>(v)) return double(*p);
  if (auto p = std::get_if<bool>(v)) return *p;
  throw TypeError(cat("argument '", k, "' must be a number"));
}
bool Attrs::b(const std::string& k, bool def) const {
  const AttrValue* v = find(k);
  if (!v) return def;
  if (auto p = std::get_if<bool>(v)) return *p;
  if (auto p = std::get_if<int64_t>(v)) return *p != 0;
  throw TypeError(cat("argument '", k, "' must be a bool"));
}
std::vector<int64_t> Attrs::ints(const std::string& k, const std::vector<int64_t>& def) const {
  const AttrValue* v = find(k);
  if (!v) return def;
  if (auto p = std::get_if<std::vector<int64_t>>(v)) return *p;
  if (auto p = std::get_if<int64_t>(v)) return {*p};
  throw TypeError(cat("argument '", k, "' must be a list of integers"));
}
std::vector<int64_t> Attrs::ints(const std::string& k) const {
  LS_CHECK(has(k), TypeError, "missing argument '", k, "' (a list of integers)");
  return ints(k, {});
}
std::string Attrs::s(const std::string& k, const std::string& def) const {
  const AttrValue* v = find(k);
  if (!v) return def;
  if (auto p = std::get_if<std::string>(v)) return *p;
  throw TypeError(cat("argument '", k, "' must be a string"));
}

// Two handles on the same elements: same memory, layout and dtype.
static bool same_view(const Tensor& a, const Tensor& b) {
  return a.numel() > 0 && a.raw_data() == b.raw_data() && a.device() == b.device() &&
         a.dtype() == b.dtype() && a.shape() == b.shape() && a.strides() == b.strides();
}

// ---- SavedTensors ----
void SavedTensors::save(const Tensor& t) {
  saved_.push_back(t);
  versions_.push_back(t.defined() ? t.version() : 0);
}
const Tensor& SavedTensors::operator[](size_t i) const {
  const Tensor& t = saved_.at(i);
  LS_CHECK(!t.defined() || t.version() == versions_[i], RuntimeError,
           "a tensor the backward of '", op_, "' needs was modified by an in-place operation: ",
           role_, " ", i, " (", dtype_name(t.dtype()), ", shape ", shape_str(t.shape()), ", ",
           t.device().str(), ") is at version ", t.version(), "; expected version ", versions_[i],
           ". Something wrote into it between the forward and this backward (copy_, fill_, an "
           "in-place operator, an optimizer step, an in-place loss): compute out of place, or "
           "write into a clone()");
  return t;
}
Tensors SavedTensors::all() const {
  Tensors out;
  for (size_t i = 0; i < saved_.size(); ++i) out.push_back((*this)[i]);
  return out;
}

// ---- registry ----
bool known_backend(const std::string& name) {
  static const char* known[] = {"", "default", "cpu", "cuda", "triton"};
  return std::any_of(std::begin(known), std::end(known), [&](const char* k) { return name == k; });
}

namespace {
struct Impl {
  std::string backend;
  Kernel kernel;
  std::vector<DType> dtypes;
  bool serves(DType d) const {
    return dtypes.empty() || std::find(dtypes.begin(), dtypes.end(), d) != dtypes.end();
  }
};
struct OpEntry {
  bool declared = false;
  OpSchema schema;
  std::vector<Impl> impls;
};

std::unordered_map<std::string, OpEntry>& table() {
  static std::unordered_map<std::string, OpEntry> t;
  return t;
}

// An unknown LLMSCRATCH_BACKEND is ignored here (this runs before Python can raise); llmscratch's
// import refuses it with a message.
std::string initial_backend() {
  const char* env = std::getenv("LLMSCRATCH_BACKEND");
  const std::string name = env ? std::string(env) : std::string();
  return known_backend(name) && name != "default" ? name : std::string();
}
std::string& backend_ref() {
  static std::string b = initial_backend();
  return b;
}
std::mutex g_report_mutex;
std::map<std::string, std::string> g_report;
thread_local bool t_native = false;  // inside call_native on this thread

const Impl* pick(const std::string& op, OpEntry& e, Device dev, DType dt) {
  const std::string native = dev.is_cpu() ? "cpu" : "cuda";
  static const std::string none;
  const std::string& chosen = t_native ? none : backend_ref();
  const std::string order[3] = {chosen.empty() ? native : chosen, native, "any"};
  for (auto& b : order)
    for (auto& impl : e.impls)
      if (impl.backend == b && impl.serves(dt)) return &impl;
  // Each backend with the dtypes it serves: the CPU backend computes in float32 and float64
  // only, so a 16-bit model on the CPU lands here and the message has to say what would work.
  std::string have;
  for (auto& impl : e.impls) {
    std::string dtypes;
    for (DType d : impl.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + std::string(dtype_name(d));
    have += cat(have.empty() ? "" : "; ", impl.backend, dtypes.empty() ? " (any dtype)" : " (" + dtypes + ")");
  }
  throw NotImplementedError(cat("op '", op, "' has no implementation for device ", dev.str(),
                                ", dtype ", dtype_name(dt), ", backend ",
                                chosen.empty() ? native : chosen,
                                "; implemented for: ", have.empty() ? "none" : have));
}
// A backward returns a gradient of the input's shape on its device (or none) for each input;
// a wrong one caught here names its op instead of failing later in a node that did nothing wrong.
// (Gradients past the inputs, for trailing optional inputs left out of the call, are unused.)
void check_gradients(const std::string& op, const BackwardCtx& ctx, const Tensors& grads) {
  for (size_t i = 0; i < std::min(grads.size(), ctx.input_shapes.size()); ++i) {
    if (!grads[i].defined() || !ctx.needs_grad[i]) continue;
    LS_CHECK(grads[i].shape() == ctx.input_shapes[i] && grads[i].device() == ctx.device,
             RuntimeError, "the backward of '", op, "' returned a gradient of shape ",
             shape_str(grads[i].shape()), " on ", grads[i].device().str(), " for input ", i,
             " of shape ", shape_str(ctx.input_shapes[i]), " on ", ctx.device.str());
  }
}
}  // namespace

void declare_op(const std::string& name, OpSchema schema) {
  OpEntry& e = table()[name];
  e.declared = true;
  e.schema = std::move(schema);
}

void register_kernel(const std::string& op, const std::string& backend, Kernel kernel,
                     std::vector<DType> dtypes) {
  auto& impls = table()[op].impls;
  impls.erase(std::remove_if(impls.begin(), impls.end(),
                             [&](const Impl& i) { return i.backend == backend; }),
              impls.end());
  impls.push_back({backend, std::move(kernel), std::move(dtypes)});
}

bool has_op(const std::string& op) {
  auto it = table().find(op);
  return it != table().end() && it->second.declared;
}

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (auto& kv : table())
    if (kv.second.declared) names.push_back(kv.first);
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> op_backends(const std::string& op) {
  std::vector<std::string> out;
  auto it = table().find(op);
  if (it != table().end())
    for (auto& impl : it->second.impls) out.push_back(impl.backend);
  return out;
}

const std::string& current_backend() { return backend_ref(); }
void set_backend(const std::string& name) {
  LS_CHECK(known_backend(name), ValueError, "unknown backend '", name, "': expected cpu, cuda, triton or default");
  backend_ref() = name == "default" ? "" : name;
}

Tensors call_native(const std::string& op, const Tensors& inputs, const Attrs& attrs) {
  struct Restore {
    bool prev = t_native;
    ~Restore() { t_native = prev; }
  } restore;
  t_native = true;
  return call(op, inputs, attrs);
}

std::map<std::string, std::string> backend_report(bool reset) {
  std::lock_guard<std::mutex> lock(g_report_mutex);
  auto r = g_report;
  if (reset) g_report.clear();
  return r;
}

Tensors call(const std::string& op, const Tensors& inputs, const Attrs& attrs) {
  auto it = table().find(op);
  LS_CHECK(it != table().end() && it->second.declared, NotImplementedError, "unknown op '", op, "'");
  OpEntry& e = it->second;

  // All tensor inputs must live on one device; the first one decides device and dtype.
  const Tensor* first = nullptr;
  for (auto& t : inputs) {
    if (!t.defined()) continue;
    if (!first) { first = &t; continue; }
    LS_CHECK(t.device() == first->device(), ValueError, op, ": expected all tensors on one device, got ",
             first->device().str(), " and ", t.device().str());
  }
  // Factories (full, rand, ...) have no tensor input: device and dtype come from the attrs.
  Device device = first ? first->device() : Device::parse(attrs.s("device", "cpu"));
  DType dtype = first ? first->dtype() : DType(attrs.i("dtype", int64_t(DType::Float32)));
  if (device.is_cuda()) {
    const CudaHooks& cuda = require_cuda(op.c_str());
    LS_CHECK(device.index < cuda.device_count(), ValueError, op, ": device ", device.str(),
             " does not exist (", cuda.device_count(), " CUDA devices)");
  }
  const Impl* impl = pick(op, e, device, dtype);
  {
    std::lock_guard<std::mutex> lock(g_report_mutex);
    g_report[op] = impl->backend;
  }

  Tensors outputs;
  bool record = e.schema.backward && needs_recording(inputs);
  if (record) {
    NoGradGuard inner;  // an implementation that calls other ops is one node, not many
    outputs = impl->kernel(inputs, attrs);
  } else {
    outputs = impl->kernel(inputs, attrs);
  }
  for (size_t i : e.schema.writes_inputs)
    if (i < inputs.size() && inputs[i].defined()) inputs[i].bump_version();
  // A kernel may hand back an input unchanged (contiguous() of a contiguous tensor), or, from
  // Python, a new tensor over an input's memory (the in-place cross-entropy's gradient through
  // DLPack): give it a fresh TensorImpl over the input's storage and version counter, so that
  // recording never rewrites an input's own history and a write through either is seen by both.
  for (auto& o : outputs)
    for (auto& in : inputs)
      if (o.defined() && in.defined() && (o.same(in) || same_view(o, in))) o = in.detach();
  if (!record) return outputs;

  auto ctx = std::make_shared<BackwardCtx>();
  ctx->attrs = attrs;
  ctx->device = device;
  ctx->inputs.name(op, "input");
  ctx->outputs.name(op, "output");
  for (auto& t : inputs) {
    ctx->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
    ctx->input_dtypes.push_back(t.defined() ? t.dtype() : DType::Float32);
    ctx->needs_grad.push_back(t.defined() && t.requires_grad());
    ctx->inputs.save(e.schema.save_inputs && t.defined() ? t.detach() : Tensor());
  }
  if (e.schema.save_outputs)
    for (auto& t : outputs) ctx->outputs.save(t.detach());
  BackwardFn bw = e.schema.backward;
  record_node(op, inputs, outputs, [ctx, bw, op](const Tensors& grads) {
    Tensors input_grads = bw(*ctx, grads);
    check_gradients(op, *ctx, input_grads);
    return input_grads;
  });
  return outputs;
}

}  // namespace ls

// The op registry. Every op is declared once (name, backward formula, what it saves) and gets
// implementations per (device type, backend): "cpu" and "cuda" from C++, "triton" from Python
// callables, "any" for device-independent ops such as views. `call` picks an implementation,
// runs it and records an autograd node when gradients are needed.
//
// Backend choice: set_backend(name) / a BackendGuard / LLMSCRATCH_BACKEND. The fallback order for
// a tensor on device D with chosen backend B is: B, then D's native backend (cpu or cuda), then
// "any". A dtype an implementation does not list falls through to the next one. When nothing
// serves, NotImplementedError names the op, device, dtype and backend.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "tensor.h"

namespace ls {

using AttrValue = std::variant<bool, int64_t, double, std::vector<int64_t>, std::string>;

// Non-tensor arguments of an op, by name.
struct Attrs {
  std::vector<std::pair<std::string, AttrValue>> items;

  Attrs() = default;
  Attrs(std::initializer_list<std::pair<std::string, AttrValue>> l) : items(l) {}
  const AttrValue* find(const std::string& k) const;
  bool has(const std::string& k) const { return find(k) != nullptr; }
  int64_t i(const std::string& k, int64_t def) const;
  int64_t i(const std::string& k) const;  // required
  double f(const std::string& k, double def) const;
  bool b(const std::string& k, bool def) const;
  std::vector<int64_t> ints(const std::string& k) const;  // required
  std::vector<int64_t> ints(const std::string& k, const std::vector<int64_t>& def) const;
  std::string s(const std::string& k, const std::string& def) const;
  Attrs& set(const std::string& k, AttrValue v);
};

using Tensors = std::vector<Tensor>;
using Kernel = std::function<Tensors(const Tensors& inputs, const Attrs& attrs)>;

// Tensors an op saved for its backward, with the versions they had then. Each is checked as the
// backward reads it: one written in place since (copy_, fill_, an optimizer step, an in-place
// loss) raises instead of giving a wrong gradient, and a write into a saved tensor that this
// backward does not read refuses nothing (torch checks at SavedVariable::unpack, likewise).
class SavedTensors {
 public:
  void save(const Tensor& t);  // undefined: nothing saved in this place
  const Tensor& operator[](size_t i) const;  // checked
  bool has(size_t i) const { return i < saved_.size() && saved_[i].defined(); }  // not a read
  // For its shape, strides and dtype only, unchecked: a backward must not read its values.
  const Tensor& layout(size_t i) const { return saved_.at(i); }
  size_t size() const { return saved_.size(); }
  Tensors all() const;  // every one checked, for a backward that takes them all
  void name(std::string op, const char* role) { op_ = std::move(op), role_ = role; }

 private:
  Tensors saved_;
  std::vector<uint64_t> versions_;
  std::string op_;
  const char* role_ = "input";
};

// What a backward formula sees: the forward's inputs and outputs (detached; undefined unless the
// op saves them), their shapes and dtypes, the attrs, and which inputs need a gradient.
struct BackwardCtx {
  SavedTensors inputs, outputs;
  std::vector<Shape> input_shapes;
  std::vector<DType> input_dtypes;
  std::vector<bool> needs_grad;
  Attrs attrs;
  Device device;
};
// Returns one gradient per input (undefined where none flows).
using BackwardFn = std::function<Tensors(const BackwardCtx& ctx, const Tensors& grad_outputs)>;

struct OpSchema {
  BackwardFn backward;       // null: not differentiable
  bool save_inputs = true;   // keep inputs alive for the backward
  bool save_outputs = false; // keep outputs alive for the backward
  // Inputs the op writes in place: call() bumps their versions after any backend's kernel, so
  // a backward that saved one of them refuses the changed values.
  std::vector<size_t> writes_inputs = {};
};

void declare_op(const std::string& name, OpSchema schema);
void register_kernel(const std::string& op, const std::string& backend, Kernel kernel,
                     std::vector<DType> dtypes = {});  // empty dtypes: all
bool has_op(const std::string& op);
std::vector<std::string> op_names();
std::vector<std::string> op_backends(const std::string& op);

// Run an op: validates devices, picks the implementation, records autograd.
Tensors call(const std::string& op, const Tensors& inputs, const Attrs& attrs = {});
inline Tensor call1(const std::string& op, const Tensors& inputs, const Attrs& attrs = {}) {
  return call(op, inputs, attrs)[0];
}

// Backend selection ("" = default: the device's native backend).
const std::string& current_backend();
void set_backend(const std::string& name);
bool known_backend(const std::string& name);  // "", "default", "cpu", "cuda" or "triton"
struct BackendGuard {
  std::string prev;
  explicit BackendGuard(const std::string& b) : prev(current_backend()) { set_backend(b); }
  ~BackendGuard() { set_backend(prev); }
};
// call() on the device's native backend, for this thread only (the process's choice stays as it
// is for other threads): a backend's kernel hands a case it does not serve back this way.
Tensors call_native(const std::string& op, const Tensors& inputs, const Attrs& attrs = {});
// Which implementation served each op since the last reset: op -> backend.
std::map<std::string, std::string> backend_report(bool reset);

// Static registration: LS_REGISTER(name) { declare_op(...); register_kernel(...); }
struct Registrar { explicit Registrar(void (*fn)()) { fn(); } };
#define LS_REGISTER_CAT2(a, b) a##b
#define LS_REGISTER_CAT(a, b) LS_REGISTER_CAT2(a, b)
#define LS_REGISTER(tag)                                                     \
  static void LS_REGISTER_CAT(ls_register_, tag)();                          \
  static ::ls::Registrar LS_REGISTER_CAT(ls_registrar_, tag)(LS_REGISTER_CAT(ls_register_, tag)); \
  static void LS_REGISTER_CAT(ls_register_, tag)()

}  // namespace ls

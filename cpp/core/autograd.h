// The autograd tape. A differentiable call records a Node holding its backward and one Edge per
// input (to the producing node, or to the leaf tensor whose .grad accumulates). backward() counts
// dependencies over the reachable graph and runs each node once all its consumers have been run,
// i.e. in reverse topological order.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace ls {

struct Edge {
  std::shared_ptr<Node> node;        // producer of this input, or
  std::shared_ptr<TensorImpl> leaf;  // the leaf that accumulates the gradient
  int input_nr = 0;                  // which output of `node`
  bool valid() const { return node || leaf; }
};

struct OutputInfo {
  Shape shape;
  DType dtype;
  Device device;
};

struct Node {
  std::string name;
  std::vector<Edge> next;  // one per op input
  std::vector<OutputInfo> outputs;
  std::vector<std::vector<GradHook>> output_hooks;  // hooks on non-leaf outputs
  std::vector<std::vector<GradHook>> retain_hooks;  // retain_grad(): run after output_hooks
  std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)> apply;
  uint64_t sequence = 0;  // creation order; later nodes run first among ready ones
};

bool grad_enabled();
void set_grad_enabled(bool on);
struct NoGradGuard {
  bool prev;
  NoGradGuard() : prev(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev); }
};

// Whether a call on these inputs must be recorded.
bool needs_recording(const std::vector<Tensor>& inputs);
// Attach a node computing `backward` to `outputs` (floating outputs only get a grad_fn).
void record_node(const std::string& name, const std::vector<Tensor>& inputs,
                 const std::vector<Tensor>& outputs,
                 std::function<std::vector<Tensor>(const std::vector<Tensor>&)> backward);

// Seed `roots` with `grads` (undefined: ones for a scalar root) and run the tape. Unless
// retain_graph, each node's backward (and with it the tensors it saved) is released once it has
// run, as in torch: a graph's activations live until its backward, not for as long as its
// output does; a second backward through such a node raises.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph = false);
// autograd.grad: the same pass, returning d(roots)/d(inputs) (undefined for an input the roots do
// not depend on) instead of accumulating into any leaf's .grad.
std::vector<Tensor> run_grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                             const std::vector<Tensor>& inputs, bool retain_graph = false);

// Whether t shares its memory with a leaf that requires grad anywhere behind it in the graph (not
// only through view nodes: a custom Function may hand out its input's memory): an in-place write
// into t would overwrite that leaf (a parameter) under the tape's eyes.
bool is_view_of_leaf(const Tensor& t);

void register_hook(const Tensor& t, GradHook hook);
void retain_grad(const Tensor& t);

}  // namespace ls

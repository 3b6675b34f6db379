#include "autograd.h"

#include <algorithm>
#include <map>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "error.h"
#include "ops/ops.h"

namespace ls {

namespace {
thread_local bool g_grad_enabled = true;
uint64_t g_next_sequence = 0;

Edge edge_for(const Tensor& t) {
  Edge e;
  if (!t.defined() || !t.requires_grad()) return e;
  if (t.grad_fn()) {
    e.node = t.grad_fn();
    e.input_nr = t.autograd_meta().output_nr;
  } else {
    e.leaf = t.impl();
  }
  return e;
}

// Whether g can become a leaf's .grad as it is: nothing else holds it or its memory (g is the
// only reference to its TensorImpl, and that is the only one over its storage), it is plain
// contiguous memory, and it has no autograd history.
bool can_take(const Tensor& g) {
  return g.impl().use_count() == 1 && g.impl()->storage.use_count() == 1 && g.impl()->offset == 0 &&
         g.is_contiguous() && !g.requires_grad() && !g.grad_fn();
}

// A hook may replace the gradient (returning undefined keeps it), but not change its kind: the
// nodes behind it were built for the tensor's shape, dtype and device. The gradient it gets is
// in its tensor's dtype already.
Tensor run_hooks(const std::vector<GradHook>& hooks, Tensor g) {
  for (auto& hook : hooks) {
    Tensor r = hook(g);
    if (!r.defined()) continue;
    LS_CHECK(r.shape() == g.shape() && r.dtype() == g.dtype() && r.device() == g.device(),
             RuntimeError, "a gradient hook returned a ", dtype_name(r.dtype()), " tensor of shape ",
             shape_str(r.shape()), " on ", r.device().str(), " for a gradient that is ",
             dtype_name(g.dtype()), " of shape ", shape_str(g.shape()), " on ", g.device().str());
    g = std::move(r);
  }
  return g;
}

// A leaf's whole gradient of a pass, in its dtype, through its hooks.
Tensor leaf_gradient(const Tensor& t, Tensor g) {
  if (g.dtype() != t.dtype()) g = ops::to_dtype(g, t.dtype());  // hooks see the leaf's dtype
  return run_hooks(t.autograd_meta().hooks, std::move(g));
}

// grad += g for a leaf, out of place so that no two .grad tensors ever alias. The first gradient
// is taken as it is when no one else can see it (as torch's AccumulateGrad steals it), else
// copied: a copy of the logits' gradient costs as much as the cross-entropy backward itself.
void accumulate_into_leaf(const std::shared_ptr<TensorImpl>& leaf, Tensor g) {
  Tensor t(leaf);
  g = leaf_gradient(t, std::move(g));
  if (!t.requires_grad()) return;  // turned off since the forward (a frozen parameter), as torch
  Tensor old = t.grad();
  if (old.defined()) t.autograd_meta().grad = ops::add(old, g).impl();
  else t.autograd_meta().grad = (can_take(g) ? std::move(g) : ops::contiguous_copy(g)).impl();
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

bool needs_recording(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record_node(const std::string& name, const std::vector<Tensor>& inputs,
                 const std::vector<Tensor>& outputs,
                 std::function<std::vector<Tensor>(const std::vector<Tensor>&)> backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->sequence = g_next_sequence++;
  for (auto& t : inputs) node->next.push_back(edge_for(t));
  node->output_hooks.resize(outputs.size());
  node->retain_hooks.resize(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    if (!o.defined()) {  // an absent optional output never receives a gradient
      node->outputs.push_back({{}, DType::Bool, Device{}});
      continue;
    }
    node->outputs.push_back({o.shape(), o.dtype(), o.device()});
    if (!is_floating(o.dtype())) continue;
    auto& meta = o.autograd_meta();
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = int(i);
  }
  node->apply = std::move(backward);
}

bool is_view_of_leaf(const Tensor& t) {
  // The whole graph behind t, not only its view nodes: a custom Function (or checkpoint) may hand
  // out its input's memory under a node of its own name. A step's graph is a few thousand nodes.
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  if (t.grad_fn()) stack.push_back(t.grad_fn().get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    for (auto& e : n->next) {
      if (e.leaf && e.leaf->storage == t.storage()) return true;
      if (e.node) stack.push_back(e.node.get());
    }
  }
  return false;
}

void register_hook(const Tensor& t, GradHook hook) {
  LS_CHECK(t.requires_grad(), RuntimeError,
           "register_hook: cannot register a hook on a tensor that does not require grad");
  if (t.is_leaf()) {
    t.autograd_meta().hooks.push_back(std::move(hook));
  } else {
    t.grad_fn()->output_hooks[t.autograd_meta().output_nr].push_back(std::move(hook));
  }
}

void retain_grad(const Tensor& t) {
  LS_CHECK(t.requires_grad(), RuntimeError, "retain_grad: the tensor does not require grad");
  if (t.is_leaf()) return;  // leaves keep their grad anyway
  std::weak_ptr<TensorImpl> weak = t.impl();  // weak: the node must not keep its output alive
  auto& hooks = t.grad_fn()->retain_hooks[t.autograd_meta().output_nr];
  hooks.push_back([weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      Tensor self(impl);
      Tensor old = self.grad();
      self.autograd_meta().grad = (old.defined() ? ops::add(old, g) : ops::contiguous_copy(g)).impl();
    }
    return Tensor();
  });
}

namespace {
// Both passes: with inputs (autograd.grad), their gradients go to captured (by position) and no
// .grad changes.
void run_backward_into(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph,
                       const std::vector<Tensor>* inputs, std::vector<Tensor>* captured);
}  // namespace

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph) {
  run_backward_into(roots, grads, retain_graph, nullptr, nullptr);
}

std::vector<Tensor> run_grad(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                             const std::vector<Tensor>& inputs, bool retain_graph) {
  for (const Tensor& t : inputs)
    LS_CHECK(t.requires_grad(), RuntimeError, "grad: one of the differentiated tensors does not require grad");
  std::vector<Tensor> captured(inputs.size());
  run_backward_into(roots, grads, retain_graph, &inputs, &captured);
  return captured;
}

namespace {
void run_backward_into(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                       bool retain_graph, const std::vector<Tensor>* inputs, std::vector<Tensor>* captured) {
  NoGradGuard no_grad;  // backward formulas are not themselves recorded
  // With inputs (autograd.grad): their gradients go to captured, at every position an input holds,
  // and no leaf's .grad changes; a leaf input by its impl, any other by the node output it is.
  std::unordered_map<TensorImpl*, std::vector<size_t>> leaf_inputs;
  std::map<std::pair<Node*, int>, std::vector<size_t>> node_inputs;
  std::unordered_set<Node*> input_nodes;
  if (inputs)
    for (size_t i = 0; i < inputs->size(); ++i) {
      const Tensor& t = (*inputs)[i];
      if (t.is_leaf()) {
        leaf_inputs[t.impl().get()].push_back(i);
      } else {
        node_inputs[{t.grad_fn().get(), t.autograd_meta().output_nr}].push_back(i);
        input_nodes.insert(t.grad_fn().get());
      }
    }
  auto capture = [&](const std::vector<size_t>& at, const Tensor& g) {
    for (size_t i : at) (*captured)[i] = g;
  };
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;
  // A leaf's gradients from all its edges are summed first, then its hooks run and .grad takes
  // the sum once (torch's AccumulateGrad): a hook sees the leaf's whole gradient of this backward.
  struct LeafSum {
    int pending = 0;
    Tensor sum;
  };
  std::unordered_map<TensorImpl*, LeafSum> leaves;

  // Count, for every reachable node, how many edges point at it.
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (auto& r : roots)
    if (r.grad_fn() && seen.insert(r.grad_fn().get()).second) stack.push_back(r.grad_fn().get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& e : n->next) {
      if (e.leaf) leaves[e.leaf.get()].pending++;
      if (!e.node) continue;
      dependencies[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }

  // autograd.grad runs only what lies between the roots and the inputs, as torch: a node runs its
  // backward when an input is behind it ("applies"), and is visited when it applies or holds an
  // input. The counts above are redone over those edges only; other leaves get nothing.
  std::unordered_set<Node*> applies, visited;
  if (inputs) {
    std::vector<Node*> order(seen.begin(), seen.end());  // edges point at earlier nodes
    std::sort(order.begin(), order.end(), [](Node* a, Node* b) { return a->sequence < b->sequence; });
    for (Node* n : order) {
      for (auto& e : n->next)
        if ((e.leaf && leaf_inputs.count(e.leaf.get())) || (e.node && visited.count(e.node.get()))) {
          applies.insert(n);
          break;
        }
      if (applies.count(n) || input_nodes.count(n)) visited.insert(n);
    }
    dependencies.clear();
    leaves.clear();
    for (Node* n : applies)
      for (auto& e : n->next) {
        if (e.leaf && leaf_inputs.count(e.leaf.get())) leaves[e.leaf.get()].pending++;
        else if (e.node && visited.count(e.node.get())) dependencies[e.node.get()]++;
      }
  }
  auto skipped = [&](Node* n) { return inputs && !visited.count(n); };

  auto cmp = [](Node* a, Node* b) { return a->sequence < b->sequence; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(cmp)> ready(cmp);
  auto add_grad = [&](const std::shared_ptr<Node>& node, int nr, const Tensor& g) {
    auto& buf = buffers[node.get()];
    if (buf.empty()) buf.resize(node->outputs.size());
    buf[nr] = buf[nr].defined() ? ops::add(buf[nr], g) : g;
    keep[node.get()] = node;
  };
  auto add_leaf_grad = [&](const std::shared_ptr<TensorImpl>& leaf, Tensor g) {
    auto it = leaves.find(leaf.get());
    LeafSum& s = it->second;
    if (g.defined()) s.sum = s.sum.defined() ? ops::add(s.sum, g) : std::move(g);
    if (--s.pending > 0) return;
    Tensor total = std::move(s.sum);
    leaves.erase(it);
    if (!total.defined()) return;
    if (inputs) capture(leaf_inputs.at(leaf.get()), leaf_gradient(Tensor(leaf), std::move(total)));
    else accumulate_into_leaf(leaf, std::move(total));
  };

  // Every root and its gradient is checked before any gradient moves: a bad one leaves no .grad
  // half-written.
  std::vector<Tensor> seeds;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    LS_CHECK(r.requires_grad(), RuntimeError,
             "backward: tensor does not require grad and has no grad_fn");
    Tensor g = i < grads.size() ? grads[i] : Tensor();
    if (!g.defined()) {
      LS_CHECK(r.numel() == 1, RuntimeError, "backward: grad can be implicitly created only for "
               "scalar outputs, got shape ", shape_str(r.shape()));
      g = ops::full(r.shape(), 1.0, r.dtype(), r.device());
    }
    LS_CHECK(g.device() == r.device(), ValueError, "backward: the gradient is on ", g.device().str(),
             ", its tensor on ", r.device().str());
    g = ops::to_dtype(g, r.dtype());  // as torch: a gradient of another dtype takes the root's
    LS_CHECK(g.shape() == r.shape(), ValueError, "backward: gradient has shape ",
             shape_str(g.shape()), " but the tensor has shape ", shape_str(r.shape()));
    seeds.push_back(std::move(g));
  }
  auto kept_leaf = [&](TensorImpl* leaf) { return !inputs || leaf_inputs.count(leaf); };
  for (auto& r : roots)  // a leaf root is one more gradient into its sum
    if (r.is_leaf() && kept_leaf(r.impl().get())) leaves[r.impl().get()].pending++;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    if (r.is_leaf()) {
      if (kept_leaf(r.impl().get())) add_leaf_grad(r.impl(), std::move(seeds[i]));
    } else {
      add_grad(r.grad_fn(), r.autograd_meta().output_nr, seeds[i]);
    }
  }
  for (auto& kv : keep)
    if (dependencies[kv.first] == 0) ready.push(kv.first);

  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    if (skipped(n)) {  // a root with no input behind it
      buffers.erase(n);
      continue;
    }
    std::vector<Tensor> g = std::move(buffers[n]);
    g.resize(n->outputs.size());
    for (size_t i = 0; i < g.size(); ++i) {
      const OutputInfo& info = n->outputs[i];
      // Hooks and retain_grad see only a gradient that came (as torch's: an output nothing used
      // keeps .grad None); the node's backward then gets zeros for the others.
      if (g[i].defined()) {
        if (!n->output_hooks[i].empty() && g[i].dtype() != info.dtype)
          g[i] = ops::to_dtype(g[i], info.dtype);  // a hook sees its tensor's dtype
        g[i] = run_hooks(n->output_hooks[i], std::move(g[i]));
        for (auto& hook : n->retain_hooks[i]) hook(g[i]);
        if (inputs) {
          auto in = node_inputs.find({n, int(i)});
          if (in != node_inputs.end()) capture(in->second, g[i]);
        }
      }
      if (!g[i].defined() && is_floating(info.dtype))
        g[i] = ops::full(info.shape, 0.0, info.dtype, info.device);
    }
    if (inputs && !applies.count(n)) {  // holds an input, with none behind it: it need not run
      buffers.erase(n);
      continue;
    }
    std::vector<Tensor> in_grads = n->apply(g);
    if (!retain_graph) {
      // Frees what the backward captured (the saved activations); a later call says why.
      n->apply = [name = n->name](const std::vector<Tensor>&) -> std::vector<Tensor> {
        throw RuntimeError(cat("backward: the graph through ", name, " was already run backward and "
                               "its saved tensors freed; pass retain_graph=True to the first backward "
                               "to run it again"));
      };
    }
    for (size_t i = 0; i < n->next.size(); ++i) {
      const Edge& e = n->next[i];
      if (!e.valid()) continue;
      // moved out of in_grads: a gradient nothing else holds can become the leaf's .grad
      Tensor gi = i < in_grads.size() ? std::move(in_grads[i]) : Tensor();
      if (e.leaf) {
        if (kept_leaf(e.leaf.get())) add_leaf_grad(e.leaf, std::move(gi));
        continue;
      }
      if (skipped(e.node.get())) continue;
      if (gi.defined()) add_grad(e.node, e.input_nr, gi);
      keep[e.node.get()] = e.node;
      if (--dependencies[e.node.get()] == 0) ready.push(e.node.get());
    }
    buffers.erase(n);
  }
}
}  // namespace

}  // namespace ls

// Layers that own their parameters: Linear, Embedding, LayerNorm, RMSNorm. Each creates its
// parameters with torch's default initialisation (drawn from the Philox generator) and its
// forward calls the registered ops, so it runs on whichever backend serves them. The Python
// nn modules wrap these and expose the same tensors as their Parameters.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace ls::layers {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// y = x W^T + b; W (out_features, in_features), W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
struct Linear {
  Tensor weight, bias;  // bias undefined when disabled
  Linear(int64_t in_features, int64_t out_features, bool with_bias, DType dtype, Device device);
  Tensor forward(const Tensor& x) const;
  NamedTensors named_parameters() const;
};

// out[..., :] = weight[ids[...], :]; weight (V, C) ~ N(0, 1).
struct Embedding {
  Tensor weight;
  Embedding(int64_t num_embeddings, int64_t embedding_dim, DType dtype, Device device);
  Tensor forward(const Tensor& ids) const;
  NamedTensors named_parameters() const;
};

// Over the last dim of size C; weight = 1, bias = 0 (either may be disabled).
struct LayerNorm {
  Tensor weight, bias;
  double eps;
  LayerNorm(int64_t C, double eps, bool affine, bool with_bias, DType dtype, Device device);
  Tensor forward(const Tensor& x) const;
  NamedTensors named_parameters() const;
};

struct RMSNorm {
  Tensor weight;
  double eps;
  RMSNorm(int64_t C, double eps, bool affine, DType dtype, Device device);
  Tensor forward(const Tensor& x) const;
  NamedTensors named_parameters() const;
};

}  // namespace ls::layers

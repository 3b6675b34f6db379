#include "core/parallel.h"
#include "test_util.h"

namespace ls::test {

class Embedding : public Guarded {};

Tensor ids_tensor(const std::vector<int64_t>& ids, const Shape& shape, DType dt) {
  std::vector<double> v(ids.begin(), ids.end());
  return make(v, shape, dt);
}

// out[n, c] = w[ids[n], c]
std::vector<double> naive_lookup(const std::vector<double>& w, const std::vector<int64_t>& ids, int64_t C) {
  std::vector<double> out;
  for (int64_t id : ids)
    for (int64_t c = 0; c < C; ++c) out.push_back(w[id * C + c]);
  return out;
}

TEST_F(Embedding, ForwardMatchesLookup) {
  for (DType wdt : {DType::Float32, DType::Float64})
    for (DType idt : {DType::Int32, DType::Int64}) {
      const int64_t V = 11, C = 7;
      Tensor w = random({V, C}, wdt);
      std::vector<int64_t> ids = {3, 0, 10, 3, 7, 7, 1, 9, 2, 3, 5, 10, 0, 6, 4};
      Tensor t = ids_tensor(ids, {3, 5}, idt);
      Tensor out = ops::embedding(w, t);
      EXPECT_EQ(out.shape(), (Shape{3, 5, C}));
      expect_close(values(out), naive_lookup(values(w), ids, C), 0);
    }
}

TEST_F(Embedding, ScalarIdsAndNonContiguousWeight) {
  Tensor wt = random({5, 9});  // weight = wt^T: (9, 5), not contiguous
  Tensor w = ops::transpose(wt, 0, 1);
  Tensor out = ops::embedding(w, ids_tensor({4}, {}, DType::Int64));
  EXPECT_EQ(out.shape(), (Shape{5}));
  expect_close(values(out), naive_lookup(values(w), {4}, 5), 0);
}

TEST_F(Embedding, EmptyIds) {
  Tensor w = random({4, 3});
  Tensor ids = Tensor::empty({0, 2}, DType::Int64);
  w.set_requires_grad(true);
  Tensor out = ops::embedding(w, ids);
  EXPECT_EQ(out.shape(), (Shape{0, 2, 3}));
  run_backward({ops::sum(out)}, {});
  expect_close(values(w.grad()), std::vector<double>(12, 0.0), 0);
}

TEST_F(Embedding, GradientSumsRepeatedIds) {
  std::vector<int64_t> ids = {2, 0, 2, 4, 2, 1, 0};
  Tensor t = ids_tensor(ids, {7}, DType::Int64);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::embedding(in[0], t); }, {random({6, 5})});
  // Row 3 and 5 are never looked up: their gradient is exactly zero.
  Tensor w = random({6, 5});
  w.set_requires_grad(true);
  run_backward({ops::sum(ops::embedding(w, t))}, {});
  auto g = values(w.grad());
  for (int64_t c = 0; c < 5; ++c) {
    EXPECT_EQ(g[3 * 5 + c], 0.0);
    EXPECT_EQ(g[2 * 5 + c], 3.0);  // id 2 appears three times
  }
}

TEST_F(Embedding, BackwardIsDeterministicAcrossThreadCounts) {
  const int64_t V = 37, C = 29, N = 4000;
  Tensor g = random({N, C}, DType::Float32);
  Tensor ids = ops::randint(0, V, {N}, DType::Int64, Device{});
  int prev = num_threads();
  std::vector<std::vector<double>> results;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    results.push_back(values(call1("embedding_backward", {g, ids}, {{"num_weights", V}})));
  }
  set_num_threads(prev);
  for (size_t i = 1; i < results.size(); ++i)
    for (size_t j = 0; j < results[0].size(); ++j) ASSERT_EQ(results[0][j], results[i][j]);
}

TEST_F(Embedding, SecondOrderGradient) {
  Tensor t = ids_tensor({1, 1, 0}, {3}, DType::Int64);
  Tensor ids = t;
  // embedding_backward is linear in its gradient input; check that gradient numerically.
  gradcheck([&](const std::vector<Tensor>& in) {
    return call1("embedding_backward", {in[0], ids}, {{"num_weights", int64_t(3)}});
  }, {random({3, 4})});
}

TEST_F(Embedding, Errors) {
  Tensor w = random({5, 3});
  try {
    ops::embedding(w, ids_tensor({1, 5}, {2}, DType::Int64));
    FAIL() << "no error";
  } catch (const IndexError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("embedding"), std::string::npos) << msg;
    EXPECT_NE(msg.find("id 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5 embeddings"), std::string::npos) << msg;
  }
  EXPECT_THROW(ops::embedding(w, ids_tensor({-1}, {1}, DType::Int32)), IndexError);
  EXPECT_THROW(call1("embedding", {w, ids_tensor({7}, {1}, DType::Int32)}), IndexError);
  EXPECT_THROW(ops::embedding(w, make({1.0}, {1}, DType::Float32)), TypeError);
  EXPECT_THROW(ops::embedding(random({5}), ids_tensor({1}, {1}, DType::Int64)), ValueError);
  EXPECT_THROW(ops::embedding(ids_tensor({1, 2}, {1, 2}, DType::Int64), ids_tensor({0}, {1}, DType::Int64)),
               TypeError);
}

}  // namespace ls::test

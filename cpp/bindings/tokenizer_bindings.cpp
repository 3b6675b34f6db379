// Bindings of the byte-level BPE (cpp/tokenizer) and the token shards (cpp/data). The Python
// classes llmscratch.tokenizer.Tokenizer and llmscratch.data build on these. Long work runs
// without the GIL; token ids come back as numpy uint32 arrays (no Python lists).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/error.h"
#include "data/shard.h"
#include "tokenizer/bpe.h"

namespace py = pybind11;
using namespace ls;

namespace {

// UTF-8 view of a Python str (cached inside the str object; valid while it lives).
std::string_view utf8_view(const py::str& s) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
  if (!p) throw py::error_already_set();
  return {p, size_t(n)};
}

py::array_t<uint32_t> to_array(std::vector<uint32_t>&& v) {
  auto* heap = new std::vector<uint32_t>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<uint32_t>*>(p); });
  return py::array_t<uint32_t>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(uint32_t))},
                               heap->data(), owner);
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<tok::BPE>(m, "BPE")
      .def(py::init([](const std::vector<py::bytes>& tokens,
                       const std::vector<std::pair<std::string, uint32_t>>& specials,
                       const std::string& pattern) {
             std::vector<std::string> t;
             t.reserve(tokens.size());
             for (auto& b : tokens) t.emplace_back(b);
             tok::Pattern p = tok::parse_pattern(pattern);
             py::gil_scoped_release nogil;
             return new tok::BPE(std::move(t), specials, p);
           }),
           py::arg("tokens"), py::arg("specials"), py::arg("pattern"))
      .def_property_readonly("pattern", [](const tok::BPE& b) { return tok::pattern_name(b.pattern()); })
      .def_property_readonly("n_ranks", &tok::BPE::n_ranks)
      .def_property_readonly("vocab_size", &tok::BPE::vocab_size)
      .def("tokens", [](const tok::BPE& b) {
        py::list out;
        for (auto& t : b.tokens()) out.append(py::bytes(t));
        return out;
      })
      .def("encode", [](const tok::BPE& b, const py::str& text, const std::vector<std::string>& allowed,
                        bool parallel) {
        std::string_view v = utf8_view(text);
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = allowed.empty() ? b.encode_ordinary(v, parallel) : b.encode(v, allowed);
        }
        return to_array(std::move(ids));
      }, py::arg("text"), py::arg("allowed") = std::vector<std::string>{}, py::arg("parallel") = true)
      .def("encode_bytes", [](const tok::BPE& b, const py::bytes& data) {
        std::string_view v = data;
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = b.encode_ordinary(v);
        }
        return to_array(std::move(ids));
      })
      .def("encode_batch", [](const tok::BPE& b, const std::vector<std::string>& texts,
                              const std::vector<std::string>& allowed) {
        std::vector<std::vector<uint32_t>> r;
        {
          py::gil_scoped_release nogil;
          r = b.encode_batch(texts, allowed);
        }
        return r;
      }, py::arg("texts"), py::arg("allowed") = std::vector<std::string>{})
      .def("decode_bytes", [](const tok::BPE& b, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids) {
        std::vector<uint32_t> v(ids.size());
        const int64_t* p = ids.data();
        for (py::ssize_t i = 0; i < ids.size(); ++i) {
          LS_CHECK(p[i] >= 0 && p[i] <= int64_t(UINT32_MAX), ValueError, "decode: id ", p[i],
                   " at position ", int64_t(i), " is not a token");
          v[i] = uint32_t(p[i]);
        }
        std::string s;
        {
          py::gil_scoped_release nogil;
          s = b.decode_bytes(v.data(), v.size());
        }
        return py::bytes(s);
      })
      .def("token_bytes", [](const tok::BPE& b, int64_t id) {
        uint32_t i = uint32_t(id);
        LS_CHECK(id >= 0 && id <= int64_t(UINT32_MAX), ValueError, "token_bytes: bad id ", id);
        return py::bytes(b.decode_bytes(&i, 1));
      });

  m.def("train_bpe", [](const std::vector<std::string>& texts, const std::vector<std::string>& paths,
                        size_t vocab_size, const std::string& pattern) {
    tok::TrainOptions opt;
    opt.vocab_size = vocab_size;
    opt.pattern = tok::parse_pattern(pattern);
    std::vector<std::string> vocab;
    {
      py::gil_scoped_release nogil;
      vocab = tok::train_bpe(texts, paths, opt);
    }
    py::list out;
    for (auto& t : vocab) out.append(py::bytes(t));
    return out;
  }, py::arg("texts"), py::arg("paths"), py::arg("vocab_size"), py::arg("pattern"),
     "Byte-level BPE training: the token byte strings by rank (bytes 0..255 first)");
  m.def("pattern_regex", [](const std::string& name) { return tok::pattern_regex(tok::parse_pattern(name)); });
  m.def("pretokenize", [](const py::str& text, const std::string& pattern) {
    std::string_view v = utf8_view(text);
    tok::Pattern p = tok::parse_pattern(pattern);
    std::vector<py::bytes> out;
    const uint8_t* s = reinterpret_cast<const uint8_t*>(v.data());
    tok::for_each_piece(p, s, v.size(), 0, v.size(),
                        [&](size_t b, size_t e) { out.emplace_back(v.data() + b, e - b); });
    return out;
  }, "The pre-token pieces of text (as UTF-8 bytes) under a pattern ('gpt2', 'cl100k', 'cl100k_original')");

  m.def("write_shard", [](const std::string& path,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens,
                          int token_bytes) {
    std::vector<uint32_t> v(tokens.size());
    const int64_t* p = tokens.data();
    for (py::ssize_t i = 0; i < tokens.size(); ++i) {
      LS_CHECK(p[i] >= 0 && p[i] <= int64_t(UINT32_MAX), ValueError, "write_shard: token ", p[i],
               " at position ", int64_t(i), " is out of range");
      v[i] = uint32_t(p[i]);
    }
    py::gil_scoped_release nogil;
    data::ShardInfo info = data::write_shard(path, v.data(), int64_t(v.size()), token_bytes);
    return std::make_tuple(info.num_tokens, info.token_bytes, info.data_offset);
  }, py::arg("path"), py::arg("tokens"), py::arg("token_bytes") = 0);
  m.def("read_shard_info", [](const std::string& path) {
    data::ShardInfo info = data::read_shard_info(path);
    return std::make_tuple(info.num_tokens, info.token_bytes, info.data_offset);
  }, "(num_tokens, token_bytes, data_offset) of a validated llm.c shard");
}

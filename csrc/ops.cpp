// Schema of the bbench operator library. Kernels: cpu/*.cpp (CPU), cuda/*.cu (CUDA); fake
// (meta) implementations are registered from Python in bbench/ops/fake.py.
//
// Built by setup.py as the Python extension module `bbench._C` (importing it runs the static
// registrations below), or by CMakeLists.txt as a plain shared library for
// torch.ops.load_library (BBENCH_PYTHON_MODULE undefined).
#include <torch/library.h>

#ifdef BBENCH_PYTHON_MODULE
#include <Python.h>
#endif

TORCH_LIBRARY(bbench, m) {
  // In place on every tensor of `grads` (alias set a, written); returns nothing.
  m.def(
      "grad_scale_(Tensor(a!)[] grads, Tensor group, Tensor coeff, Tensor? noise_std=None, "
      "int? seed=None) -> ()");
  // Pure: returns (correct bool [N, 2^M], counts int64 [2^M]).
  m.def("subset_correct(Tensor contrib, Tensor absent, Tensor bias, Tensor labels) -> (Tensor, Tensor)");
  // Pure: out[..., c, h, w] = table[c, pixels[..., c, h, w]], float32, contiguous.
  m.def("pixel_lookup(Tensor pixels, Tensor table) -> Tensor");
}

#ifdef BBENCH_PYTHON_MODULE
extern "C" {
// An empty module: the operators live in torch.ops.bbench once this library is loaded.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "bbench compiled kernels; the operators are torch.ops.bbench.*",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
#endif

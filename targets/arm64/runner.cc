// banana-run: execute a banana artifact's Relax VM "main" on the CPU of the machine it runs on.
//
// Built with aarch64-linux-gnu-g++ against the arm64 TVM runtime from PyPI's wheels and run
// under qemu-aarch64, so the host can execute exactly the code a phone would, in milliseconds
// instead of the seconds a Python-based runtime needs to start.
//
// usage: banana-run LIB PARAMS INPUTS OUTPUTS [--repeat N]
//   LIB      shared library exported by tvm.compile(...).export_library (relax Executable)
//   PARAMS   weights in TVM param-dict format, keys p0, p1, ... (appended after the inputs)
//   INPUTS   model inputs in TVM param-dict format, keys i0, i1, ...
//   OUTPUTS  written in TVM param-dict format, keys o0, o1, ... (tuples flattened in order)
//   --repeat N  after the first call, time N more calls of main
// banana-run --self-test: check the runtime's global functions are there, print "ok".
// stdout: one line of JSON with load and run times (milliseconds, emulated when under qemu).
// Errors: one line on stderr starting with "banana-run: error:", exit code 1 (2 for bad usage).

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kDLCPUType = 1;      // kDLCPU
constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::kPooled

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

[[noreturn]] void Fail(const std::string& msg, int code = 1) {
  // One line, so callers can surface the last line of stderr as the reason.
  std::string line = msg;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "banana-run: error: %s\n", line.c_str());
  std::exit(code);
}

void RequireFile(const char* what, const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    Fail(std::string(what) + " file not found: " + path);
  }
}

ffi::Function Global(const char* name) {
  std::optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f.has_value()) Fail(std::string("global function missing in libtvm_runtime: ") + name);
  return *f;
}

// Reads keys prefix0, prefix1, ... in order until one is missing; any other key is an error
// because it means the file was written for a different convention.
std::vector<ffi::Tensor> LoadOrdered(const std::string& path, const std::string& prefix,
                                     const char* what) {
  ffi::Map<ffi::String, ffi::Tensor> dict =
      Global("runtime.LoadParamsFromFile")(ffi::String(path)).cast<ffi::Map<ffi::String, ffi::Tensor>>();
  std::vector<ffi::Tensor> out;
  for (size_t i = 0;; ++i) {
    ffi::String key(prefix + std::to_string(i));
    auto it = dict.find(key);
    if (it == dict.end()) break;
    out.push_back((*it).second);
  }
  if (out.size() != dict.size()) {
    Fail(std::string(what) + " file " + path + " has keys other than " + prefix + "0.." + prefix +
         std::to_string(out.size() == 0 ? 0 : out.size() - 1));
  }
  return out;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  if (auto arr = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, out);
    return;
  }
  Fail("main returned a value that is neither a tensor nor a tuple: " + value.GetTypeKey());
}

int Run(int argc, char** argv) {
  std::vector<std::string> pos;
  long repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--repeat") {
      if (i + 1 >= argc) Fail("--repeat needs a count", 2);
      char* end = nullptr;
      repeat = std::strtol(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || repeat < 0) Fail(std::string("bad --repeat: ") + argv[i], 2);
    } else if (a == "--self-test") {
      // Proves the arm64 TVM runtime loaded and registered what the runner relies on.
      Global("runtime.LoadParamsFromFile");
      Global("runtime.SaveParamsToFile");
      Global("ffi.ModuleLoadFromFile");
      std::fprintf(stdout, "ok\n");
      return 0;
    } else if (a == "-h" || a == "--help") {
      std::fprintf(stdout, "usage: banana-run LIB PARAMS INPUTS OUTPUTS [--repeat N]\n");
      return 0;
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 4) Fail("usage: banana-run LIB PARAMS INPUTS OUTPUTS [--repeat N]", 2);
  const std::string &lib = pos[0], &params_path = pos[1], &inputs_path = pos[2], &outputs_path = pos[3];
  RequireFile("library", lib);
  RequireFile("params", params_path);
  RequireFile("inputs", inputs_path);

  auto t0 = Clock::now();
  ffi::Module rt_mod = ffi::Module::LoadFromFile(lib);
  ffi::Optional<ffi::Function> load_exec = rt_mod->GetFunction("vm_load_executable", true);
  if (!load_exec.has_value()) Fail("library has no vm_load_executable (not a relax executable): " + lib);
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  ffi::Optional<ffi::Function> init = vm->GetFunction("vm_initialization", true);
  if (!init.has_value()) Fail("VM has no vm_initialization");
  (*init)(kDLCPUType, 0, kPooledAllocator);
  ffi::Optional<ffi::Function> main_opt = vm->GetFunction("main", true);
  if (!main_opt.has_value()) Fail("executable has no function main: " + lib);
  ffi::Function main_fn = main_opt.value();
  double load_ms = MsSince(t0);

  auto t1 = Clock::now();
  std::vector<ffi::Tensor> inputs = LoadOrdered(inputs_path, "i", "inputs");
  std::vector<ffi::Tensor> params = LoadOrdered(params_path, "p", "params");
  double read_ms = MsSince(t1);

  std::vector<ffi::AnyView> args;
  args.reserve(inputs.size() + params.size());
  for (const ffi::Tensor& t : inputs) args.emplace_back(t);
  for (const ffi::Tensor& t : params) args.emplace_back(t);

  ffi::Any result;
  auto t2 = Clock::now();
  main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  double first_ms = MsSince(t2);

  std::vector<double> run_ms;
  for (long r = 0; r < repeat; ++r) {
    ffi::Any again;
    auto tr = Clock::now();
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &again);
    run_ms.push_back(MsSince(tr));
  }

  std::vector<ffi::Tensor> outs;
  Flatten(result, &outs);
  ffi::Map<ffi::String, ffi::Tensor> out_dict;
  for (size_t i = 0; i < outs.size(); ++i) out_dict.Set(ffi::String("o" + std::to_string(i)), outs[i]);
  Global("runtime.SaveParamsToFile")(out_dict, ffi::String(outputs_path));

  std::string json = "{\"load_ms\": " + std::to_string(load_ms) + ", \"read_ms\": " + std::to_string(read_ms) +
                     ", \"first_run_ms\": " + std::to_string(first_ms) + ", \"num_outputs\": " +
                     std::to_string(outs.size()) + ", \"run_ms\": [";
  for (size_t i = 0; i < run_ms.size(); ++i) json += (i ? ", " : "") + std::to_string(run_ms[i]);
  json += "]}";
  std::fprintf(stdout, "%s\n", json.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& e) {
    Fail(e.kind() + ": " + e.message());
  } catch (const std::exception& e) {
    Fail(e.what());
  }
}

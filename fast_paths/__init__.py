"""
Fast paths of the model's hot spots: fused Triton kernels for the GPU, and plain-PyTorch fast forms for the CPU. The
code they replace stays the readable reference; tests/test_kernels.py and tests/test_kernels_pkm.py check every
kernel against it (values and gradients), under Triton's CPU interpreter and, where there is a GPU, on it;
tests/test_rope.py and tests/test_repo.py check the CPU forms.

    rotary.py   RoPE's rotation of q and k by real-valued positions (RoPE, RePo, every scaling), one launch
    position_net.py   RePo's position network f_φ, one launch forward, one and two matrix products backward
    pkm.py      the memories' top-k read of value rows (forward, backward) and FwPKM's value write (no graph)
    cpu.py      the rotation, f_φ and RMSNorm for the CPU, where the study trains: fewer operators, backward by hand

The switch is GPTConfig.kernels (train.py --kernels, eval_niah.py and bench.py --kernels):
    auto   the Triton fast path when the tensors are on CUDA and triton is installed, and cpu.py's forms for fp32
           tensors on the CPU (the default)
    on     always; without a GPU this is Triton's CPU interpreter, which TRITON_INTERPRET=1 in the environment
           turns on (slow: for tests)
    off    the plain PyTorch code

The folder is not called kernels/: Hugging Face's `kernels` package (which transformers 5 installs and imports) has
that name, and a script run from this directory would import this folder in its place.
"""
import importlib.util
import os

import torch

MODES = ("auto", "on", "off")
TRITON = importlib.util.find_spec("triton") is not None  # torch's CUDA builds bring it
# a student copy (python assignment.py make) leaves the fast paths out, so that the reference code, which students
# write, is what runs
FILES = ("rotary.py", "position_net.py", "pkm.py", "cpu.py")  # the fast paths
FAST_PATHS = all(os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)) for name in FILES)


def check_available(mode, device_type):
    """Ends the program with one line when the switch `mode` cannot run on a device of this type."""
    if mode != "on":
        return
    if not FAST_PATHS:
        raise SystemExit("error: --kernels on needs the fast paths in fast_paths/, which this copy leaves out (a "
                         "student copy of assignment.py); use --kernels auto or off")
    if not TRITON:
        raise SystemExit("error: --kernels on needs triton (pip install triton); use --kernels auto or off")
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("error: --kernels on without a GPU runs Triton's CPU interpreter, which needs "
                         "TRITON_INTERPRET=1 in the environment (slow; for tests); use --kernels auto or off")


def require_gpu_or_interpreter():
    """Called where a kernel module is imported: without a GPU the kernels can only run under Triton's CPU
    interpreter, which is chosen when a @triton.jit function is defined (triton's own, tl.sum, at its import), so it
    has to be set in the environment before Python starts."""
    import triton
    if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
        raise RuntimeError("kernels='on' without a GPU runs Triton's CPU interpreter: set TRITON_INTERPRET=1 in the "
                           "environment (slow; tests/conftest.py does), or use kernels='auto' or 'off'")


def use_kernels(mode, x):
    """Whether the switch `mode` sends the tensor x down the Triton fast path."""
    return FAST_PATHS and (mode == "on" or (mode == "auto" and x.is_cuda and TRITON))


def use_cpu_forms(mode, x):
    """Whether the switch `mode` sends the tensor x down a CPU fast form (cpu.py: fp32 on the CPU, eager; under
    torch.compile the compiler fuses the reference code itself)."""
    return (FAST_PATHS and mode == "auto" and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())

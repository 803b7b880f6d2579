"""The fused attention-with-tangent Triton kernel (alphaflow.models.jvp_attention), run on CPU by Triton's interpreter.

The reference is ``torch.func.jvp`` of math attention softmax(q·kᵀ/√d)·v in float64. ``TRITON_INTERPRET=1`` is set
with monkeypatch after ``triton`` was imported (by importorskip): the kernel is built lazily, per mode, and
re-decorates Triton's library reductions for the interpreter, so that order works (the module's docstring says
why it needs to); a subprocess checks the other order. Small tiles (block_m/block_n 16 or 32) and N = 70 give
several query and key blocks and a partial one of each, and keep the interpreter fast (~13 s of CPU for the
file's fast tests, a third of it the subprocess). The slow tests compile the kernel for an H100 without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from alphaflow.models.jvp_attention import attention_with_tangent, interpreter_problem, triton_available  # noqa: E402

G, N = 2, 70  # 70 = 32 + 32 + 6: two full key blocks of 32 and a partial one


@pytest.fixture(autouse=True)
def interpreter(monkeypatch, request):
    if interpreter_problem() and not request.node.name.startswith(("test_compiles_for_h100", "test_interpreter_")):
        pytest.skip(interpreter_problem())  # the tests that compile for a GPU still run
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def math_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def reference(q, k, v, dq, dk, dv):
    """(o, ȯ) of math attention in float64 by torch.func.jvp."""
    return torch.func.jvp(math_attention, tuple(t.double() for t in (q, k, v)), tuple(t.double() for t in (dq, dk, dv)))


def inputs(d: int, dtype=torch.float32, tangent_dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, dq, dk, dv = (torch.randn(G, N, d, generator=g) for _ in range(6))
    q = 2 * q  # sharper softmax: the running max moves between key blocks
    return (*(t.to(dtype) for t in (q, k, v)), *(t.to(tangent_dtype) for t in (dq, dk, dv)))


def rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("d, block_m, block_n", [(32, 32, 16), (64, 32, 32), (72, None, None)])
def test_float32_matches_math_jvp(d, block_m, block_n):
    """d = 72 takes the module's own tiles (BLOCK_D = 128, 64 × 16): two query blocks, five key blocks."""
    args = inputs(d)
    o, do = attention_with_tangent(*args, block_m=block_m, block_n=block_n)
    o_ref, do_ref = reference(*args)
    assert o.dtype == do.dtype == torch.float32 and o.shape == do.shape == (G, N, d)
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(do, do_ref) < 1e-5


def test_strided_inputs():
    """Views as the DiT makes them (heads split out of a wider tensor) give the contiguous result."""
    wide = [torch.randn(G, N, 2 * 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    views = [t[..., ::2] for t in wide]
    assert not views[0].is_contiguous()
    o, do = attention_with_tangent(*views, block_m=32, block_n=32)
    o_ref, do_ref = reference(*views)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(do, do_ref) < 1e-5


def test_bf16_primal_fp32_tangents():
    """The tangent is computed in fp32 from the bf16 primal, so it is as exact as fp32 allows; o is rounded to bf16."""
    args = inputs(64, dtype=torch.bfloat16)
    o, do = attention_with_tangent(*args, block_m=32, block_n=32)
    o_ref, do_ref = reference(*args)  # from the same bf16-rounded primal
    assert o.dtype == torch.bfloat16 and do.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-2
    assert rel_err(do, do_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_primal_and_tangents(dtype):
    """All in 16 bits: p is rounded to the 16-bit dtype before its products, as in flash attention."""
    args = inputs(32, dtype=dtype, tangent_dtype=dtype)
    o, do = attention_with_tangent(*args, block_m=32, block_n=32)
    o_ref, do_ref = reference(*args)
    assert o.dtype == do.dtype == dtype
    assert rel_err(o, o_ref) < 2e-2 and rel_err(do, do_ref) < 2e-2


def test_gradient_of_o_matches_math_attention():
    """The gradient of a loss on o equals math attention's; ȯ has no grad and the tangents get none."""
    q, k, v, dq, dk, dv = inputs(32)
    w = torch.randn(G, N, 32, generator=torch.Generator().manual_seed(5))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, dq)]
    o, do = attention_with_tangent(*leaves, dk, dv, block_m=32, block_n=32)
    assert o.requires_grad and not do.requires_grad
    (o * w).sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    (math_attention(*ref_leaves) * w).sum().backward()
    for got, want in zip(leaves[:3], ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)
    assert leaves[3].grad is None


def test_only_some_inputs_need_grad():
    q, k, v, dq, dk, dv = inputs(32)
    v = v.clone().requires_grad_()
    o, _ = attention_with_tangent(q, k, v, dq, dk, dv, block_m=32, block_n=32)
    (grad,) = torch.autograd.grad(o.sum(), v)
    v_ref = v.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(math_attention(q, k, v_ref).sum(), v_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_bad_inputs_refused():
    args = list(inputs(32))

    def refused(index, value, match):
        bad = list(args)
        bad[index] = value
        with pytest.raises(ValueError, match=match):
            attention_with_tangent(*bad)

    refused(1, args[1][0], r"k must be \[G, N, d\] \(3 dimensions\)")
    refused(2, args[2][:, :-1], r"v has shape \(2, 69, 32\), expected q's shape \(2, 70, 32\)")
    refused(4, args[4].long(), "dk has dtype torch.int64, expected float16, bfloat16 or float32")
    refused(0, args[0].double(), "q has dtype torch.float64, expected float16")
    refused(1, args[1].bfloat16(), "k has dtype torch.bfloat16, expected q's dtype torch.float32")
    refused(5, args[5].half(), "dv has dtype torch.float16, expected dq's dtype torch.float32")
    refused(3, args[3].to("meta"), "dq is on meta, expected q's device cpu")
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        attention_with_tangent(*args, block_n=24)
    wide = [torch.zeros(1, 4, 160) for _ in range(6)]
    with pytest.raises(ValueError, match="q has head dim 160, expected at most 128"):
        attention_with_tangent(*wide)


def test_cpu_without_interpreter_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="CPU tensors only under Triton's interpreter"):
        attention_with_tangent(*inputs(32))


@pytest.mark.parametrize("triton_version, numpy_version, refused", [
    ("3.6.0", "2.4.6", True), ("3.5.1", "2.5.2", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False),
    ("3.9.0+git1234", "2.5.2", False)])
def test_interpreter_problem_names_the_versions_that_cannot_run_the_kernel(monkeypatch, triton_version,
                                                                           numpy_version, refused):
    import numpy
    import triton

    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    interpreter_problem.cache_clear()
    try:
        problem = interpreter_problem()
        if not refused:
            assert problem is None
            return
        assert problem == (f"Triton {triton_version}'s interpreter cannot run with NumPy {numpy_version} (it converts "
                           "one-element arrays to ints, which NumPy 2.4 refuses): use Triton >= 3.7 or NumPy < 2.4 "
                           "for the kernel on CPU; the compiled kernel on a GPU is not affected")
        with pytest.raises(RuntimeError, match=f"Triton {triton_version}'s interpreter cannot run"):
            attention_with_tangent(*inputs(32))  # refused before the interpreter's own TypeError
    finally:
        interpreter_problem.cache_clear()


def test_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    triton_available.cache_clear()
    try:
        assert not triton_available()
        with pytest.raises(RuntimeError, match="needs triton"):
            attention_with_tangent(*inputs(32))
    finally:
        triton_available.cache_clear()


@pytest.mark.slow
def test_lazy_import_and_interpreter_set_before_import():
    """Importing the module does not import triton; the interpreter also works when TRITON_INTERPRET is set
    before triton's import (Triton's library functions are then interpreted ones already)."""
    code = """if True:
        import os, sys
        import torch
        from alphaflow.models.jvp_attention import attention_with_tangent
        assert "triton" not in sys.modules, "triton imported at the module's import"
        os.environ["TRITON_INTERPRET"] = "1"
        x = [torch.randn(1, 20, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
        o, do = attention_with_tangent(*x, block_m=16, block_n=16)
        ref = torch.func.jvp(lambda q, k, v: torch.softmax(q @ k.mT / 4, -1) @ v, tuple(x[:3]), tuple(x[3:]))
        torch.testing.assert_close((o, do), ref)
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


AOT = """if True:
    import sys, torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from alphaflow.models.jvp_attention import _build, _config
    dtype, tangent_dtype, d = getattr(torch, sys.argv[1]), getattr(torch, sys.argv[2]), int(sys.argv[3])
    config = _config(dtype, tangent_dtype, d, interpret=False)
    options = {key: config.pop(key) for key in ("num_warps", "num_stages")}
    ptr = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
    signature = {**dict.fromkeys(("Q", "K", "V", "O"), ptr[dtype]),
                 **dict.fromkeys(("DQ", "DK", "DV", "DO"), ptr[tangent_dtype]),
                 **{f"s_{t}{a}": "i32" for t in ("q", "k", "v", "dq", "dk", "dv", "o", "do") for a in "bhn"},
                 "H": "i32", "N": "i32", "D": "i32", "num_m_blocks": "i32", "qk_scale_log2": "fp32", "scale": "fp32",
                 **dict.fromkeys(config, "constexpr")}
    source = ASTSource(_build(False), signature, config)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    print(compiled.metadata.shared)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tangent_dtype, d", [("bfloat16", "float32", 64), ("bfloat16", "float32", 72),
                                                     ("float32", "float32", 72), ("bfloat16", "bfloat16", 72)])
def test_compiles_for_h100(dtype, tangent_dtype, d, tmp_path):
    """The module's tiles compile for sm_90 without a GPU (Triton ships ptxas) and fit an H100's 227 KiB of shared
    memory. In a subprocess: Triton 3.9 aborts the process (an LLVM assertion) on some tiles with fp32 operands.
    A fresh cache, so that it compiles."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", AOT, dtype, tangent_dtype, str(d)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) <= 227 * 1024


# ----------------------------------------------------------------------------- in the DiT (model.attention)

def test_dit_tangent_mode_with_the_kernel_equals_the_math_form():
    """model.attention=triton: the same prediction (the primal is SDPA either way) and the same du/dt as the math form,
    on a row subset and on every row; the kernel runs through the custom op alphaflow::attention_tangent."""
    from alphaflow.models import build_model

    torch.manual_seed(0)
    nets = {impl: build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10, attention=impl)
            for impl in ("math", "triton")}
    nets["triton"].load_state_dict(nets["math"].state_dict())
    with torch.no_grad():
        for p in nets["math"].parameters():  # off the zero init (both share these values)
            p.add_(0.05 * torch.randn_like(p))
        nets["triton"].load_state_dict(nets["math"].state_dict())
    B = 4
    z, y = torch.randn(B, 1, 8, 8), torch.randint(0, 10, (B,))
    t = torch.rand(B) * 0.8 + 0.1
    r = t * torch.rand(B)
    for rows in (None, torch.tensor([1, 3])):
        P = B if rows is None else rows.shape[0]
        dz, dr, dt = torch.randn(P, 1, 8, 8), torch.zeros(P), torch.ones(P)
        u_m, du_m = nets["math"](z, r, t, y, tangent=(rows, dz, dr, dt))
        u_k, du_k = nets["triton"](z, r, t, y, tangent=(rows, dz, dr, dt))
        assert torch.equal(u_k, u_m)
        assert du_m.abs().max() > 1e-3 and rel_err(du_k, du_m.double()) < 1e-5


@pytest.mark.slow
def test_the_census_sees_no_nxn_tensor_with_the_kernel():
    """On fake tensors the kernel is one op (its fake implementation): the tangent path writes no [.., N, N] tensor."""
    from alphaflow.perf.census import run_census

    out = {impl: run_census("DiT-N/2", batch=4, shape=(1, 8, 8), classes=10, variants=("fm", "mf_p100"),
                            model_options={"attention": impl}) for impl in ("math", "triton")}
    assert out["math"]["mf_p100"]["nxn_target_tensors"] > 0 and out["triton"]["mf_p100"]["nxn_target_tensors"] == 0
    assert out["triton"]["mf_p100"]["memory_bytes"] < out["math"]["mf_p100"]["memory_bytes"]
    assert out["triton"]["fm"]["ms"] == out["math"]["fm"]["ms"]  # flow matching has no tangent

"""No silent fallbacks: fastlam.ops.available_backends() says which backends can run and why
not; a Triton backend whose module fails to import raises that error when asked for by name;
on CUDA, backend 'auto' says once why a fused op runs on torch. CUDA is simulated (no GPU)."""
import sys
import textwrap
import warnings

import pytest
import torch
from subprocess_guard import run_guarded

import fastlam.ops as ops
from fastlam.ops import available_backends, dispatch


class FakeCuda:
    """Stands in for a CUDA tensor where only the dispatch decision is under test."""

    is_cuda = True


@pytest.fixture
def fresh(monkeypatch):
    """Empty import-error and warn-once caches, restored afterwards."""
    for name in ("_import_errors", "_kernels_ok", "_warned"):
        monkeypatch.setattr(dispatch, name, type(getattr(dispatch, name))())
    return monkeypatch


def test_report_names_every_backend_with_a_status():
    status = available_backends()
    for key in ("attention.math", "attention.torch", "attention.triton", "attention.flex", "ops.torch", "ops.triton"):
        assert isinstance(status.get(key), str) and status[key], key
    assert status["attention.math"] == status["attention.torch"] == status["ops.torch"] == "available"
    assert status["attention.flash_attn"] in ("available", "flash-attn is not installed") or "CUDA" in status["attention.flash_attn"]
    if not torch.cuda.is_available():
        # conftest sets TRITON_INTERPRET=1 on CPU machines: the kernels run, under the interpreter.
        assert status["ops.triton"] == "available"


def test_broken_kernel_module_is_reported_raised_by_name_and_said_once_for_auto(fresh):
    fresh.setitem(sys.modules, "fastlam.kernels.vq", None)  # importing it now raises ImportError
    status = available_backends()["ops.triton"]
    assert status.startswith("vq: ModuleNotFoundError") and "fastlam.kernels.vq" in status
    z, codebook = torch.randn(6, 4), torch.randn(8, 4)
    with pytest.raises(RuntimeError, match=r"backend='triton' requested but ModuleNotFoundError: .*fastlam.kernels.vq"):
        ops.vector_quantize(z, codebook, backend="triton")
    ops.vector_quantize(z, codebook, backend="auto")  # CPU tensors: torch, as always, nothing to say
    with pytest.warns(RuntimeWarning, match=r"backend 'auto' runs vq on torch, not Triton, for CUDA tensors "
                                            r"\(ModuleNotFoundError: .*fastlam.kernels.vq"):
        assert dispatch.use_triton("auto", FakeCuda(), kernel="vq") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert dispatch.use_triton("auto", FakeCuda(), kernel="vq") is False
    assert dispatch.use_triton("auto", FakeCuda(), kernel="gaussian") is True  # the other kernels are unaffected


def test_auto_on_cuda_says_once_why_an_unsupported_request_runs_on_torch(fresh):
    reason = "float64 inputs are not supported by the kernels (they accumulate in fp32); use backend='torch'"
    with pytest.warns(RuntimeWarning, match=r"runs prediction_loss on torch.*float64 inputs"):
        assert dispatch.use_triton("auto", FakeCuda(), unsupported=reason, kernel="prediction_loss") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.use_triton("auto", FakeCuda(), unsupported=reason, kernel="prediction_loss") is False


def test_missing_triton_is_reported_and_raised(fresh):
    fresh.setattr(dispatch, "_checked", True)
    fresh.setattr(dispatch, "_triton_error", "triton does not import (No module named 'triton')")
    assert available_backends()["ops.triton"].startswith("prediction_loss: triton does not import")
    with pytest.raises(RuntimeError, match=r"backend='triton' requested but triton does not import"):
        ops.prediction_loss(torch.rand(2, 3, 4), torch.rand(2, 3, 4), backend="triton")
    with pytest.warns(RuntimeWarning, match="triton does not import"):
        assert dispatch.use_triton("auto", FakeCuda(), kernel="adaln") is False


def test_attention_module_import_error_is_kept_and_raised_when_asked_for():
    """The real import path: fastlam.ops.triton_attention fails to import in a fresh process."""
    code = textwrap.dedent("""
        import sys, warnings

        class Broken:  # a bug inside the module: its import raises
            def find_spec(self, name, path=None, target=None):
                if name == "fastlam.ops.triton_attention":
                    raise RuntimeError("simulated bug")

        sys.meta_path.insert(0, Broken())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import torch
            import fastlam.ops as ops
        assert any("accelerated attention backends unavailable" in str(x.message) for x in w), w
        status = ops.available_backends()
        assert status["attention.triton"].startswith("import failed (RuntimeError: simulated bug"), status
        assert status["attention.torch"] == "available"
        q = torch.rand(1, 1, 4, 8)
        for call in (lambda: ops.st_attention(q, q, q, frame_len=2, backend="triton"),
                     lambda: ops.use_backend("triton").__enter__()):
            try:
                call()
            except RuntimeError as e:
                assert "'triton' is unavailable: RuntimeError: simulated bug" in str(e), e
            else:
                raise AssertionError("no error")
        print("ok")
    """)
    proc = run_guarded([sys.executable, "-c", code])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_broken_attention_kernel_module_is_reported_and_raised_by_name():
    """A bug in fastlam.kernels.attention (triton imports): the triton attention backend says
    why it cannot run, in the report and when asked for by name; the other backends still run."""
    code = textwrap.dedent("""
        import sys

        class Broken:  # a bug inside the kernel module: its import raises
            def find_spec(self, name, path=None, target=None):
                if name == "fastlam.kernels.attention":
                    raise RuntimeError("simulated kernel bug")

        sys.meta_path.insert(0, Broken())
        import torch
        import fastlam.ops as ops
        status = ops.available_backends()
        assert status["attention.triton"] == "RuntimeError: simulated kernel bug", status
        assert status["attention.torch"] == "available" and status["attention.flex"] == "available", status
        q = torch.rand(1, 1, 4, 8)
        try:
            ops.st_attention(q, q, q, frame_len=2, backend="triton")
        except ValueError as e:
            assert "'triton' cannot run this attention: RuntimeError: simulated kernel bug" in str(e), e
        else:
            raise AssertionError("no error")
        ops.st_attention(q, q, q, frame_len=2, backend="torch")
        print("ok")
    """)
    proc = run_guarded([sys.executable, "-c", code])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_dispatch_lists_and_hands_out_every_registered_attention_backend():
    names = dispatch.attention_backend_names()
    assert names[:2] == ["math", "torch"] and set(dispatch.ACCELERATED_ATTENTION) <= set(names)
    assert set(names) == {k.split(".", 1)[1] for k in available_backends() if k.startswith("attention.")}
    for name in names:
        backend = dispatch.attention_backend(name)
        assert callable(backend.run) and callable(backend.supports)
    with pytest.raises(KeyError, match="no attention backend 'nope'"):
        dispatch.attention_backend("nope")

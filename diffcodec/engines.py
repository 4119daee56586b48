"""How the network's forward pass runs: float32 eager (the reference) or a faster engine.

An engine changes how ε_θ(x_t, t) is computed, never what the prior is: the weights, the config and
the digest are the same, and every output is handed on in float32, as ``Prior.network`` promises.
Engines other than FLOAT32 change the network's round-off (bf16 keeps 8 significant bits in its
matrix products); bits/dim measurements may use a faster engine whose effect on them is measured
(``python -m bench engines``, issue #12). The coders, whose encoder and decoder must agree bit for
bit, run only the engines of ``defaults.CODING_ENGINES`` (:func:`coding_engine`), record the one they ran
in the file, and the decoder runs the same one.

- FLOAT32: eager float32, as the network module is called.
- BF16: eager under ``torch.autocast(device, bfloat16)`` (convolutions and matrix products in bf16,
  normalizations in float32).
- CHANNELS_LAST / BF16_CHANNELS_LAST: a copy of the network with NHWC weights, inputs made NHWC.
- COMPILE / COMPILE_BF16: ``torch.compile`` (inductor), one graph per input shape
  (``dynamic=False``); the first call at a new batch size compiles (seconds to minutes).
- ONNXRUNTIME: the network exported to ONNX and run by ONNX Runtime's CPU provider in float32
  (``pip install 'diffcodec[fast]'``). The commands keep a loaded prior's exported graph on disk
  (:func:`onnx_graph`), so only the first command after an install or a new prior pays the export.
- MIXED: bf16 autocast for the inputs whose timestep is above T/100, float32 (ONNX Runtime where
  installed, else eager) for the rest and for calls too small for bf16 to pay (:class:`MixedNet`);
  AUTO's choice on CPU. bf16's round-off costs bits only near t = 0 (defaults.MIXED_FLOAT32_FRACTION).

    prior = load_prior()
    fast = with_engine(prior, Engine.BF16)     # a view: same weights, config and digest
    evaluate_nll(fast, images, ...)            # prior itself is unchanged
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import time
import warnings
import weakref
from pathlib import Path

import torch
from torch import nn

from .defaults import AUTO_CODING_ENGINE, AUTO_ENGINE, CODING_ENGINES, MIXED_FLOAT32_FRACTION, MIXED_MIN_BF16_BATCH, Engine
from .prior import Prior


class EngineNet(nn.Module):
    """``net`` run through ``engine``: same call, (x [N, C, H, W], t [N]) → float32 [N, C or 2C, H, W].

    The wrapped network is a submodule (``inner``), so parameters and device are the original's
    (a channels-last copy for the channels-last engines, which leaves the caller's network alone).
    Autocast is entered inside every call, so the engine also holds on worker threads (autocast state
    is per thread).
    """

    def __init__(self, net: nn.Module, engine: Engine):
        super().__init__()
        self.engine = Engine(engine)
        if self.engine in (Engine.AUTO, Engine.ONNXRUNTIME, Engine.MIXED):
            raise ValueError(f"EngineNet runs torch engines, not {self.engine.value} (engines.with_engine)")
        self.inner = copy.deepcopy(net).to(memory_format=torch.channels_last) if self.engine.channels_last else net
        run = self._eager
        self._run = torch.compile(run, dynamic=False) if self.engine.compiled else run

    def _eager(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.engine.bf16):
            return self.inner(x, t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run(x, t).float().contiguous()


class OnnxRuntimeNet(nn.Module):
    """``net`` exported to ONNX (:func:`export_onnx`; kept on disk when ``digest`` is the digest of
    the prior whose network it is, :func:`onnx_graph`) and run by ONNX Runtime's CPU provider in float32
    with ``threads`` intra-op threads (1 by default: nll's workers call it side by side; the coders pass
    the thread count their file records). ``inner`` keeps the torch network, so parameters and device
    are the original's.
    """

    def __init__(self, net: nn.Module, image_shape: tuple[int, ...], threads: int = 1, any_size: bool = False,
                 digest: str | None = None):
        super().__init__()
        if not onnxruntime_available():
            raise ValueError(_NO_ONNXRUNTIME)
        import onnxruntime as ort

        self.inner = net
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self._session = ort.InferenceSession(onnx_graph(net, image_shape, any_size, digest), opts,
                                             providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feeds = {"x": x.detach().float().contiguous().numpy(), "t": t.detach().float().contiguous().numpy()}
        return torch.from_numpy(self._session.run(None, feeds)[0])


ONNX_OPSET = 17
ONNX_CACHE_ENV = "DIFFCODEC_ONNX_CACHE"
ONNX_CACHE_KEEP = 8  # graphs kept in the cache folder (the least recently used go first)
_GRAPH_TAG = b"diffcodec-onnx-graph-1"


def export_onnx(net: nn.Module, image_shape: tuple[int, ...], any_size: bool = False) -> bytes:
    """``net`` as an ONNX graph (TorchScript exporter, opset 17, inputs x and t, output out; the batch
    axis dynamic, and the spatial axes for an any-size network). The same network, torch version and
    code give the same bytes in every process (checked: tests/test_engines.py)."""
    space = {2: "h", 3: "w"} if any_size else {}  # fixed for the other priors: their graphs stay as measured
    buf, was_training = io.BytesIO(), net.training
    net.eval()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros((1, *image_shape)), torch.ones(1)), buf, dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["x", "t"], output_names=["out"],
                              dynamic_axes={"x": {0: "n", **space}, "t": {0: "n"}, "out": {0: "n", **space}})
    finally:
        net.train(was_training)
    return buf.getvalue()


def onnx_cache_dir() -> Path | None:
    """Where exported graphs are kept: ``$DIFFCODEC_ONNX_CACHE``, or ``~/.cache/diffcodec/onnx``; None
    (no cache) when the variable is ``off``."""
    env = os.environ.get(ONNX_CACHE_ENV)
    if env is not None and env.strip().lower() == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "diffcodec" / "onnx"


def _code_digest(net: nn.Module) -> bytes:
    """BLAKE2b of the source files that define the network's modules (outside torch) and of this file:
    what, beside the weights and torch's version, decides the exported graph."""
    files = {__file__}
    for module in net.modules():
        name = type(module).__module__
        if not name.startswith("torch."):
            files.add(getattr(sys.modules.get(name), "__file__", None) or name)
    h = hashlib.blake2b(digest_size=32)
    for path in sorted(files):
        h.update(path.encode() + b"\0")
        try:
            h.update(Path(path).read_bytes())
        except OSError:
            h.update(b"?")
    return h.digest()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def onnx_graph(net: nn.Module, image_shape: tuple[int, ...], any_size: bool = False, digest: str | None = None) -> bytes:
    """:func:`export_onnx`, kept in :func:`onnx_cache_dir` when ``digest`` is given (the digest of the
    prior whose network ``net`` is, checked by the caller: :func:`with_engine`). The file name is a
    hash of everything that decides the graph (digest, shape, torch and onnx versions, opset, the
    network's source code), the file holds a BLAKE2b of the graph before it, and a file that does not
    match is exported anew; a cache that cannot be read or written is skipped. Loading a graph runs no
    code: ONNX Runtime reads operators and weights."""
    folder = onnx_cache_dir() if digest else None
    if folder is None:
        return export_onnx(net, image_shape, any_size)
    key = hashlib.blake2b(b"\0".join([_GRAPH_TAG, digest.encode(), repr((tuple(image_shape), bool(any_size))).encode(),
                                      torch.__version__.encode(), _package_version("onnx").encode(),
                                      str(ONNX_OPSET).encode(), _code_digest(net)]), digest_size=20).hexdigest()
    path = folder / f"{key}.onnx"
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if len(data) > 32 and hashlib.blake2b(data[32:], digest_size=32).digest() == data[:32]:
        try:
            os.utime(path)  # recently used
        except OSError:
            pass
        return data[32:]
    graph = export_onnx(net, image_shape, any_size)
    try:
        from .files import atomic_write

        atomic_write(path, hashlib.blake2b(graph, digest_size=32).digest() + graph)
        kept = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        stale = [p for p in folder.glob("*.tmp") if time.time() - p.stat().st_mtime > 3600]  # left by a crash
        for old in kept[ONNX_CACHE_KEEP:] + stale:
            old.unlink(missing_ok=True)
    except (OSError, ValueError):  # a read-only or full disk, or another process pruning: run without the cache
        pass
    return graph


class MixedNet(nn.Module):
    """bf16 autocast where it is cheap in bits, float32 where it is not: one call of ``net`` split by timestep.

    Inputs whose timestep t exceeds ``float32_upto`` run under bf16 autocast (:class:`EngineNet`) when
    there are at least ``min_bf16_batch`` of them; the others (and a call with fewer) run in float32,
    through ONNX Runtime when it is installed and the network is on the CPU, else eagerly. Outputs are
    float32 in the input order. ``inner`` is ``net`` (parameters and device are the original's).
    """

    def __init__(self, net: nn.Module, image_shape: tuple[int, ...], float32_upto: float, threads: int = 1,
                 any_size: bool = False, min_bf16_batch: int = MIXED_MIN_BF16_BATCH, digest: str | None = None):
        super().__init__()
        self.inner = net
        self.fast = EngineNet(net, Engine.BF16)
        on_cpu = next(net.parameters(), torch.empty(0)).device.type == "cpu"
        self.exact = (OnnxRuntimeNet(net, image_shape, threads, any_size, digest) if on_cpu and onnxruntime_available()
                      else net)
        self.float32_upto, self.min_bf16_batch = float(float32_upto), int(min_bf16_batch)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fast = t > self.float32_upto
        n = int(fast.sum())
        if n < self.min_bf16_batch:
            return self.exact(x, t).float()
        if n == len(t):
            return self.fast(x, t)
        hi = self.fast(x[fast], t[fast])
        out = hi.new_empty((len(t), *hi.shape[1:]))
        out[fast] = hi
        out[~fast] = self.exact(x[~fast], t[~fast]).float().to(hi.device)
        return out


def mixed_float32_upto(num_timesteps: int) -> int:
    """The last timestep (1..T) that the mixed engine runs in float32 for a prior of T steps."""
    return max(1, int(num_timesteps * MIXED_FLOAT32_FRACTION))


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


_FAST_PACKAGES = "the onnxruntime and onnx packages: pip install 'diffcodec[fast]'"
_NO_ONNXRUNTIME = f"engine onnxruntime needs {_FAST_PACKAGES}"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return frozenset()
    return frozenset(line.split(":", 1)[-1].split())


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or amx_bf16): without it bf16 autocast is
    emulated and not measured to pay."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _auto(table: dict, device) -> Engine:
    """``table``'s engine for the device's type (FLOAT32 for a type not in it; ONNXRUNTIME in place of
    MIXED on a CPU without native bf16; FLOAT32 in place of ONNXRUNTIME when it is not installed)."""
    engine = table.get(torch.device(device).type, Engine.FLOAT32)
    if engine is Engine.MIXED and torch.device(device).type == "cpu" and not cpu_has_bf16():
        engine = Engine.ONNXRUNTIME
    return Engine.FLOAT32 if engine is Engine.ONNXRUNTIME and not onnxruntime_available() else engine


def resolve_engine(engine: Engine | str, device: torch.device | str = "cpu") -> Engine:
    """AUTO → :data:`AUTO_ENGINE` for the device's type (FLOAT32 for a type not measured, and in place
    of ONNXRUNTIME when it is not installed); any other engine is returned as it is. ValueError for
    an unknown name."""
    try:
        engine = Engine(engine)
    except ValueError:
        raise ValueError(f"unknown engine {engine!r} (expected {', '.join(e.value for e in Engine)})") from None
    return _auto(AUTO_ENGINE, device) if engine is Engine.AUTO else engine


def coding_engine(engine: Engine | str, device: torch.device | str = "cpu", auto: dict | None = None) -> Engine:
    """The engine a coder runs for ``engine`` on ``device``: AUTO → ``auto`` (default
    :data:`AUTO_CODING_ENGINE`, the lossless coder's) for the device type (FLOAT32 where not measured;
    ONNXRUNTIME in place of MIXED on a CPU without native bf16; FLOAT32 in place of either when ONNX
    Runtime is not installed). ValueError (one line) for an unknown name, an engine outside
    CODING_ENGINES, ONNXRUNTIME or MIXED when ONNX Runtime is not installed (naming the packages)
    or on another device than the CPU.

    CODING_ENGINES (defaults) are the engines whose outputs are bit-identical across fresh processes at
    a fixed thread count, so that a decoder on this machine recomputes the encoder's network exactly:
    float32 eager (torch's CPU kernels at a pinned thread count) and ONNX Runtime's CPU provider
    (measured on the embedded prior: identical outputs at batch 1, 7 and 64 across fresh processes, and
    between 1 and 2 intra-op threads), and MIXED, which runs those inputs through ONNX Runtime and the
    others under bf16 autocast (torch's oneDNN kernels: identical outputs at batch 1, 7, 8 and 64, t = 5
    and 500, across fresh processes and between 1 and 2 threads). MIXED moves the bound by +0.04 %;
    the other bf16 engines move it by +1.1 % (bits a coder would pay) and the compiled and
    channels-last ones were not shown deterministic across processes (inductor's generated code,
    NHWC kernels): refused. bf16 kernels differ between CPUs with and without bf16 units, so a MIXED
    file is for machines like the encoder's (elsewhere the pixels' checksum says it desynchronized).
    """
    if engine == Engine.AUTO:  # a str enum: the name or the member
        chosen = _auto(AUTO_CODING_ENGINE if auto is None else auto, device)
        return Engine.FLOAT32 if chosen is Engine.MIXED and not onnxruntime_available() else chosen
    engine = resolve_engine(engine, device)
    if engine not in CODING_ENGINES:
        raise ValueError(f"engine {engine.value} cannot code: its outputs are not shown bit-identical between encoder "
                         f"and decoder (coding engines: {', '.join(e.value for e in CODING_ENGINES)})")
    if engine in (Engine.ONNXRUNTIME, Engine.MIXED):
        if not onnxruntime_available():
            raise ValueError(_NO_ONNXRUNTIME if engine is Engine.ONNXRUNTIME else
                             f"engine mixed codes its float32 part through ONNX Runtime, which needs {_FAST_PACKAGES}")
        if torch.device(device).type != "cpu":
            raise ValueError(f"engine {engine.value} runs on the CPU for coding, not {device} (use --device cpu)")
    return engine


def decoding_engine(recorded: Engine, device: torch.device | str = "cpu", requested: Engine | str | None = None) -> Engine:
    """The engine a decoder runs for a file that records ``recorded``: that one. ``requested`` None or
    AUTO follows the file; ValueError (one line, naming both) when it names another engine, or when
    the recorded one cannot run here (:func:`coding_engine`'s reasons: not installed, not on the CPU)."""
    recorded = Engine(recorded)
    if requested is not None and requested != Engine.AUTO and resolve_engine(requested) is not recorded:
        raise ValueError(f"file was made with engine {recorded.value}; decoding it with engine "
                         f"{Engine(requested).value} would desynchronize (omit --engine: decoding follows the file)")
    try:
        return coding_engine(recorded, device)
    except ValueError as err:
        raise ValueError(f"file was made with engine {recorded.value}, which cannot run here: {err}") from None


def with_net(prior: Prior, net: nn.Module) -> Prior:
    """A view of ``prior`` whose network is ``net`` (the same call and outputs: an engine around
    ``prior.net``); config, digest and info are shared and ``prior`` is not changed."""
    view = Prior(prior.config, net=net)
    view.digest, view.info = prior.digest, prior.info
    return view.train(prior.training)


def with_engine(prior: Prior, engine: Engine | str, threads: int = 1, cache: bool = False) -> Prior:
    """A view of ``prior`` whose network runs through ``engine`` (FLOAT32: ``prior`` itself; AUTO:
    :func:`resolve_engine` on the prior's device); ``threads``: ONNX Runtime's intra-op threads (torch
    engines run on torch's current thread count). ``cache``: keep the ONNX export on disk
    (:func:`onnx_graph`) when the prior's weights are those of its digest (a prior loaded from a file;
    not the trainer's, whose weights move). Raises ValueError for an unknown engine name.
    """
    device = next(prior.parameters(), torch.empty(0)).device
    engine = resolve_engine(engine, device)
    if engine is Engine.FLOAT32:
        return prior
    digest = prior.digest if cache and engine in (Engine.ONNXRUNTIME, Engine.MIXED) and _digest_holds(prior) else None
    if engine is Engine.ONNXRUNTIME:
        if device.type != "cpu":
            raise ValueError(f"engine onnxruntime runs on the CPU; the prior is on {device} (use --device cpu)")
        return with_net(prior, OnnxRuntimeNet(prior.net, prior.image_shape, threads, prior.any_size, digest))
    if engine is Engine.MIXED:
        return with_net(prior, MixedNet(prior.net, prior.image_shape, mixed_float32_upto(prior.config.num_timesteps),
                                        threads, prior.any_size, digest=digest))
    return with_net(prior, EngineNet(prior.net, engine))


def _digest_holds(prior: Prior) -> bool:
    """Whether ``prior.digest`` is the digest of its configuration and present weights."""
    if not prior.digest:
        return False
    from .checkpoint import prior_digest

    state = {k: v.detach().cpu().float() for k, v in prior.net.state_dict().items()}
    return prior_digest(prior.config, state) == prior.digest


_CODING_VIEWS: "weakref.WeakKeyDictionary[Prior, dict]" = weakref.WeakKeyDictionary()


def coding_view(prior: Prior, engine: Engine, threads: int) -> Prior:
    """:func:`with_engine` made once per (prior, engine, threads) and kept while the prior lives: the
    progressive coder codes one image per call, and an ONNX export costs about a second (kept on disk
    across processes: :func:`onnx_graph`). For priors that no longer change (loaded for coding): the
    ONNX graph is a snapshot of the weights."""
    views = _CODING_VIEWS.setdefault(prior, {})
    key = (Engine(engine), threads)
    if key not in views:
        views[key] = with_engine(prior, engine, threads, cache=True)
    return views[key]

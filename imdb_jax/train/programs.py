"""Compiled programs kept whole on disk, so that a warm start calls them without tracing them.

JAX's persistent compilation cache (`compile_cache`) spares a second process XLA's compilation,
but not the work before it: each new process still traces every jitted function and lowers it
to StableHLO, only to compute the cache key. That was ~0.8 s of a warm `imdb-jax train`'s 4 s
(`JAX_LOG_COMPILES=1`: tracing 0.42 s, lowering 0.38 s, loading from the cache 0.20 s).

`stored_jit` is `jax.jit` plus a store: on a call it builds a key from what decides the program
without tracing it, and calls the compiled executable kept under that key
(`jax.experimental.serialize_executable`), compiling and storing it the first time. The key is
a SHA-256 of

- the function's qualified name, and every source file of this package (any edit of the code is
  a new key), with the versions of Python, JAX, jaxlib, Flax, Optax and NumPy;
- the backend (platform and version), its devices, `XLA_FLAGS` and JAX's configuration;
- the static arguments and the call's pytree structure, described by value (`static_key`;
  functions by module, name and what their closures hold);
- every array argument's shape, dtype, weak type and sharding.

What cannot be described that way is never stored, and those calls go to `jax.jit` as before:
functions and pytree types from outside this package and the libraries whose versions are in
the key (a user's own code, whose edits the key would not see), objects of types the key does not
know, outputs holding functions (a `TrainState` keeps its optimiser's). So do calls under a JAX
transformation, with `jax_disable_jit` or NaN checks, and runs of several processes. A stored
program is compiled by XLA itself, not loaded from JAX's cache (see `_compiled_afresh`), and it is
the executable XLA makes of the same program, so the numbers are the same bit for bit
(`tests/test_programs.py`).

`compile_cache.enable` turns the store on beside the compilation cache, in
`<cache>/xla/imdb-jax-programs`, and off with it: every CLI command and `fit`/`fit_variants` use
it by default; `enable(folder)` sets it directly. Like that cache it is trusted code (an entry is a
pickle): keep it in a folder only you can write. An entry that cannot be read back (a process
killed while writing it, another JAX) is removed and compiled again, with no warning. Entries of
older code are not removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import pickle
import platform
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib.version
import numpy as np
import optax
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from imdb_jax.atomic import atomic_write
from imdb_jax.models import bag_kernel

FOLDER = "imdb-jax-programs"  # inside the compilation cache's folder
SUFFIX = ".program"

_folder: Path | None = None

# JAX settings that never change a compiled program: left out of the key.
_IRRELEVANT = ("cache", "log", "explain", "traceback", "dump", "pprint", "debug_log", "source_url", "timeout", "guard")
# JAX settings under which calls go to jax.jit (they change how programs run, not what they are).
_BYPASS = ("jax_disable_jit", "jax_debug_nans", "jax_debug_infs", "jax_no_tracing", "jax_enable_checks")


class Unkeyable(Exception):
    """A value the key cannot describe by value: its call is not stored."""


def enable(folder: str | os.PathLike | None) -> Path | None:
    """Stores compiled programs in `folder` (None: stop storing) and returns it."""
    global _folder
    _folder = None if folder is None else Path(folder)
    return _folder


def folder() -> Path | None:
    """Where programs are stored, or None when the store is off."""
    return _folder


# ---------------------------------------------------------------------------------------------
# Keys.


@functools.cache
def _code_fingerprint() -> str:
    """This package's source and the versions of what it compiles with."""
    digest = hashlib.sha256()
    for name in (
        platform.python_version(),
        jax.__version__,
        jaxlib.version.__version__,
        flax.__version__,
        optax.__version__,
        np.__version__,
    ):
        digest.update(name.encode() + b"\0")
    package = Path(__file__).resolve().parents[1]
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.cc")]):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environment() -> str:
    """The backend, its devices, XLA's flags, JAX's settings and whether the bag kernel is in use."""
    backend = jax.devices()[0].client
    devices = [(device.id, device.device_kind, device.process_index) for device in jax.devices()]
    settings = sorted(
        (name, repr(value))
        for name, value in jax.config.values.items()
        if not any(part in name for part in _IRRELEVANT)
    )
    kernel = bag_kernel.in_use()
    return repr(
        (backend.platform, backend.platform_version, devices, os.environ.get("XLA_FLAGS", ""), settings, kernel)
    )


# Code whose behaviour the key covers (this package's source, or a library's version): functions
# and pytree types from anywhere else (a user's own, `__main__`) make a call unkeyable.
KNOWN_CODE = ("imdb_jax", "jax", "jaxlib", "flax", "optax", "numpy", "builtins", "collections")


def _known(module: str | None) -> bool:
    return (module or "").split(".")[0] in KNOWN_CODE


def static_key(value: Any) -> str:
    """A description of `value` that is the same in every process where the value is the same.

    Numbers, strings, None, NumPy dtypes, tuples, lists, dicts and (frozen) dataclasses by their
    contents; module-level functions and classes by module and name; closures also by what their
    cells hold; bound methods by their object and name; Flax modules by their repr (their
    fields). Anything else raises `Unkeyable`.
    """
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, np.dtype):
        return f"dtype:{value.str}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__qualname__}(" + ",".join(static_key(item) for item in value) + ")"
    if isinstance(value, Mapping) and type(value) in (dict, types.MappingProxyType):
        return "{" + ",".join(f"{static_key(k)}:{static_key(v)}" for k, v in sorted(value.items(), key=repr)) + "}"
    if isinstance(value, type):
        if not _known(value.__module__):
            raise Unkeyable(f"a type from outside the known code: {value!r}")
        return f"type:{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.MethodType):
        return f"method:{value.__func__.__qualname__}@{static_key(value.__self__)}"
    if isinstance(value, functools.partial):
        return f"partial:{static_key(value.func)}{static_key(value.args)}{static_key(value.keywords)}"
    if isinstance(value, types.FunctionType):
        if not _known(value.__module__):
            raise Unkeyable(f"a function from outside the known code: {value!r}")
        cells = tuple(cell.cell_contents for cell in value.__closure__ or ())
        defaults = (value.__defaults__, value.__kwdefaults__)
        return f"function:{value.__module__}.{value.__qualname__}{static_key(cells)}{static_key(defaults)}"
    wrapped = getattr(value, "__wrapped__", None)
    if callable(value) and wrapped is not None:
        # jax.vmap and functools.wraps wrappers: kept only when their module names them.
        module = sys.modules.get(getattr(value, "__module__", ""), None)
        if not _known(getattr(value, "__module__", None)):
            raise Unkeyable(f"a function from outside the known code: {value!r}")
        for name, candidate in vars(module).items() if module else ():
            if candidate is value:
                return f"named:{module.__name__}.{name}"  # pyright: ignore[reportOptionalMemberAccess]
        raise Unkeyable(f"a wrapped function not named in its module: {value!r}")
    if _is_flax_module(value) and _known(type(value).__module__):
        return f"module:{type(value).__module__}.{type(value).__qualname__}:{value!r}"
    if dataclasses.is_dataclass(value) and _known(type(value).__module__):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return f"{type(value).__module__}.{type(value).__qualname__}{static_key(fields)}"
    raise Unkeyable(f"a {type(value).__qualname__} static value")


def _is_flax_module(value: Any) -> bool:
    flax_linen = sys.modules.get("flax.linen")
    return flax_linen is not None and isinstance(value, flax_linen.Module)


def _tree_key(treedef: Any) -> str:
    """A pytree structure by value: each node's type and static data, recursively."""
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return "*"
    data = treedef.node_data()
    if data is None:  # None itself: a node with no children
        return "None"
    node_type, aux = data
    if not _known(node_type.__module__):
        raise Unkeyable(f"a pytree node from outside the known code: {node_type!r}")
    children = ",".join(_tree_key(child) for child in treedef.children())
    return f"{node_type.__module__}.{node_type.__qualname__}[{static_key(aux)}]({children})"


def _leaf_key(leaf: Any) -> str:
    if isinstance(leaf, jax.Array):
        return f"{leaf.shape}{leaf.dtype}{int(getattr(leaf, 'weak_type', False))}{leaf.sharding!r}"
    if isinstance(leaf, (np.ndarray, np.generic)):
        return f"np{leaf.shape}{leaf.dtype}"
    if isinstance(leaf, (bool, int, float, complex)):
        return type(leaf).__name__
    raise Unkeyable(f"a {type(leaf).__qualname__} argument")


# ---------------------------------------------------------------------------------------------
# The store.


def _bypassed() -> bool:
    values = jax.config.values
    return any(values.get(name) for name in _BYPASS) or jax.process_count() > 1


class StoredFunction:
    """`jax.jit(fun, ...)` whose compiled programs are also kept in the store (see the module).

    Calls, `lower`, `trace` and `eval_shape` behave as `jax.jit`'s; `_cache_size` also counts the
    programs taken from the store.
    """

    def __init__(self, fun: Callable, **jit_options: Any):
        self.jitted = jax.jit(fun, **jit_options)
        functools.update_wrapper(self, fun)
        parameters = inspect.signature(fun).parameters
        self._names = list(parameters)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        static = set(jit_options.get("static_argnames", ()))
        static |= {self._names[index] for index in jit_options.get("static_argnums", ())}
        self._static = frozenset(static)
        self._static_numbers = frozenset(
            index
            for index, (name, parameter) in enumerate(parameters.items())
            if name in static and parameter.kind in positional
        )
        self._name = f"{fun.__module__}.{fun.__qualname__}"
        self._loaded: dict[str, Any] = {}  # key -> a jax.stages.Compiled, or None: not storable

    def __getattr__(self, name: str) -> Any:
        return getattr(self.jitted, name)

    def _cache_size(self) -> int:
        """Programs this function holds in this process: `jax.jit`'s, and those of the store."""
        stored = sum(compiled is not None for compiled in self._loaded.values())
        return self.jitted._cache_size() + stored  # pyright: ignore[reportAttributeAccessIssue]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _folder is None or _bypassed():
            return self.jitted(*args, **kwargs)
        # As jax.jit splits a call: static arguments by position or name, the rest as given.
        static = {self._names[index]: arg for index, arg in enumerate(args) if index in self._static_numbers}
        static.update((name, value) for name, value in kwargs.items() if name in self._static)
        dynamic_args = tuple(arg for index, arg in enumerate(args) if index not in self._static_numbers)
        dynamic_kwargs = {name: value for name, value in kwargs.items() if name not in self._static}
        leaves, in_tree = jax.tree_util.tree_flatten((dynamic_args, dynamic_kwargs))
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):  # pyright: ignore[reportAttributeAccessIssue]
            return self.jitted(*args, **kwargs)  # under a transformation: jax.jit's business
        try:
            key = self._key(static, in_tree, leaves)
        except (Unkeyable, RecursionError):
            return self.jitted(*args, **kwargs)
        compiled = self._loaded.get(key, False)
        if compiled is False:
            compiled = self._loaded[key] = self._load(key, in_tree) or self._compile(key, in_tree, args, kwargs)
        if compiled is None:
            return self.jitted(*args, **kwargs)
        return compiled(*dynamic_args, **dynamic_kwargs)

    def _key(self, static: dict[str, Any], in_tree: Any, leaves: list[Any]) -> str:
        digest = hashlib.sha256()
        for part in (
            self._name,
            _code_fingerprint(),
            _environment(),
            static_key(static),
            _tree_key(in_tree),
            "|".join(_leaf_key(leaf) for leaf in leaves),
        ):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        assert _folder is not None
        return _folder / f"{self._name.rsplit('.', 1)[-1].lstrip('_')}-{key[:40]}{SUFFIX}"

    def _load(self, key: str, in_tree: Any) -> Any:
        """The stored program of `key`, or None (none stored; a damaged entry is removed)."""
        path = self._path(key)
        try:
            payload = path.read_bytes()
        except OSError:
            return None
        try:
            entry = pickle.loads(payload)
            if entry["key"] != key:
                raise ValueError("another program's entry")
            out_tree = jax.tree_util.tree_structure(pickle.loads(entry["outputs"]))
            by_id = {device.id: device for device in jax.devices()}
            devices = [by_id[number] for number in entry["devices"]]
            return deserialize_and_load(entry["executable"], in_tree, out_tree, execution_devices=devices)
        except Exception:  # truncated, another JAX's, unreadable: compiled and written again
            path.unlink(missing_ok=True)
            return None

    def _compile(self, key: str, in_tree: Any, args: tuple, kwargs: dict) -> Any:
        """Compiles the call's program and stores it; None when it cannot be stored (the call
        then goes to `jax.jit`, which uses JAX's persistent cache as before)."""
        lowered = self.jitted.lower(*args, **kwargs)
        # The output structure, rebuilt from a skeleton (its leaves numbered) when loaded.
        out_tree = lowered.out_tree
        try:
            outputs = pickle.dumps(jax.tree_util.tree_unflatten(out_tree, range(out_tree.num_leaves)))
        except Exception:  # a structure holding functions (a TrainState's optimiser)
            return None
        try:
            with _compiled_afresh():
                compiled = lowered.compile()
            executable, compiled_in_tree, _ = serialize(compiled)
        except Exception:  # a program that does not serialize, a JAX without the hook
            return None
        if compiled_in_tree != in_tree:  # not the call's structure as this module splits it
            return None
        # The devices it runs on, in the order of its device assignment.
        devices = [device.id for device in compiled.runtime_executable().local_devices()]  # pyright: ignore[reportOptionalMemberAccess]
        entry = pickle.dumps({"key": key, "executable": executable, "outputs": outputs, "devices": devices})
        try:
            self._path(key).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path(key), entry)
        except OSError:
            pass  # an unwritable store costs the next process time, never this run
        return compiled


class _Unsupported(Exception):
    """This JAX lacks what `_compiled_afresh` relies on."""


# Compilations for the store in progress, and JAX's own setting to put back after the last one.
_afresh_lock = threading.Lock()
_afresh: dict[str, Any] = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _compiled_afresh() -> Iterator[None]:
    """One compilation done by XLA itself, not loaded from JAX's persistent cache.

    On CPU an executable that JAX's cache loaded serializes without its compiled functions
    (7.9 kB against 12.1 kB for a small program), and calling it after loading it from the store
    fails ("Function convert_multiply_fusion not found"). JAX decides once per process whether
    its cache is used (`compilation_cache._cache_used`); this says no until the compilation is
    done. Threads may compile for the store at once (`FusedGridSearchCV` trains each device's
    share in a thread of its own): JAX's setting comes back when the last of them is done, not
    as each leaves, which could leave it off for good. Meanwhile another thread's `jax.jit`
    compilation skips JAX's cache too: slower, never other numbers.
    """
    # Deferred: a private JAX module, only where a program is compiled for the store.
    from jax._src import compilation_cache as cache

    if not all(hasattr(cache, name) for name in ("_cache_initialized_mutex", "_cache_checked", "_cache_used")):
        raise _Unsupported
    with _afresh_lock:
        if _afresh["depth"] == 0:
            with cache._cache_initialized_mutex:
                _afresh["saved"] = cache._cache_checked, cache._cache_used
                cache._cache_checked, cache._cache_used = True, False
        _afresh["depth"] += 1
    try:
        yield
    finally:
        with _afresh_lock:
            _afresh["depth"] -= 1
            if _afresh["depth"] == 0:
                with cache._cache_initialized_mutex:
                    cache._cache_checked, cache._cache_used = _afresh["saved"]


def stored_jit(fun: Callable | None = None, **jit_options: Any) -> Any:
    """`jax.jit` with the program store (see the module); same options, usable as a decorator
    with or without `functools.partial`."""
    if fun is None:
        return functools.partial(stored_jit, **jit_options)
    return StoredFunction(fun, **jit_options)

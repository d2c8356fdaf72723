"""Code: package versions, classes, functions and everything a function's code reads.

The rule deciding how code is identified (no file paths are looked at):

* **library code** -- a module whose top-level package is provided by an
  installed, non-editable distribution (``importlib.metadata``), or the
  standard library -- is identified by its name and the distribution's
  version (:func:`package_version`);
* an **editable install** (PEP 610 ``direct_url.json`` says ``"editable":
  true``), whose code changes while its version does not, by its name,
  version and a digest of its package's Python sources (read once per
  process through its loader);
* **user code** -- ``__main__``, notebooks, scripts, modules on ``sys.path``
  without distribution metadata -- is identified by its bytecode, constants
  and everything it reads, recursively.

A function (:func:`function_token`) is hashed completely: its code, defaults,
closure cells, attributes (so every wrapper of a ``functools.wraps`` chain,
through ``__wrapped__`` and the closure holding the wrapped function), and for
user code the module globals its code reads (functions recursively, classes by
:func:`class_token`, arrays by content, mutable containers by value) and the
module attributes it reads (``helpers.f()``, ``np.linalg.norm``: attributes of
user modules by value, of library modules by the library's version). What
cannot be covered (a lock, a generator, a user module used as a value, more
than :data:`~dvl_dask.keys._encode.MAX_USER_CODE` functions of user code)
raises :class:`~dvl_dask.errors.TokenizationError` in strict sessions.
"""

from __future__ import annotations

import dis
import enum
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..validation import check_callable
from ._encode import (
    _KEY_FORMAT,
    Uncoverable,
    Update,
    current,
    digest_of,
    feed,
    register,
    scope,
    session,
)

# -- packages ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    """Top-level import name -> names of the distributions that provide it (once per process).

    The same mapping as :func:`importlib.metadata.packages_distributions`, built
    faster: that function turns every file of a distribution without
    ``top_level.txt`` into a ``PackagePath`` (1.4 s here, a third of it for one
    documentation theme's 14,000 files), which every fresh process (each Dask
    worker, each CLI run) paid before its first identity. Here a distribution's
    ``top_level.txt`` is read when it lists names, else its ``RECORD`` is parsed
    as text with the same rule (the first part of each ``.py`` file's path, or
    a top-level file's module name; names with a dot are not importable).
    """
    import csv
    from importlib.metadata import distributions

    found: dict[str, list[str]] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        tops = set((dist.read_text("top_level.txt") or "").split())
        if not tops:
            for row in csv.reader((dist.read_text("RECORD") or "").splitlines()):
                if row and row[0].endswith(".py"):
                    first, _, rest = row[0].partition("/")
                    tops.add(first if rest else first[: -len(".py")])
        for top in tops:
            if top and "." not in top:
                found.setdefault(top, []).append(name)
    return found


def _editable(dist: Any) -> bool:
    """Whether a distribution is an editable install (PEP 610 ``direct_url.json``)."""
    try:
        text = dist.read_text("direct_url.json")
    except Exception:  # unreadable metadata: not known to be editable
        return False
    if not text:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return bool(isinstance(info, dict) and (info.get("dir_info") or {}).get("editable"))


@functools.lru_cache(maxsize=4096)
def _top_level_version(top: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, distribution

    found = []
    editable = False
    for name in sorted(set(_distributions().get(top, ()))):
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # pragma: no cover - broken metadata
            continue
        editable = editable or _editable(dist)
        found.append(f"{name}=={dist.version}")
    if not found:
        return None
    if editable:  # its code changes without its version changing: the version is completed by its sources
        sources = _source_digest(top)
        if sources is None:
            return None
        found.append(f"sources={sources}")
    return ",".join(found)


def _source_digest(top: str) -> str | None:
    """Digest of the Python sources of package ``top`` as its loader sees them (None: unreadable)."""
    module = sys.modules.get(top)
    if module is None:
        try:
            module = importlib.import_module(top)
        except Exception:  # cannot be imported: not identified by its sources
            return None
    h = hashlib.blake2b(digest_size=8)
    if getattr(module, "__path__", None) is None:
        loader = getattr(module, "__loader__", None)
        try:
            source = loader.get_source(top) if loader is not None else None  # type: ignore[union-attr]
        except Exception:
            source = None
        if source is None:
            return None
        h.update(source.encode("utf-8", "surrogatepass"))
        return h.hexdigest()
    try:
        from importlib.resources import files

        root = files(top)
        pending = [("", root)]
        while pending:
            prefix, node = pending.pop()
            for child in sorted(node.iterdir(), key=lambda c: c.name):
                rel = f"{prefix}/{child.name}"
                if child.is_dir():
                    if child.name != "__pycache__":
                        pending.append((rel, child))
                elif child.name.endswith(".py"):
                    data = child.read_bytes()
                    h.update(b"%d:" % len(rel) + rel.encode() + b"%d:" % len(data))
                    h.update(data)
    except Exception:  # namespace packages, zip imports without listing, ...
        return None
    return h.hexdigest()


def package_version(module: str | None) -> str | None:
    """``"<distribution>==<version>"`` of the installed package a module belongs to, else None.

    The standard library gives ``"python==<major>.<minor>"``. The decision
    uses package metadata only (``importlib.metadata``), never file paths: a
    module whose top-level package no installed distribution provides
    (``__main__``, notebooks, scripts, directories on ``sys.path``) is user
    code and gives None: its identity is its bytecode and what it reads. An
    editable install (PEP 610 ``direct_url.json``), whose code changes without
    its version changing, gives ``"<dist>==<version>,sources=<digest>"``: the
    digest of its Python sources as its loader reads them, taken once per
    process.

    Examples
    --------
    >>> package_version("numpy.linalg").startswith("numpy==")
    True
    >>> package_version("__main__") is None
    True
    """
    if module is not None and (not isinstance(module, str) or not module):
        raise InvalidParameterError(
            "The 'module' argument of package_version must be a module name such as 'numpy.linalg' (a non-empty "
            f"str) or None. Got {type(module).__name__} {module!r:.60} instead."
        )
    return _package_version(module)


def _package_version(module: Any) -> str | None:
    """:func:`package_version` for any value (the tokenizer's callers): not a module name gives None."""
    if not module or not isinstance(module, str):
        return None
    top = module.partition(".")[0]
    if top in ("__main__", "__mp_main__"):
        return None
    if top in sys.stdlib_module_names or top == "builtins":
        return f"python=={sys.version_info.major}.{sys.version_info.minor}"
    return _top_level_version(top)


def _is_user_function(value: Any) -> bool:
    if isinstance(value, types.FunctionType):
        g = value.__globals__
        return _package_version(g.get("__name__") if isinstance(g, dict) else None) is None
    if isinstance(value, type):
        return _package_version(getattr(value, "__module__", None)) is None
    return False


# -- code plans: what a code object is and what it reads, computed once per code object ------------


class _Plan:
    """The static digest of a code object and the names, module attributes and imports it reads."""

    __slots__ = ("derefs", "digest", "globals", "imports", "n_codes")

    def __init__(self) -> None:
        self.digest = b""
        #: (name, chains, bare) for globals read (not those the code assigns), sorted by name
        self.globals: tuple[tuple[str, tuple[tuple[str, ...], ...], bool], ...] = ()
        #: free variable name -> (chains, bare)
        self.derefs: dict[str, tuple[tuple[tuple[str, ...], ...], bool]] = {}
        #: (module name, level, whole module imported, chains, bare) for imports inside the code
        self.imports: tuple[tuple[str, int, bool, tuple[tuple[str, ...], ...], bool], ...] = ()
        self.n_codes = 1


class _Refs:
    """Accumulates, over a code object and its nested ones, the chains read on each name."""

    def __init__(self) -> None:
        self.chains: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        self.bare: set[tuple[str, str]] = set()
        self.stored: set[str] = set()
        self.imports: dict[tuple[str, int, bool, tuple[str, ...]], str | None] = {}
        self.aliases: dict[str, tuple[str, int, bool, tuple[str, ...]]] = {}

    def add(self, kind: str, name: str, chain: list[str]) -> None:
        self.chains.setdefault((kind, name), set())
        if chain:
            self.chains[(kind, name)].add(tuple(chain))
        else:
            self.bare.add((kind, name))


_LOADS = {"LOAD_GLOBAL": "global", "LOAD_NAME": "global", "LOAD_DEREF": "deref", "LOAD_CLASSDEREF": "deref",
          "LOAD_FAST": "fast"}
_ATTRS = ("LOAD_ATTR", "LOAD_METHOD")
_STORES = ("STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF")


def _scan(code: types.CodeType, refs: _Refs) -> None:
    """Record the loads of ``code`` and its nested code objects as attribute chains."""
    chain: list[str] | None = None
    head: tuple[str, str] | None = None
    consts: list[Any] = []
    importing: tuple[str, int, bool] | None = None
    from_chain: tuple[str, ...] = ()
    for ins in dis.get_instructions(code):
        op = ins.opname
        if op in _ATTRS and chain is not None:
            chain.append(ins.argval)
            continue
        if head is not None and chain is not None:
            refs.add(head[0], head[1], chain)
        chain = head = None
        kind = _LOADS.get(op)
        if kind is not None:
            head, chain = (kind, ins.argval), []
        elif op in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            refs.stored.add(ins.argval)
        if op == "IMPORT_NAME":
            level = consts[-2] if len(consts) >= 2 and isinstance(consts[-2], int) else 0
            fromlist = consts[-1] if consts else None
            importing, from_chain = (ins.argval, level, fromlist is None), ()
            refs.imports.setdefault((ins.argval, level, fromlist is None, ()), None)
        elif op == "IMPORT_FROM" and importing is not None:
            from_chain = (ins.argval,)
            refs.imports[(*importing, from_chain)] = None
        elif op in _STORES and importing is not None:
            refs.aliases[ins.argval] = (*importing, from_chain)
            from_chain = ()
        elif op not in ("IMPORT_FROM", "IMPORT_NAME", "LOAD_CONST"):
            importing = None
        consts = [*consts[-1:], ins.argval] if op == "LOAD_CONST" else []
    if head is not None and chain is not None:
        refs.add(head[0], head[1], chain)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan(const, refs)


def _static_digest(code: types.CodeType) -> bytes:
    """Bytecode, names, constants (nested code recursively); not the file name nor line numbers."""
    h = hashlib.blake2b(digest_size=16)
    update = h.update
    update(b"code:")
    for part in (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        feed(update, part)
    feed(update, (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount))
    feed(update, getattr(code, "co_exceptiontable", b""))
    update(b"consts:%d:" % len(code.co_consts))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            update(_static_digest(const))
        else:
            feed(update, const)
    return h.digest()


_PLANS: dict[int, tuple[types.CodeType, _Plan]] = {}
_PLANS_LOCK = threading.Lock()


def _count_codes(code: types.CodeType) -> int:
    return 1 + sum(_count_codes(c) for c in code.co_consts if isinstance(c, types.CodeType))


def _plan(code: types.CodeType) -> _Plan:
    """The plan of a code object, computed once (the code object is kept with it, so its id is not reused)."""
    found = _PLANS.get(id(code))
    if found is not None and found[0] is code:
        return found[1]
    refs = _Refs()
    _scan(code, refs)
    plan = _Plan()
    plan.digest = _static_digest(code)
    plan.n_codes = _count_codes(code)
    by_kind: dict[str, dict[str, tuple[tuple[tuple[str, ...], ...], bool]]] = {"global": {}, "deref": {},
                                                                              "fast": {}}
    for (kind, name), chains in refs.chains.items():
        by_kind[kind][name] = (tuple(sorted(chains)), (kind, name) in refs.bare)
    plan.globals = tuple(
        (name, chains, bare) for name, (chains, bare) in sorted(by_kind["global"].items()) if name not in refs.stored
    )
    plan.derefs = by_kind["deref"]
    imports = []
    for key in sorted(refs.imports, key=repr):
        module, level, whole, from_chain = key
        alias_uses = [by_kind["fast"][alias] for alias, target in refs.aliases.items()
                      if target == key and alias in by_kind["fast"]]
        chains = {from_chain + c for uses, _ in alias_uses for c in uses} or ({from_chain} if from_chain else set())
        bare = any(bare for _, bare in alias_uses) and not from_chain
        imports.append((module, level, whole, tuple(sorted(chains)), bare))
    plan.imports = tuple(imports)
    with _PLANS_LOCK:
        if len(_PLANS) > 16384:
            _PLANS.clear()
        _PLANS[id(code)] = (code, plan)
    return plan


# -- functions ----------------------------------------------------------------------------------------

_MISSING = object()


def _resolve(root: Any, chain: tuple[str, ...]) -> tuple[int, Any]:
    """Follow ``chain`` from a module while the value is a module: how many names were used, and the value."""
    value, used = root, 0
    while used < len(chain) and isinstance(value, types.ModuleType):
        value = getattr(value, chain[used], _MISSING)
        used += 1
    return used, value


def _feed_value(update: Update, value: Any) -> None:
    if value is _MISSING:
        update(b"<missing>")
    else:
        feed(update, value)


def _feed_module_ref(update: Update, module: types.ModuleType, chains: tuple[tuple[str, ...], ...], bare: bool,
                     reader: str) -> None:
    """A module the code reads: library modules by version, user modules by the attributes read from them."""
    name = getattr(module, "__name__", None)
    version = _package_version(name)
    update(b"M")
    feed(update, name)
    if version is not None:
        feed(update, version)
        for chain in chains:  # the library's attributes are its version, unless the user replaced one
            used, value = _resolve(module, chain)
            if _is_user_function(value):
                feed(update, chain[:used])
                feed(update, value)
        return
    if bare:
        raise Uncoverable(
            f"{reader} uses the module {name!r} (user code, not an installed package) as a value; dvl_dask "
            f"covers only the attributes code reads from it as {name}.attribute."
        )
    for chain in chains:
        used, value = _resolve(module, chain)
        feed(update, chain[:used])
        _feed_value(update, value)


def _import(module: str, level: int, globals_: dict[str, Any], whole: bool) -> types.ModuleType:
    if level:
        package = globals_.get("__package__") or str(globals_.get("__name__", "")).rpartition(".")[0]
        module = importlib.util.resolve_name("." * level + module, package)
    found = sys.modules.get(module)
    if found is None:
        found = importlib.import_module(module)  # the code imports it when it runs anyway
    if whole:  # `import a.b` binds `a`
        found = sys.modules.get(module.partition(".")[0], found)
    return found


def _qualname(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__)


def _is_named(fn: types.FunctionType, module: str | None) -> bool:
    """Whether ``module.<qualname>`` is ``fn`` itself: a library function identified by its name."""
    qualname = fn.__qualname__
    if module is None or "<" in qualname:
        return False
    value: Any = sys.modules.get(module)
    for part in qualname.split("."):
        value = getattr(value, part, None)
        if value is None:
            return False
    return value is fn


def _named_library_function(fn: types.FunctionType) -> bytes | None:
    """What a library function reachable as ``module.<qualname>`` feeds: its name and version (else None)."""
    named = _NAMED_FUNCTIONS.get(fn)
    if named is None:
        g = fn.__globals__
        module = g.get("__name__") if isinstance(g, dict) else None
        version = _package_version(module)
        if version is None or not _is_named(fn, module):
            return None
        h = hashlib.blake2b(digest_size=16)
        feed(h.update, (f"{module}.{fn.__qualname__}", version))
        named = b"lib-fn:" + h.digest()
        if len(_NAMED_FUNCTIONS) > 16384:
            _NAMED_FUNCTIONS.clear()
        _NAMED_FUNCTIONS[fn] = named
    return named


def _feed_function(update: Update, fn: types.FunctionType) -> None:
    named = _named_library_function(fn)
    if named is not None:
        update(named)
        return
    s = current()
    assert s is not None
    found = s.memo.get(id(fn))
    if found is not None and found[0] is fn:  # hashed before in this digest: a back-reference
        update(b"<fn%d>" % found[1])
        return
    s.memo[id(fn)] = (fn, len(s.memo))
    g = fn.__globals__
    module = g.get("__name__") if isinstance(g, dict) else None  # where the code was written (wraps copies
    update(b"fn:")  # __module__ and __qualname__ from the function it wraps)
    feed(update, f"{module}.{fn.__qualname__}")
    version = _package_version(module)
    plan = None
    if version is not None:  # a closure made by library code: its name and version, and its state below
        feed(update, version)
    else:
        plan = _plan(fn.__code__)
        s.budget -= plan.n_codes
        if s.budget < 0:
            raise Uncoverable(
                f"Hashing {module}.{fn.__qualname__} walks more code than dvl_dask's bound: it reaches more than "
                "the allowed number of functions of code not installed as a package (no non-editable distribution "
                "in importlib.metadata; e.g. a large library put on PYTHONPATH)."
            )
        update(plan.digest)
        _feed_references(update, fn, plan, g)
    feed(update, (fn.__defaults__, fn.__kwdefaults__))
    _feed_closure(update, fn, plan)
    if fn.__dict__:
        update(b"attrs:")
        feed(update, dict(fn.__dict__))


def _feed_references(update: Update, fn: types.FunctionType, plan: _Plan, g: dict[str, Any]) -> None:
    reader = f"{g.get('__name__')}.{fn.__qualname__}"
    builtins = g.get("__builtins__")
    builtins = builtins if isinstance(builtins, dict) else getattr(builtins, "__dict__", {})
    for name, chains, bare in plan.globals:
        if name in g:
            value = g[name]
        elif name in builtins:
            continue  # part of the Python version
        else:
            feed(update, (name, "<unbound>"))
            continue
        feed(update, name)
        if isinstance(value, types.ModuleType):
            _feed_module_ref(update, value, chains, bare, reader)
        else:
            feed(update, value)
    for module, level, whole, chains, bare in plan.imports:
        update(b"import:")
        feed(update, (module, level, whole))
        try:
            found = _import(module, level, g, whole)
        except Exception as exc:  # the module cannot be found now
            raise Uncoverable(f"{reader} imports {module!r}, which cannot be imported now ({exc}).") from None
        _feed_module_ref(update, found, chains, bare, reader)


def _feed_closure(update: Update, fn: types.FunctionType, plan: _Plan | None) -> None:
    closure = fn.__closure__ or ()
    update(b"closure:%d:" % len(closure))
    for name, cell in zip(fn.__code__.co_freevars, closure):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (variable not yet assigned)
            update(b"<empty>")
            continue
        if isinstance(contents, types.ModuleType) and plan is not None:
            chains, bare = plan.derefs.get(name, ((), True))
            _feed_module_ref(update, contents, chains, bare, f"{fn.__qualname__} (closure variable {name!r})")
        else:
            feed(update, contents)


def _feed_method(update: Update, method: types.MethodType) -> None:
    update(b"method:")
    feed(update, method.__self__)
    feed(update, method.__func__)


def _feed_partial(update: Update, p: functools.partial) -> None:
    update(b"partial:")
    feed(update, p.func)
    feed(update, p.args)
    feed(update, dict(p.keywords))
    feed(update, dict(getattr(p, "__dict__", None) or {}))


def _feed_builtin(update: Update, fn: Any) -> None:
    bound = getattr(fn, "__self__", None)
    if bound is not None and not isinstance(bound, types.ModuleType):
        update(b"bound-builtin:")
        feed(update, getattr(fn, "__name__", ""))
        feed(update, bound)
        return
    module = getattr(fn, "__module__", None) or getattr(bound, "__name__", None) or type(fn).__module__
    update(b"builtin:")
    feed(update, (f"{module}.{_qualname(fn)}", _package_version(module) or ""))


def _feed_module(update: Update, module: types.ModuleType) -> None:
    _feed_module_ref(update, module, (), True, "A value")


def _feed_code(update: Update, code: types.CodeType) -> None:
    update(_plan(code).digest)


def _feed_class(update: Update, cls: type) -> None:
    update(b"C")
    update(class_token(cls).encode())


# -- classes -------------------------------------------------------------------------------------------

#: Tokens of library classes (name and version): module-level classes, kept as long as the process.
_LIBRARY_CLASSES: dict[type, str] = {}
#: What named library functions feed (name and version), by function.
_NAMED_FUNCTIONS: dict[types.FunctionType, bytes] = {}
_SKIPPED_CLASS_ATTRS = frozenset(
    {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__annotations__", "__slots__",
     "__abstractmethods__", "_abc_impl", "__dataclass_fields__", "__dataclass_params__", "__parameters__",
     "__orig_bases__", "__firstlineno__", "__static_attributes__", "__slotnames__"}
)


def class_token(cls: type) -> str:
    """Token of a class: name and version for library code, name and code for user code.

    User code (see :func:`package_version`) contributes its bases and, for
    every method, property and nested class, what :func:`function_token`
    covers (code, defaults, closures, the globals and module attributes it
    reads), and its plain data attributes (numbers, strings, arrays and
    containers of them) by value; other class attributes (registries,
    locks, caches) are class-level state and left out. Editing the class, or
    a helper or module constant its methods read, changes the token. Library
    classes give their qualified name and the distribution version.
    """
    if not isinstance(cls, type):
        raise InvalidParameterError(
            f"The 'cls' argument of class_token must be a class. Got {type(cls).__name__} {cls!r:.60} instead. "
            "To hash an instance, use object_token."
        )
    name = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', getattr(cls, '__name__', '?'))}"
    version = _package_version(getattr(cls, "__module__", None))
    if version is not None or not hasattr(cls, "__dict__"):
        found = _LIBRARY_CLASSES.get(cls)
        if found is None:
            found = digest_of(b"class:", name, version or "builtin")
            if len(_LIBRARY_CLASSES) > 16384:
                _LIBRARY_CLASSES.clear()
            _LIBRARY_CLASSES[cls] = found
        return found
    with session(strict=True) as s:
        if id(cls) in s.active:  # a method naming its own class
            return f"class:{name}"
        s.active.add(id(cls))
        try:
            return _user_class_token(cls, name)
        finally:
            s.active.discard(id(cls))


def _user_class_token(cls: type, name: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    update = h.update
    update(_KEY_FORMAT + b"class:")
    with scope():
        feed(update, name)
        for base in cls.__bases__:
            if base is not object:
                feed(update, class_token(base))
        for attr in sorted(vars(cls)):
            if attr in _SKIPPED_CLASS_ATTRS:
                continue
            value = inspect.getattr_static(cls, attr)
            funcs = _functions_of(value)
            if funcs:
                feed(update, attr)
                for fn in funcs:
                    feed(update, fn)
            elif isinstance(value, type):
                feed(update, attr)
                feed(update, value)
            elif _is_plain(value):
                feed(update, (attr, value))
    return h.hexdigest()


def _functions_of(value: Any) -> list[types.FunctionType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)]
    if isinstance(value, functools.cached_property):
        value = value.func
    return [value] if isinstance(value, types.FunctionType) else []


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Plain data (numbers, strings, arrays, enums and containers of them): hashed by value as configuration."""
    t = type(value)
    if value is None or t in (int, float, str, bytes, bool, complex):
        return True
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return True
    if t is np.ndarray:
        return not value.dtype.hasobject
    if isinstance(value, enum.Enum):
        return True
    if t in (tuple, list, frozenset, set) and depth < 3 and len(value) <= 256:
        return all(_is_plain(v, depth + 1) for v in value)
    if t is dict and depth < 3 and len(value) <= 256:
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


# -- public entry points --------------------------------------------------------------------------------


def innermost(fn: Any) -> Any:
    """Follow partials, bound methods and ``__wrapped__`` to the function that finally runs (for names)."""
    target = fn
    for _ in range(64):
        if isinstance(target, functools.partial):
            target = target.func
        elif isinstance(target, types.MethodType):
            target = target.__func__
        elif not isinstance(target, type) and getattr(target, "__wrapped__", None) is not None:
            target = target.__wrapped__
        else:
            break
    return target


def function_token(fn: Callable[..., Any]) -> str:
    """Token of a callable: everything that decides what calling it does.

    Covers, recursively: the code (bytecode and constants of user code, or
    name and package version of library code: see :func:`package_version`),
    defaults, closure cells, the function's attributes -- so every wrapper of
    a ``functools.wraps`` chain counts, through ``__wrapped__`` and the
    closure that holds the wrapped function -- the module globals the code
    reads (functions recursively, classes, arrays by content, mutable
    containers by value; names the code itself assigns with ``global`` are
    left out) and the module attributes it reads (``helpers.f()``,
    ``np.linalg.norm``). A bound method adds the object it belongs to (a
    :class:`~dvl_dask.Utility` answers with its stored token),
    ``functools.partial`` its arguments, a callable instance its class and
    state.

    Raises
    ------
    TokenizationError
        If some of that cannot be hashed completely (a lock in a global, a
        user module used as a value, code reaching too much user code).

    Examples
    --------
    >>> def make(threshold):
    ...     return lambda x: x > threshold
    >>> function_token(make(0.5)) == function_token(make(0.5)), function_token(make(0.5)) == function_token(make(0.7))
    (True, False)
    """
    check_callable(fn, "fn", "function_token", what="a function, method, partial or callable object")
    return digest_of(fn, tag=b"function")


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Digest of the code behind ``fn`` without the state it carries.

    Partials, bound methods and ``__wrapped__`` chains are followed to the
    function that finally runs (:func:`innermost`); callable instances give
    their class's ``__call__``. For user code: bytecode and constants
    (nested code recursively), defaults, and the globals and module
    attributes the code reads; for library code: name and package version.
    Neither the file path nor line numbers are part of the digest, and sets
    are hashed in sorted order, so the same code gives the same digest in
    every process. :func:`function_token` adds the state (closures,
    wrappers, owners, partial arguments).

    Examples
    --------
    >>> def f(x):
    ...     return x + 1
    >>> def g(x):
    ...     return x + 2
    >>> code_fingerprint(f) == code_fingerprint(f), code_fingerprint(f) == code_fingerprint(g)
    (True, False)
    """
    check_callable(fn, "fn", "code_fingerprint", what="a function, method, partial or callable object")
    target = innermost(fn)
    if not isinstance(target, (types.FunctionType, types.BuiltinFunctionType, type)) and callable(target):
        call = inspect.getattr_static(type(target), "__call__", None)
        target = call if isinstance(call, types.FunctionType) else type(target)
    if not isinstance(target, types.FunctionType):
        return digest_of(target, tag=b"code")
    h = hashlib.blake2b(digest_size=16)
    with session(strict=True), scope():
        g = target.__globals__
        module = g.get("__name__") if isinstance(g, dict) else None
        feed(h.update, f"{module}.{target.__qualname__}")
        version = _package_version(module)
        if version is not None:
            feed(h.update, version)
        else:
            plan = _plan(target.__code__)
            h.update(plan.digest)
            _feed_references(h.update, target, plan, g)
        feed(h.update, (target.__defaults__, target.__kwdefaults__))
    return h.hexdigest()


register(types.FunctionType, _feed_function)
register(types.MethodType, _feed_method)
register(functools.partial, _feed_partial)
register((types.BuiltinFunctionType, types.MethodWrapperType), _feed_builtin)
register(types.ModuleType, _feed_module)
register(types.CodeType, _feed_code)
register(type, _feed_class)

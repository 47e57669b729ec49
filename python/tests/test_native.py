"""The bindings against include/lbagent.h (prototypes, structure, numbers, version), and how
the library is found."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from ctypes import (POINTER, c_char, c_char_p, c_int, c_size_t, c_uint, c_uint16, c_uint32,
                    c_uint64, c_void_p)
from pathlib import Path

import lbagent
from lbagent import _native
from conftest import HEADER, run_python, unbundled_package


def header_text() -> str:
    """The header without comments and preprocessor lines."""
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


#: How each C type of the header is spelled in ctypes. A new type in the header (a callback
#: typedef, say) fails the test below until it is added here and to _native.
C_TYPES = {
    "void": None,
    "int": c_int,
    "unsigned int": c_uint,
    "uint32_t": c_uint32,
    "size_t": c_size_t,
    "enum lbagent_result": c_int,
    "const char *": c_char_p,
    "char *": POINTER(c_char),
    "struct lbagent *": _native.AGENT_P,
    "const struct lbagent *": _native.AGENT_P,
    "struct lbagent **": POINTER(_native.AGENT_P),
    "struct lbagent_status *": POINTER(_native.lbagent_status),
    "struct lbagent_drain *": POINTER(_native.lbagent_drain),
    "struct lbagent_status": _native.lbagent_status,
    "struct lbagent_prober *": _native.PROBER_P,
    "const struct lbagent_prober *": _native.PROBER_P,
    "struct lbagent_prober **": POINTER(_native.PROBER_P),
    "struct lbagent_probe_result *": POINTER(_native.lbagent_probe_result),
    "size_t *": POINTER(c_size_t),
    "uint16_t *": POINTER(c_uint16),
    "uint64_t *": POINTER(c_uint64),
    "uint64_t": c_uint64,
    "char": c_char,
    "void *": c_void_p,
    "unsigned int *": POINTER(c_uint),
    "lbagent_check_fn": _native.CHECK_FN,
    "lbagent_free_fn": _native.FREE_FN,
    "lbagent_log_fn": _native.LOG_FN,
}


def normalize(c_type: str) -> str:
    c_type = c_type.replace("LBAGENT_MUST_USE", "")
    c_type = re.sub(r"\s*\*", " *", " ".join(c_type.split()))
    return c_type.replace("* *", "**").strip()


def argument_types(args: str):
    types = []
    for arg in args.split(","):
        arg = " ".join(arg.split())
        if arg in ("void", ""):
            continue
        # The last word is the parameter's name; what comes before is its type.
        types.append(normalize(re.sub(r"\w+$", "", arg)))
    return types


def header_prototypes():
    """{name: (return type, [argument types])} for every function declared in the header."""
    pattern = re.compile(r"([\w\s\*]+?)\b(lbagent_\w+)\s*\(([^()]*)\)\s*;")
    return {name: (normalize(ret), argument_types(args))
            for ret, name, args in pattern.findall(header_text())}


def header_callback_types():
    """{name: (return type, [argument types])} for every function pointer typedef."""
    pattern = re.compile(
        r"typedef\s+([\w\s\*]+?)\s*\(\s*\*\s*(lbagent_\w+)\s*\)\s*\(([^()]*)\)\s*;")
    return {name: (normalize(ret), argument_types(args))
            for ret, name, args in pattern.findall(header_text())}


def ctype(c_type: str):
    assert c_type in C_TYPES, f"no ctypes spelling for C type {c_type!r}: add it to C_TYPES"
    return C_TYPES[c_type]


def test_every_function_of_the_header_is_bound_with_the_header_types():
    declared = header_prototypes()
    assert len(declared) >= 14, declared
    assert sorted(declared) == sorted(_native.PROTOTYPES), "functions drifted from the header"
    for name, (ret, args) in declared.items():
        restype, argtypes = _native.PROTOTYPES[name]
        assert restype is ctype(ret), f"{name}: returns {ret}"
        assert [ctype(a) for a in args] == argtypes, f"{name}: arguments {args}"


def test_every_callback_type_of_the_header_has_its_ctypes_prototype():
    declared = header_callback_types()
    assert sorted(declared) == ["lbagent_check_fn", "lbagent_free_fn", "lbagent_log_fn"]
    for name, (ret, args) in declared.items():
        ours = ctype(name)
        assert ours._restype_ is ctype(ret), name
        assert list(ours._argtypes_) == [ctype(a) for a in args], name


def test_the_loaded_functions_carry_those_types():
    lib = _native.load()
    for name, (restype, argtypes) in _native.PROTOTYPES.items():
        function = getattr(lib, name)
        assert function.restype is restype, name
        assert function.argtypes == argtypes, name


def header_structures():
    """{name: body} for every structure the header defines, and None for the opaque ones."""
    text = header_text()
    defined = dict(re.findall(r"typedef struct (lbagent\w*) \{(.*?)\} \1;", text, re.S))
    opaque = re.findall(r"typedef struct (lbagent\w*) \1;", text)
    return {**defined, **{name: None for name in opaque}}


def structure_fields(body: str):
    """[(name, ctypes type)] of a structure body, in order."""
    fields = []
    for declaration in body.split(";"):
        words = declaration.split()
        if not words:
            continue
        name, c_type = words[-1], " ".join(words[:-1])
        array = re.match(r"(\w+)\[(\d+)\]$", name)
        if array:
            fields.append((array.group(1), ctype(c_type) * int(array.group(2))))
        else:
            fields.append((name, ctype(c_type)))
    return fields


def test_every_structure_of_the_header_matches_its_ctypes_class():
    declared = header_structures()
    assert {"lbagent", "lbagent_prober", "lbagent_status"} <= set(declared), declared
    for name, body in declared.items():
        assert hasattr(_native, name), f"struct {name} has no ctypes class in _native"
        ours = getattr(_native, name)
        assert issubclass(ours, ctypes.Structure), name
        if body is None:  # opaque: only pointers to it exist
            assert not getattr(ours, "_fields_", None), name
            continue
        fields = structure_fields(body)
        assert [n for n, _ in fields] == [n for n, _ in ours._fields_], name
        for (field, theirs), (_, mine) in zip(fields, ours._fields_):
            assert ctypes.sizeof(theirs) == ctypes.sizeof(mine), f"{name}.{field}"
            assert getattr(theirs, "_type_", theirs) == getattr(mine, "_type_", mine), \
                f"{name}.{field}"
    # The C layout (offsets and padding) follows from the same fields: check one by hand.
    result = _native.lbagent_probe_result
    assert (result.token.offset, result.result.offset, result.rtt_us.offset,
            result.status.offset) == (0, 8, 12, 16)


def header_enum(prefix: str):
    return {name: int(value) for name, value in
            re.findall(rf"\bLBAGENT_{prefix}(\w+) = (\d+)", header_text())}


def test_the_enums_match_the_header():
    assert {m.name: m.value for m in lbagent.State} == header_enum("STATE_")
    assert {m.name: m.value for m in lbagent.Reason} == header_enum("REASON_")
    assert {m.name: m.value for m in lbagent.Counter} == header_enum("COUNTER_")
    assert {m.name: m.value for m in lbagent.LogLevel} == header_enum("LOG_LEVEL_")
    results = {name: value for name, value in header_enum("").items()
               if name == "OK" or name.startswith("ERR_")}
    assert {m.name: m.value for m in lbagent.Result} == results


def test_every_error_code_has_its_own_exception_class():
    classes = set()
    for code in lbagent.Result:
        if code == lbagent.Result.OK:
            continue
        error = lbagent.errors.error_for(code, "detail")
        assert type(error) is not lbagent.Error, f"{code.name} has no class of its own"
        assert isinstance(error, lbagent.Error) and error.code is code and str(error) == "detail"
        assert type(error).__name__ in lbagent.__all__, type(error)
        assert f"LBAGENT_{code.name}:" in (type(error).__doc__ or ""), type(error)
        classes.add(type(error))
    assert len(classes) == len(lbagent.Result) - 1
    # A code newer than this package is still an Error, with its number.
    newer = lbagent.errors.error_for(999, "detail")
    assert type(newer) is lbagent.Error and newer.code == 999
    # Those that have a built-in counterpart are also that.
    assert isinstance(lbagent.errors.error_for(lbagent.Result.ERR_TIMEOUT, ""), TimeoutError)
    assert isinstance(lbagent.errors.error_for(lbagent.Result.ERR_REFUSED, ""),
                      ConnectionRefusedError)


def test_versions_agree():
    macro = re.search(r'#define LBAGENT_VERSION "([^"]+)"', HEADER.read_text()).group(1)
    assert lbagent.version() == macro == lbagent.__version__
    assert lbagent.strerror(lbagent.Result.ERR_STOPPED) == "agent stopped"
    assert lbagent.strerror(999) == "unknown result code"
    assert lbagent.state_name(lbagent.State.DRAIN) == "drain"
    assert lbagent.state_name(42) == "invalid"
    assert lbagent.reason_name(lbagent.Reason.START_TIMED_OUT) == "start-timed-out"
    assert lbagent.reason_name(lbagent.Reason.HOST) == "host"
    assert lbagent.reason_name(42) == "invalid"


# ---- Finding the library -----------------------------------------------------------------

LIBRARY = os.environ.get("LBAGENT_LIBRARY") or lbagent.library_path()

REPORT = """
import lbagent
try:
    agent = lbagent.Agent("listen=127.0.0.1:0")
except lbagent.LibraryNotFoundError as e:
    print("UNMONITORED", e)
else:
    print("LOADED", lbagent.library_path(), agent.port > 0)
    agent.close()
"""


def test_the_environment_variable_names_the_library():
    out = run_python(REPORT, {"LBAGENT_LIBRARY": LIBRARY, "LD_LIBRARY_PATH": None})
    assert out.stdout.split() == ["LOADED", LIBRARY, "True"], out


def test_a_wrong_explicit_path_is_an_error_without_falling_back(tmp_path):
    missing = str(tmp_path / "liblbagent.so.0")
    out = run_python(REPORT, {"LBAGENT_LIBRARY": missing})
    assert out.stdout.startswith("UNMONITORED lbagent: cannot load the library; tried "), out
    assert f"{missing} (LBAGENT_LIBRARY)" in out.stdout
    assert "system search path" not in out.stdout
    assert out.stdout.rstrip().endswith(
        "; fix LBAGENT_LIBRARY (the path of liblbagent.so.0), or unset it to search the system")


def test_a_library_that_is_not_lbagent_is_refused():
    out = run_python(REPORT, {"LBAGENT_LIBRARY": "libm.so.6"})
    assert "UNMONITORED" in out.stdout and "not lbagent" in out.stdout, out


def test_the_package_directory_is_searched(tmp_path):
    # A copy of the installed package with the library vendored next to its modules.
    package = tmp_path / "lbagent"
    shutil.copytree(Path(lbagent.__file__).parent, package)
    shutil.copy(LIBRARY, package / "liblbagent.so.0")
    out = run_python(REPORT, {"LBAGENT_LIBRARY": None, "PYTHONPATH": str(tmp_path),
                              "LD_LIBRARY_PATH": str(tmp_path / "empty")})
    assert out.stdout.split() == ["LOADED", str(package / "liblbagent.so.0"), "True"], out


def test_the_soname_is_found_through_the_system_search_path(tmp_path):
    # A package without a bundled library (test_bundle.py has the bundled one's order).
    (tmp_path / "liblbagent.so.0").symlink_to(LIBRARY)
    out = run_python(REPORT, {"LBAGENT_LIBRARY": None, "LD_LIBRARY_PATH": str(tmp_path),
                              "PYTHONPATH": unbundled_package(tmp_path)})
    assert out.stdout.split() == ["LOADED", "liblbagent.so.0", "True"], out


def test_without_the_library_import_works_and_agent_says_where_it_looked(tmp_path):
    out = run_python(REPORT, {"LBAGENT_LIBRARY": None, "LD_LIBRARY_PATH": str(tmp_path),
                              "PYTHONPATH": unbundled_package(tmp_path)})
    assert out.returncode == 0, out
    assert out.stdout.startswith("UNMONITORED lbagent: cannot load the library; tried "), out
    assert "liblbagent.so.0 (system search path)" in out.stdout
    # It says how to fix it.
    assert out.stdout.rstrip().endswith(
        "; to fix it, set LBAGENT_LIBRARY to the path of liblbagent.so.0 (make build puts it "
        "in build/lib/), or install it (make install) and run ldconfig, or add its directory "
        "to LD_LIBRARY_PATH"), out

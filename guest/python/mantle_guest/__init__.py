"""Write mantle guests in Python: handle one request, run granted models
through ``wasi:nn``, and answer.

A guest is a function from :class:`Request` to :class:`Response` (or to a
value encoded as JSON), exported with :func:`handler`::

    import mantle_guest as mg

    def handle(request: mg.Request) -> mg.Response:
        text = request.text()
        model = mg.Model.load("my-model")
        outputs = model.run({"input": mg.Tensor([1, 1], array("f", [len(text)]))})
        return mg.Response.json(outputs["output"].tolist())

    Handler = mg.handler(handle)

Build it with ``componentize-py -d wit -w guest componentize app -p
guest/python -o app.wasm`` (``wit`` and ``guest/python`` are this
repository's). componentize-py imports ``app`` once, at build time, and
the component starts every request from the memory that import left:
build tables and vocabularies at module level, and import every module
the handler uses at the top of the file. Nothing is importable later.

Files are readable only at build time, and only from the directories on
the module search path (the ``-p`` options): see :func:`build_file`. At
run time the guest has no files, no network and no environment.
"""

from __future__ import annotations

import array
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional, Union

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, errors, graph, tensor, types

__all__ = [
    "Error",
    "InvalidInput",
    "UnsupportedMediaType",
    "Internal",
    "Forbidden",
    "InferenceError",
    "Request",
    "Response",
    "TensorType",
    "Tensor",
    "Outputs",
    "Model",
    "Session",
    "LogLevel",
    "handler",
    "build_file",
    "config",
    "tenant_id",
    "module_id",
    "request_id",
    "log",
]

TensorType = tensor.TensorType
LogLevel = context.LogLevel

# What a handler may return: a response, or a value the node sends as JSON
# (dict, list), as UTF-8 text (str) or as bytes.
Answer = Union["Response", dict, list, str, bytes]


class Error(Exception):
    """Why a handler could not answer. Raise one of its subclasses; the node
    answers with its status and a JSON body ``{"error": message}``."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def _to_wit(self) -> types.Error:
        return types.Error_Internal(self.message)


class InvalidInput(Error):
    """The request cannot be handled as sent (400)."""

    status = 400

    def _to_wit(self) -> types.Error:
        return types.Error_InvalidInput(self.message)


class UnsupportedMediaType(Error):
    """The body is of a kind the handler does not accept (415)."""

    status = 415

    def _to_wit(self) -> types.Error:
        return types.Error_UnsupportedMediaType(self.message)


class Internal(Error):
    """The handler failed for a reason that is not the caller's (500)."""


class Forbidden(Error):
    """The caller may not have what it asked for, such as a model the module
    was not granted (403)."""

    status = 403

    def _to_wit(self) -> types.Error:
        return types.Error_Forbidden(self.message)


# The wasi:nn error codes as the WIT spells them.
_CODE_NAMES = {
    errors.ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    errors.ErrorCode.INVALID_ENCODING: "invalid-encoding",
    errors.ErrorCode.TIMEOUT: "timeout",
    errors.ErrorCode.RUNTIME_ERROR: "runtime-error",
    errors.ErrorCode.UNSUPPORTED_OPERATION: "unsupported-operation",
    errors.ErrorCode.TOO_LARGE: "too-large",
    errors.ErrorCode.NOT_FOUND: "not-found",
    errors.ErrorCode.SECURITY: "security",
    errors.ErrorCode.UNKNOWN: "unknown",
}


class InferenceError(Exception):
    """A ``wasi:nn`` call failed. Left unhandled, an error with code
    ``security`` (a model the module was not granted) answers 403 and any
    other 500."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        #: The error code as the WIT spells it: ``security``, ``not-found``...
        self.code = code
        self.message = message

    @classmethod
    def _from_host(cls, error: Err, doing: str) -> InferenceError:
        value = error.value
        if isinstance(value, errors.Error):
            return cls(_CODE_NAMES.get(value.code(), "unknown"), f"{doing}: {value.data()}")
        return cls("unknown", f"{doing}: {value!r}")


class Request:
    """One request: the path after the route prefix (``/`` when empty), the
    query without its ``?``, lower-case header names with raw byte values,
    and the body."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(
        self,
        method: str = "POST",
        path: str = "/",
        query: str = "",
        headers: Optional[list[tuple[str, bytes]]] = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else []
        self.body = body

    def header(self, name: str) -> Optional[bytes]:
        """The first value of header ``name`` (case-insensitive)."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def header_str(self, name: str) -> Optional[str]:
        """The first value of header ``name``, if it is valid UTF-8."""
        value = self.header(name)
        try:
            return None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def text(self) -> str:
        """The body as UTF-8 text, or :class:`InvalidInput`."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInput(f"the body is not valid UTF-8: {error}") from None

    def json(self) -> Any:
        """The body parsed as JSON, or :class:`InvalidInput`."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidInput(f"the body is not valid JSON: {error}") from None


class Response:
    """A status, headers (lower-case names) and a body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int = 200, body: Union[bytes, str] = b"", headers: Optional[list[tuple[str, bytes]]] = None) -> None:
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.headers = headers if headers is not None else []

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        """``value`` encoded as JSON, with its content type."""
        try:
            body = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise Internal(f"cannot encode the response as JSON: {error}") from None
        return cls(status, body).with_header("content-type", "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        """``text`` as UTF-8 plain text."""
        return cls(status, text).with_header("content-type", "text/plain; charset=utf-8")

    def with_header(self, name: str, value: Union[bytes, str]) -> Response:
        """Adds a header, and returns the response."""
        self.headers.append((name.lower(), value.encode("utf-8") if isinstance(value, str) else bytes(value)))
        return self

    def _to_wit(self) -> types.Response:
        return types.Response(self.status, self.headers, self.body)


# The element type of an `array.array` or `memoryview` by its format, and
# back; sizes are checked, as `l` and `i` differ between platforms.
_FORMATS = {
    ("f", 4): TensorType.FP32,
    ("d", 8): TensorType.FP64,
    ("e", 2): TensorType.FP16,
    ("B", 1): TensorType.U8,
    ("i", 4): TensorType.I32,
    ("l", 4): TensorType.I32,
    ("l", 8): TensorType.I64,
    ("q", 8): TensorType.I64,
}
_ELEMENT_BYTES = {
    TensorType.FP16: 2,
    TensorType.BF16: 2,
    TensorType.FP32: 4,
    TensorType.FP64: 8,
    TensorType.U8: 1,
    TensorType.I32: 4,
    TensorType.I64: 8,
}
_ARRAY_CODES = {
    TensorType.FP32: "f",
    TensorType.FP64: "d",
    TensorType.U8: "B",
    TensorType.I32: "i",
    TensorType.I64: "q",
}

TensorData = Union[bytes, bytearray, memoryview, array.array]


class Tensor:
    """A tensor: its shape, element type and little-endian bytes in
    row-major order.

    ``data`` is an ``array.array`` (``f``, ``d``, ``B``, ``i`` or ``q``), a
    typed ``memoryview``, or raw bytes with ``dtype``; the type of an array
    or a view is read from it."""

    __slots__ = ("shape", "dtype", "data")

    def __init__(self, shape: Iterable[int], data: TensorData, dtype: Optional[TensorType] = None) -> None:
        self.shape = [int(d) for d in shape]
        if isinstance(data, array.array):
            found = _FORMATS.get((data.typecode, data.itemsize))
            if found is None:
                raise TypeError(f"an array of typecode {data.typecode!r} is no tensor element type")
            raw = data.tobytes()
        elif isinstance(data, memoryview):
            # A view of plain bytes (format `B`) is raw bytes, as `bytes` is.
            fmt = data.format.lstrip("<@=")
            found = None if fmt in ("B", "b", "c") else _FORMATS.get((fmt, data.itemsize))
            if found is None and fmt not in ("B", "b", "c"):
                raise TypeError(f"a memoryview of format {data.format!r} is no tensor element type")
            raw = data.tobytes()
        elif isinstance(data, (bytes, bytearray)):
            found = None
            raw = bytes(data)
        else:
            raise TypeError(f"tensor data must be bytes, an array.array or a memoryview, not {type(data).__name__}")
        if dtype is None:
            if found is None:
                raise TypeError("raw bytes have no element type: pass dtype=TensorType.…")
            dtype = found
        elif found is not None and found != dtype:
            raise TypeError(f"the data holds {found.name}, not {dtype.name}")
        count = 1
        for d in self.shape:
            if d < 0:
                raise ValueError(f"a tensor's dimensions cannot be negative: {self.shape}")
            count *= d
        if len(raw) != count * _ELEMENT_BYTES[dtype]:
            raise ValueError(
                f"shape {self.shape} of {dtype.name} takes {count * _ELEMENT_BYTES[dtype]} bytes, "
                f"and the data has {len(raw)}"
            )
        self.dtype = dtype
        self.data = raw

    def to_array(self) -> array.array:
        """The elements as an ``array.array`` of the matching type."""
        code = _ARRAY_CODES.get(self.dtype)
        if code is None:
            raise TypeError(f"{self.dtype.name} has no array.array type: read .data, or use .tolist()")
        values = array.array(code)
        values.frombytes(self.data)
        return values

    def tolist(self) -> list:
        """The elements as a flat list of Python numbers."""
        if self.dtype == TensorType.FP16:
            return memoryview(self.data).cast("e").tolist()
        if self.dtype == TensorType.BF16:
            # A bfloat16 is the upper half of a float32.
            widened = bytearray(len(self.data) * 2)
            widened[2::4] = self.data[0::2]
            widened[3::4] = self.data[1::2]
            return memoryview(bytes(widened)).cast("f").tolist()
        return self.to_array().tolist()

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype.name}, {len(self.data)} bytes)"

    def _to_wit(self) -> tensor.Tensor:
        return tensor.Tensor(self.shape, self.dtype, self.data)

    @classmethod
    def _from_wit(cls, value: tensor.Tensor) -> Tensor:
        made = cls.__new__(cls)
        made.shape = list(value.dimensions())
        made.dtype = value.ty()
        made.data = value.data()
        return made


class Outputs(Mapping[str, Tensor]):
    """The named outputs of one run, in the model's order."""

    def __init__(self, model: str, tensors: list[tuple[str, Tensor]]) -> None:
        self._model = model
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise InferenceError(
                "invalid-argument", f"model `{self._model}` has no output `{name}` (it has {list(self._tensors)})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


Inputs = Union[Mapping[str, Tensor], Iterable[tuple[str, Tensor]]]


class Session:
    """An execution context on one model, for a series of runs."""

    def __init__(self, model: str, execution: Any) -> None:
        self._model = model
        self._execution = execution

    def run(self, inputs: Inputs) -> Outputs:
        """Runs the model on named inputs."""
        pairs = inputs.items() if isinstance(inputs, Mapping) else inputs
        wit_inputs = [(name, value._to_wit()) for name, value in pairs]
        try:
            outputs = self._execution.compute(wit_inputs)
        except Err as error:
            raise InferenceError._from_host(error, f"running `{self._model}`") from None
        return Outputs(self._model, [(name, Tensor._from_wit(value)) for name, value in outputs])


class Model:
    """A model this module was granted, loaded by name."""

    def __init__(self, name: str, loaded: Any) -> None:
        self.name = name
        self._graph = loaded

    @classmethod
    def load(cls, name: str) -> Model:
        """Loads the granted model ``name`` (or ``name@version``)."""
        try:
            return cls(name, graph.load_by_name(name))
        except Err as error:
            raise InferenceError._from_host(error, f"loading model `{name}`") from None

    def session(self) -> Session:
        """A session for a series of runs, e.g. frame by frame."""
        try:
            return Session(self.name, self._graph.init_execution_context())
        except Err as error:
            raise InferenceError._from_host(error, f"starting a session on `{self.name}`") from None

    def run(self, inputs: Inputs) -> Outputs:
        """Runs the model once on named inputs."""
        return self.session().run(inputs)


def config(key: str) -> Optional[str]:
    """A configuration value the operator set for this module."""
    return context.config_get(key)


def tenant_id() -> str:
    """The tenant this request is charged to."""
    return context.tenant_id()


def module_id() -> str:
    """The module being run, as the operator named it."""
    return context.module_id()


def request_id() -> str:
    """The unique id of this request, as it appears in the node's log."""
    return context.request_id()


def log(level: LogLevel, message: str) -> None:
    """Writes one line to the node's log, tagged with tenant and module."""
    context.log(level, message)


def build_file(name: str) -> bytes:
    """The bytes of the file ``name`` from the first directory of the module
    search path that has it. Only at build time, at module level: the
    component has no files when it serves. Put the file's directory on the
    path with ``componentize-py … -p DIR``."""
    for directory in sys.path:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as file:
                return file.read()
    raise FileNotFoundError(f"{name} is in no directory of the module search path (add it with -p DIR)")


def _answer(value: Answer) -> types.Response:
    if isinstance(value, Response):
        return value._to_wit()
    if isinstance(value, (dict, list)):
        return Response.json(value)._to_wit()
    if isinstance(value, str):
        return Response.text(value)._to_wit()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(200, bytes(value)).with_header("content-type", "application/octet-stream")._to_wit()
    raise Internal(f"the handler returned {type(value).__name__}, not a Response, dict, list, str or bytes")


def handler(function: Callable[[Request], Answer]) -> type:
    """The class componentize-py exports as the handler, calling
    ``function`` for each request. Assign it to ``Handler`` at module level
    of the app: ``Handler = mantle_guest.handler(handle)``.

    An :class:`Error` raised by ``function`` answers with its status; an
    :class:`InferenceError` with 403 (``security``) or 500; any other
    exception with 500, its traceback going to the node's log. A
    ``MemoryError`` is not caught: the guest stops, and the node says its
    memory limit was reached."""

    class Handler(exports.Handler):
        def handle(self, request: types.Request) -> types.Response:
            wrapped = Request(request.method, request.path, request.query, request.headers, request.body)
            try:
                return _answer(function(wrapped))
            except MemoryError:
                raise
            except Error as error:
                raise Err(error._to_wit()) from None
            except InferenceError as error:
                wit = types.Error_Forbidden if error.code == "security" else types.Error_Internal
                raise Err(wit(str(error))) from None
            except Exception as error:  # noqa: BLE001: every other failure is the handler's own
                context.log(LogLevel.ERROR, "".join(traceback.format_exception(error)))
                raise Err(types.Error_Internal(f"{type(error).__name__}: {error}")) from None

    Handler.__name__ = Handler.__qualname__ = "Handler"
    Handler.__doc__ = f"Exports {getattr(function, '__name__', 'the handler')} as mantle:edge/handler."
    return Handler

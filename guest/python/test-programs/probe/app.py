"""A Python guest that does what its path says: answer, fail in each way
the SDK maps to a status, or misbehave (loop, eat memory, answer too much),
so that tests can see what the node makes of it."""

from array import array
from urllib.parse import parse_qs

import mantle_guest as mg

# Made at build time, when componentize-py imports this module: every
# request starts from a memory that has it.
STARTED = {"requests": 0}


def handle(request: mg.Request):
    query = {key: values[-1] for key, values in parse_qs(request.query).items()}
    STARTED["requests"] += 1
    path = request.path
    if path == "/whoami":
        return {
            "tenant": mg.tenant_id(),
            "module": mg.module_id(),
            "request_id": mg.request_id(),
            "greeting": mg.config("greeting"),
            "requests": STARTED["requests"],
            "body": request.text(),
        }
    if path == "/invalid":
        raise mg.InvalidInput("this input will not do")
    if path == "/media":
        raise mg.UnsupportedMediaType("send text/plain")
    if path == "/raise":
        raise ValueError("the handler fell over")
    if path == "/model":
        # Runs the model named in the query on zeros of the shape it asks
        # for: a granted model answers, any other is refused by the host.
        name = query.get("name", "")
        shape = [int(d) for d in query.get("shape", "1").split(",")]
        count = 1
        for d in shape:
            count *= d
        outputs = mg.Model.load(name).run({query.get("input", "input"): mg.Tensor(shape, array("f", bytes(4 * count)))})
        return {name: {"shape": tensor.shape, "dtype": tensor.dtype.name} for name, tensor in outputs.items()}
    if path == "/loop":
        while True:
            pass
    if path == "/memory":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if path == "/respond":
        return bytes(int(query.get("mib", "1")) << 20)
    raise mg.InvalidInput(f"no such path: {path}")


Handler = mg.handler(handle)

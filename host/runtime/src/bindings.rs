//! Host bindings generated from the `mantle:edge/guest` world in `wit/`.
//! The one `bindgen!` of the host: `wasi:nn` resources map to the host's own
//! types in `crate::nn`, and only `compute` is async, because it waits for
//! the inference pool.

wasmtime::component::bindgen!({
    world: "guest",
    path: "../../wit",
    with: {
        "wasi:nn/tensor.tensor": crate::nn::NnTensor,
        "wasi:nn/graph.graph": crate::nn::NnGraph,
        "wasi:nn/inference.graph-execution-context": crate::nn::NnSession,
        "wasi:nn/errors.error": crate::nn::NnError,
    },
    imports: {
        "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

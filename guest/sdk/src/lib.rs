//! Write mantle guests: handle one request, run granted models through
//! `wasi:nn`, and answer.
//!
//! A guest is a function from [`Request`] to [`Response`], exported with
//! [`handler!`]:
//!
//! ```ignore
//! use mantle_guest::{Error, Model, Request, Response, Tensor};
//!
//! fn handle(request: Request) -> Result<Response, Error> {
//!     let text = request.text()?;
//!     let model = Model::load("my-model")?;
//!     let outputs = model.run([("input", Tensor::from_slice(&[1, 1], &[text.len() as f32]))])?;
//!     Response::json(&outputs.get("output")?.to_vec::<f32>()?)
//! }
//!
//! mantle_guest::handler!(handle);
//! ```

/// The bindings generated from the `mantle:edge/guest` world. Everything a
/// handler needs is re-exported at the crate root; reach in here only for
/// the raw `wasi:nn` interfaces.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "guest",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "mantle_guest::bindings",
        generate_all,
    });
}

pub mod host;
mod http;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
mod nn;

pub use bindings::mantle::edge::types::{Error, Headers, Request, Response};
pub use nn::{Element, ErrorCode, InferenceError, Model, Outputs, Session, Tensor, TensorType};

/// Exports `handle`, a `fn(Request) -> Result<Response, Error>`, as this
/// component's handler. A native build (see [`native`]) exports nothing:
/// the program it is linked into calls the handler directly.
#[macro_export]
macro_rules! handler {
    ($handle:path) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct MantleGuestHandler;

            impl $crate::bindings::exports::mantle::edge::handler::Guest for MantleGuestHandler {
                fn handle(request: $crate::Request) -> ::core::result::Result<$crate::Response, $crate::Error> {
                    $handle(request)
                }
            }

    $crate::bindings::export!(MantleGuestHandler with_types_in $crate::bindings);
        };
    };
}

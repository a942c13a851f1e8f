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
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

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

/// Exports `init`, a `fn()`, as this component's initializer: the node
/// runs it once, when it compiles the module, and every request's fresh
/// instance starts from the memory it left. Build what every request
/// needs there (a tokenizer, a table) into a `static`, such as a
/// [`std::sync::LazyLock`] that `init` forces:
///
/// ```ignore
/// static VOCABULARY: LazyLock<Vocabulary> = LazyLock::new(Vocabulary::parse);
///
/// fn warm() {
///     LazyLock::force(&VOCABULARY);
/// }
///
/// mantle_guest::init!(warm);
/// ```
///
/// The initializer runs for no tenant and no request: `context` answers
/// with empty values and no model can be loaded. It must not keep
/// handles the host gave it (a tensor, a graph) past its return. A node
/// that does not pre-initialize, and a native build, never call it: the
/// statics then fill in on first use, and the answers are the same.
#[macro_export]
macro_rules! init {
    ($init:path) => {
        // Natively too, so that `init` is checked to be a `fn()`.
        #[doc(hidden)]
        #[allow(dead_code)]
        static __MANTLE_GUEST_INIT: fn() = $init;

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __mantle_guest_init {
            // Its own package, so that a guest without an initializer
            // exports none: the node pre-initializes only guests that ask.
            $crate::__private::wit_bindgen::generate!({
                inline: "
                    package mantle:init@0.1.0;

                    interface initializer {
                        /// Runs once, before the memory is snapshotted.
                        initialize: func();
                    }

                    world initialized {
                        export initializer;
                    }
                ",
                runtime_path: "mantle_guest::__private::wit_bindgen::rt",
            });

            struct MantleGuestInit;

            impl exports::mantle::init::initializer::Guest for MantleGuestInit {
                fn initialize() {
                    (super::__MANTLE_GUEST_INIT)()
                }
            }

            export!(MantleGuestInit);
        }
    };
}

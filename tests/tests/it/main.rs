//! mantle's integration tests: one binary, a module per area. Every test
//! runs real components on real models.

mod bad_input;
mod batching;
mod browser;
mod bundle;
mod cli;
mod deploy;
mod fleet;
mod follow;
mod hostile;
mod hostile_node;
mod http_proxy;
mod image_classify;
mod initialize;
mod isolation;
mod kubernetes;
mod languages;
mod layers;
mod ocr;
mod registry;
mod resample;
mod serve;
mod speech_detect;
mod tensor_types;
mod text_embed;
mod tls;

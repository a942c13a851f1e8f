//! A KServe V2 inference request body, JSON or JSON followed by binary
//! tensors: any bytes give the request and its tensors, each exactly as
//! long as its shape says, or a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mantle::server::kserve::wire::parse_request;

fuzz_target!(|input: &[u8]| {
    // The first byte says whether an `Inference-Header-Content-Length`
    // header was sent, and the next two give its value.
    let (header, body) = match input {
        [flag, high, low, body @ ..] if flag & 1 == 1 => (Some(u16::from_be_bytes([*high, *low]).to_string()), body),
        [_, body @ ..] => (None, body),
        [] => (None, input),
    };
    if let Ok((_, inputs)) = parse_request(body, header.as_deref()) {
        for (name, tensor) in inputs {
            assert!(tensor.check_data_len().is_ok(), "input `{name}` was decoded with the wrong length");
        }
    }
});

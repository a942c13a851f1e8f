//! A tensor as a guest or a client describes it (element type, shape and
//! raw bytes) on its way into tract and back: refused when the bytes do not
//! fit the shape, otherwise unchanged by the round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mantle::models::{ElementType, HostTensor};
use mantle::server::kserve::wire::decode_json;

const TYPES: [ElementType; 6] =
    [ElementType::F16, ElementType::F32, ElementType::F64, ElementType::U8, ElementType::I32, ElementType::I64];

fuzz_target!(|input: &[u8]| {
    let [kind, rank, rest @ ..] = input else { return };
    let element_type = TYPES[usize::from(*kind) % TYPES.len()];
    let rank = usize::from(*rank % 8).min(rest.len());
    // Dimensions of one byte each, scaled so a few can overflow.
    let (dims, data) = rest.split_at(rank);
    let shape: Vec<usize> =
        dims.iter().map(|&d| if d >= 0xf0 { usize::MAX >> (d - 0xf0) } else { usize::from(d) }).collect();
    let tensor = HostTensor { element_type, shape, data: data.to_vec() };
    let fits = tensor.check_data_len().is_ok();
    match tensor.clone().into_tract() {
        Ok(converted) => {
            assert!(fits, "tract took data that does not fit its shape");
            let back = HostTensor::from_tract(&converted).expect("a host element type converts back");
            assert_eq!(back, tensor);
            let json = decode_json(&back);
            assert_eq!(json.as_array().map(Vec::len), Some(back.data.len() / element_type.size()));
        }
        Err(_) => assert!(!fits, "a tensor that fits was refused"),
    }
});

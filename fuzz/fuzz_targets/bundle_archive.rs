//! A packed bundle as uploaded to a node: any bytes are a bundle whose
//! files all match its index, or a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mantle::bundle::Bundle;

fuzz_target!(|input: &[u8]| {
    if let Ok(bundle) = Bundle::unpack(input) {
        // What was accepted packs again and reads back the same.
        let packed = bundle.pack(None).expect("an accepted bundle packs");
        let again = Bundle::unpack(&packed).expect("a packed bundle unpacks");
        assert!(again.files().eq(bundle.files()));
    }
});

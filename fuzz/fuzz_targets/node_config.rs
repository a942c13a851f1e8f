//! A node configuration file: any text is a configuration or a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mantle_manifest::node::NodeConfig;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = NodeConfig::parse(text, Path::new("/etc/mantle"));
    }
});

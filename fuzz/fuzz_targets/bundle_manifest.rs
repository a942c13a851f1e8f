//! A bundle's `mantle.toml`: any text is a manifest whose every file path
//! stays inside the bundle, or a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mantle_manifest::bundle::BundleManifest;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input)
        && let Ok(manifest) = BundleManifest::parse(text)
    {
        for path in manifest.files() {
            let path = path.as_str();
            assert!(!path.starts_with('/') && !path.split('/').any(|part| part == ".." || part.is_empty()), "{path}");
        }
    }
});

//! Builds the example guests and embeds them in the `mantle` binary, so that
//! `mantle demo` works with no configuration.

include!("../guest/build_support.rs");

const EXAMPLES: [&str; 3] = ["image-classify", "text-embed", "speech-detect"];

/// Files outside the guest tree that the examples embed.
const EMBEDDED_DATA: [&str; 2] = ["models/efficientnet-lite0/labels.json", "models/minilm-l6/tokenizer.json"];

fn main() {
    for file in EMBEDDED_DATA {
        println!("cargo:rerun-if-changed=../{file}");
    }
    let paths = build_guests(&EXAMPLES);
    write_constants("example_guests.rs", &EXAMPLES, &paths, |path| format!("&[u8] = include_bytes!({path:?})"));
}

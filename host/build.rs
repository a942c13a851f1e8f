//! Builds the example guests and embeds them in the `mantle` binary, so that
//! `mantle demo` works with no configuration.

include!("../guest/build_support.rs");

const EXAMPLES: [&str; 3] = ["image-classify", "text-embed", "speech-detect"];

fn main() {
    let paths = build_guests(&EXAMPLES);
    let mut code = String::new();
    for (name, path) in EXAMPLES.iter().zip(paths) {
        let constant = name.to_uppercase().replace('-', "_");
        code.push_str(&format!("pub const {constant}: &[u8] = include_bytes!({:?});\n", path.display().to_string()));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("example_guests.rs"), code).expect("cannot write example_guests.rs");
}

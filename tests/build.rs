//! Builds the test-program guests and writes a constant with the path of
//! each, so that the tests load real components.

include!("../guest/build_support.rs");

const TEST_PROGRAMS: [&str; 5] = ["echo", "loop-forever", "memory-bomb", "nn-probe", "sandbox-probe"];

fn main() {
    let paths = build_guests(&TEST_PROGRAMS);
    let mut code = String::new();
    for (name, path) in TEST_PROGRAMS.iter().zip(paths) {
        let constant = name.to_uppercase().replace('-', "_");
        code.push_str(&format!("pub const {constant}: &str = {:?};\n", path.display().to_string()));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("test_programs.rs"), code).expect("cannot write test_programs.rs");
}

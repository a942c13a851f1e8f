//! Builds the test-program guests and writes a constant with the path of
//! each, so that the tests load real components.

include!("../guest/build_support.rs");

const TEST_PROGRAMS: [&str; 13] = [
    "echo",
    "hostile",
    "http-proxy",
    "init-endless",
    "init-panic",
    "init-probe",
    "loop-forever",
    "memory-bomb",
    "nn-probe",
    "sandbox-probe",
    "sleep-forever",
    "tensor-probe",
    "wasi-command",
];

fn main() {
    let paths = build_guests(&TEST_PROGRAMS);
    write_constants("test_programs.rs", &TEST_PROGRAMS, &paths, |path| format!("&str = {path:?}"));
}

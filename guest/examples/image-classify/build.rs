//! Turns the model's label list into a constant table, so that a request,
//! which runs in a fresh instance, does not parse 1000 labels of JSON.

use std::collections::BTreeMap;
use std::path::Path;

const LABELS: &str = "../../../models/efficientnet-lite0/labels.json";

fn main() {
    println!("cargo::rerun-if-changed={LABELS}");
    let text = std::fs::read_to_string(LABELS).unwrap_or_else(|e| panic!("reading {LABELS}: {e}"));
    let by_index: BTreeMap<usize, String> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{LABELS} is not a map of index to label: {e}"));
    let expected: Vec<usize> = (0..by_index.len()).collect();
    assert!(by_index.keys().copied().eq(expected), "{LABELS} must number its labels 0, 1, 2, ...");
    // "tiger cat" from "tiger cat", "tabby" from "tabby, tabby cat".
    let short: Vec<&str> = by_index.values().map(|l| l.split(',').next().unwrap_or(l).trim()).collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("labels.rs");
    let table = format!("/// ImageNet-1k class names by index.\nconst LABELS: [&str; {}] = {short:?};\n", short.len());
    std::fs::write(&out, table).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

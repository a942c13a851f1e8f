//! Every wasi:nn tensor type mantle supports, carried from a guest through
//! tract and back, checked against the ONNX project's own conformance data
//! (`tests/data/onnx-node/`, from onnx==1.17.0).

use mantle::models::{LoadOptions, Model};
use mantle::runtime::ModuleLimits;
use mantle_tests::{node, post, programs, repo_root};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

fn onnx_node_cases() -> Vec<Value> {
    let path = repo_root().join("tests/data/onnx-node/cases.json");
    let cases: Value = serde_json::from_slice(&std::fs::read(&path).expect("cases.json is committed")).expect("JSON");
    cases["cases"].as_array().expect("cases").clone()
}

#[tokio::test]
async fn each_tensor_type_round_trips_through_a_model() {
    let node = node();
    let cases = onnx_node_cases();
    let mut grants = BTreeMap::new();
    for case in &cases {
        let test = case["test"].as_str().expect("test name");
        let path = repo_root().join("tests/data/onnx-node").join(test).join("model.onnx");
        grants.insert(
            test.to_owned(),
            Arc::new(Model::load(test, &path, &LoadOptions::default()).expect("the ONNX test model loads")),
        );
    }
    let probe = node.program_granted(programs::TENSOR_PROBE, "tenant-types", grants, ModuleLimits::default());

    let mut types_seen = Vec::new();
    for case in &cases {
        let call = json!({ "model": case["test"], "inputs": case["inputs"] });
        let answer = node.call_json(&probe, post(serde_json::to_vec(&call).expect("JSON"))).await;
        let expected = &case["outputs"][0];
        let actual = &answer["outputs"][0];
        for field in ["name", "type", "dims", "data_hex"] {
            assert_eq!(actual[field], expected[field], "{}: output {field}", case["test"]);
        }
        types_seen.push(expected["type"].as_str().expect("a type").to_owned());
    }
    types_seen.sort();
    assert_eq!(types_seen, ["FP16", "FP32", "FP64", "I32", "I64", "U8"]);
}

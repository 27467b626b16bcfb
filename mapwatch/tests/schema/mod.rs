//! The JSON report checked against its published schema, docs/report.schema.json.
use serde_json::Value;

pub fn assert_valid_report(report: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/report.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the report schema"))
            .expect("the report schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the report schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the JSON report does not match docs/report.schema.json:\n{}",
        errors.join("\n")
    );
}

"""Validate Prometheus Operator custom resources against their CRDs' openAPIV3Schema.

Usage: validate.py CRD_DIR MANIFEST...

kubernetes-validate has schemas for core Kubernetes objects only. This checks every
document of the manifests whose apiVersion belongs to a CRD in CRD_DIR, strictly:
besides the schema's own rules, an object that lists its properties rejects unknown
ones (as `kubectl apply --validate=strict` would), unless the schema preserves unknown
fields. Run by `cargo xtask deploy-check` with the venv it installs (jsonschema and
PyYAML come with kubernetes-validate).
"""
import copy
import pathlib
import sys

import jsonschema
import yaml


def strict(schema):
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds(crd_dir):
    schemas = {}
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                api_version = f"{group}/{version['name']}"
                schemas[(api_version, kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_crds(argv[1])
    groups = {api_version.split("/")[0] for api_version, _ in schemas}
    failures = 0
    checked = 0
    for manifest in argv[2:]:
        for doc in yaml.safe_load_all(pathlib.Path(manifest).read_text()):
            if not doc:
                continue
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            if api_version.split("/")[0] not in groups:
                continue
            name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
            schema = schemas.get((api_version, kind))
            if schema is None:
                print(f"ERROR {manifest}: {name}: no CRD for {api_version} {kind}")
                failures += 1
                continue
            validator = jsonschema.Draft7Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            for error in errors:
                path = ".".join(str(p) for p in error.path) or "(root)"
                print(f"ERROR {manifest}: {name}: {path}: {error.message}")
            failures += len(errors)
            checked += 1
    if checked == 0:
        print("ERROR: no custom resource of a known CRD in the manifests")
        return 1
    if failures:
        return 1
    print(f"    {checked} custom resources valid against the CRD schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

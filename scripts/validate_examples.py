#!/usr/bin/env python3
"""Validate the example resources against the generated CRDs, offline.

Usage: validate_examples.py [--crds DIR] [--examples DIR]

Each document of `docs/examples/*.yaml` must be accepted, and each document of
`docs/examples/invalid/*.yaml` must be rejected, by what the Kubernetes API server would do
with the CRD of its kind (from `crds/`):

* structural defaulting (`default`) before validation, as the API server does on create;
* the `openAPIV3Schema` mapped to JSON Schema: `nullable`, `x-kubernetes-int-or-string`,
  `x-kubernetes-preserve-unknown-fields`, int32/int64 bounds, and unknown fields rejected
  wherever the schema lists `properties` (what strict field validation / pruning does);
* the `x-kubernetes-validations` CEL rules (cel-python), for rules that do not use `oldSelf`
  (transition rules need an old object; scripts/test_cel_rules.py covers those).

An invalid example names the error it must fail with in the annotation
`keystead.io/expect-error` (a case-insensitive substring of one of the messages), so a
negative example cannot pass by failing for an unrelated reason.

Exit status: 0 when every valid example passes and every invalid one fails as expected.
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import jsonschema
import yaml

try:
    import celpy
    from celpy import celtypes
except ImportError:  # pragma: no cover - reported at run time
    celpy = None  # type: ignore[assignment]

EXPECT_ANNOTATION = "keystead.io/expect-error"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


# ------------------------------------------------------------------------------------------
# CRDs
# ------------------------------------------------------------------------------------------


@dataclass
class Crd:
    group: str
    kind: str
    version: str
    schema: dict  # the openAPIV3Schema as written in the CRD
    path: str


def load_crds(crd_dir: str) -> dict[tuple[str, str], Crd]:
    """Map (apiVersion, kind) to the CRD version's schema, for every served version."""
    crds: dict[tuple[str, str], Crd] = {}
    files = sorted(glob.glob(os.path.join(crd_dir, "*.yaml")))
    if not files:
        raise SystemExit(f"no CRD files in {crd_dir}; run `keystead-operator crdgen --out crds`")
    for path in files:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = version["schema"]["openAPIV3Schema"]
                    api_version = f"{spec['group']}/{version['name']}"
                    crds[(api_version, spec["names"]["kind"])] = Crd(
                        spec["group"], spec["names"]["kind"], version["name"], schema, path
                    )
    return crds


# ------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema
# ------------------------------------------------------------------------------------------


def to_json_schema(node: dict, root: bool = False) -> dict:
    """Translate one structural-schema node (recursively) into JSON Schema (draft 7)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out["properties"] = {k: to_json_schema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = to_json_schema(value)
        elif key == "additionalProperties":
            out["additionalProperties"] = (
                to_json_schema(value) if isinstance(value, dict) else value
            )
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(v) for v in value]
        elif key == "not":
            out["not"] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in (
            "nullable",
            "default",
            "description",
            "format",
            "example",
            "externalDocs",
        ):
            continue  # handled below, or annotations only
        else:
            out[key] = value

    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]

    fmt = node.get("format")
    if out.get("type") == "integer" and fmt in ("int32", "int64"):
        low, high = INT32 if fmt == "int32" else INT64
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)

    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True

    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})

    if root:
        # The API server always accepts these at the root of a custom resource.
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault(
            "metadata",
            {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                    },
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
        )

    # Unknown fields: rejected where the schema lists properties and does not preserve them.
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False

    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"]
            if "null" not in out["type"]:
                out["type"] = list(out["type"]) + ["null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = list(out["enum"]) + [None]
        if "anyOf" in out:
            out["anyOf"] = list(out["anyOf"]) + [{"type": "null"}]
    return out


def apply_defaults(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields with a `default` get
    it, recursively (defaults are themselves defaulted)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value and value[name] is not None:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in props and value[name] is not None:
                    value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) if v is not None else v for v in value]
    return value


# ------------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations)
# ------------------------------------------------------------------------------------------


@dataclass
class CelRule:
    path: str
    rule: str
    message: str
    schema: dict


def _cel_program(rule: str, _cache: dict = {}):  # noqa: B006 - deliberate memo
    if rule not in _cache:
        env = celpy.Environment()
        _cache[rule] = env.program(env.compile(rule))
    return _cache[rule]


def uses_old_self(rule: str) -> bool:
    return "oldSelf" in rule


def iter_rule_sites(
    schema: dict, new: Any, old: Any, path: str = ""
) -> Iterator[tuple[str, dict, Any, Any]]:
    """Yield (path, schema node, new value, old value or None) for every node of `new` whose
    schema carries x-kubernetes-validations. Old values are correlated through object
    properties only (as the API server does for lists that are not listType=map)."""
    if new is None:
        return
    if schema.get("x-kubernetes-validations"):
        yield path or ".", schema, new, old
    if isinstance(new, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in new:
                old_child = old.get(name) if isinstance(old, dict) else None
                yield from iter_rule_sites(sub, new[name], old_child, f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, child in new.items():
                if name not in props:
                    old_child = old.get(name) if isinstance(old, dict) else None
                    yield from iter_rule_sites(extra, child, old_child, f"{path}.{name}")
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(new):
            yield from iter_rule_sites(schema["items"], child, None, f"{path}[{i}]")


def cel_errors(schema: dict, new: Any, old: Any = None) -> list[str]:
    """Evaluate every CEL rule of `schema` on the object `new` (an update from `old` when it
    is given). Returns the failure messages, with their paths."""
    if celpy is None:
        return ["cel-python is not installed in this interpreter; run scripts/install-tools.sh"]
    errors = []
    for path, node, value, old_value in iter_rule_sites(schema, new, old):
        for entry in node["x-kubernetes-validations"]:
            rule = entry["rule"]
            message = entry.get("message") or f"failed rule: {rule}"
            activation = {"self": celpy.json_to_cel(value)}
            if uses_old_self(rule):
                if old_value is None:
                    continue  # transition rules only run on updates where the field existed
                activation["oldSelf"] = celpy.json_to_cel(old_value)
            try:
                result = _cel_program(rule).evaluate(activation)
            except Exception as exc:  # celpy raises several types; any is a rejection
                errors.append(f"{path}: rule {rule!r} could not be evaluated: {exc}")
                continue
            if not (isinstance(result, (bool, celtypes.BoolType)) and bool(result)):
                errors.append(f"{path}: {message}")
    return errors


# ------------------------------------------------------------------------------------------
# Validation of one document
# ------------------------------------------------------------------------------------------


class Validator:
    def __init__(self, crd_dir: str):
        self.crds = load_crds(crd_dir)
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}

    def crd_for(self, doc: dict) -> Crd | None:
        return self.crds.get((doc.get("apiVersion"), doc.get("kind")))

    def errors(self, doc: Any, old: Any = None) -> list[str]:
        """Everything the API server would reject in `doc` (an update of `old` if given)."""
        if not isinstance(doc, dict):
            return ["document is not a YAML mapping"]
        crd = self.crd_for(doc)
        if crd is None:
            known = ", ".join(sorted(f"{k[1]} ({k[0]})" for k in self.crds))
            return [
                f"no CRD for apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}; "
                f"known: {known}"
            ]
        key = (crd.group + "/" + crd.version, crd.kind)
        if key not in self._validators:
            js = to_json_schema(crd.schema, root=True)
            jsonschema.Draft7Validator.check_schema(js)
            self._validators[key] = jsonschema.Draft7Validator(js)
        defaulted = apply_defaults(crd.schema, copy.deepcopy(doc))
        old_defaulted = (
            apply_defaults(crd.schema, copy.deepcopy(old)) if old is not None else None
        )
        errs = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
            for e in sorted(self._validators[key].iter_errors(defaulted), key=str)
        ]
        if not errs:  # the API server runs CEL only on schema-valid objects
            errs += cel_errors(crd.schema, defaulted, old_defaulted)
        return errs


def load_documents(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def describe(doc: Any) -> str:
    if isinstance(doc, dict):
        name = (doc.get("metadata") or {}).get("name", "?")
        return f"{doc.get('kind', '?')}/{name}"
    return "?"


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", default=os.path.join(repo, "crds"))
    parser.add_argument("--examples", default=os.path.join(repo, "docs", "examples"))
    args = parser.parse_args(argv)

    validator = Validator(args.crds)
    failures = 0
    checked = 0

    valid_files = sorted(glob.glob(os.path.join(args.examples, "*.yaml")))
    invalid_files = sorted(glob.glob(os.path.join(args.examples, "invalid", "*.yaml")))
    if not valid_files:
        print(f"FAIL no examples found in {args.examples}")
        return 1
    if not invalid_files:
        print(f"FAIL no negative examples found in {args.examples}/invalid")
        return 1

    kinds_seen = set()
    for path in valid_files:
        rel = os.path.relpath(path, repo)
        for doc in load_documents(path):
            checked += 1
            errs = validator.errors(doc)
            if errs:
                failures += 1
                print(f"FAIL {rel} {describe(doc)} must be valid but is rejected:")
                for e in errs:
                    print(f"       {e}")
            else:
                kinds_seen.add(doc.get("kind"))
                print(f"ok   {rel} {describe(doc)}")

    missing = sorted({k[1] for k in validator.crds} - kinds_seen)
    if missing:
        failures += 1
        print(f"FAIL no valid example for kind(s): {', '.join(missing)}")

    for path in invalid_files:
        rel = os.path.relpath(path, repo)
        for doc in load_documents(path):
            checked += 1
            expect = ((doc.get("metadata") or {}).get("annotations") or {}).get(
                EXPECT_ANNOTATION
            ) if isinstance(doc, dict) else None
            if not expect:
                failures += 1
                print(f"FAIL {rel} {describe(doc)} has no {EXPECT_ANNOTATION} annotation")
                continue
            errs = validator.errors(doc)
            if not errs:
                failures += 1
                print(f"FAIL {rel} {describe(doc)} must be rejected ({expect}) but passes")
            elif not any(expect.lower() in e.lower() for e in errs):
                failures += 1
                print(f"FAIL {rel} {describe(doc)} rejected, but not for {expect!r}:")
                for e in errs:
                    print(f"       {e}")
            else:
                print(f"ok   {rel} {describe(doc)} rejected as expected ({expect})")

    print(f"examples: {checked - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

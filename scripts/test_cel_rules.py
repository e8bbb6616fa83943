"""The CRDs' x-kubernetes-validations CEL rules, evaluated with cel-python on valid and
invalid objects and on update transitions (old object -> new object), as the API server
would; and the CEL of the chart's ValidatingAdmissionPolicy (the operator guard) on sample
requests. Run: .venv/bin/python -m pytest scripts/test_cel_rules.py -q
"""

from __future__ import annotations

import copy
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from validate_examples import Validator  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(os.path.join(REPO, "crds"))


def obj(kind: str, spec: dict, name: str = "x") -> dict:
    return {
        "apiVersion": "keystead.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }


def hsm(**spec) -> dict:
    return obj("ManagedHsm", {"initialAdministrators": ["admin"], **spec})


CERTS = ["PLACEHOLDER-1", "PLACEHOLDER-2", "PLACEHOLDER-3"]
FS = {"filesystem": {"claimName": "hsm-backups"}}


def assert_rejected(errors: list[str], message: str) -> None:
    assert errors, f"expected a rejection containing {message!r}, got none"
    assert any(message in e for e in errors), f"{message!r} not in {errors}"


# ---- ManagedHsm -------------------------------------------------------------------------


def test_purge_protection_cannot_be_disabled(validator):
    old = hsm(purgeProtection=True)
    new = hsm(purgeProtection=False)
    assert_rejected(validator.errors(new, old), "purgeProtection cannot be disabled")


def test_purge_protection_can_be_enabled_and_kept(validator):
    assert validator.errors(hsm(purgeProtection=True), hsm(purgeProtection=False)) == []
    assert validator.errors(hsm(purgeProtection=True), hsm(purgeProtection=True)) == []


def test_purge_protection_removed_field_defaults_to_false_and_is_rejected(validator):
    # Dropping the field re-applies the default (false): still a true -> false transition.
    assert_rejected(
        validator.errors(hsm(), hsm(purgeProtection=True)), "purgeProtection cannot be disabled"
    )


def test_create_ignores_transition_rules(validator):
    assert validator.errors(hsm(purgeProtection=False)) == []


# ---- hsmRef immutability ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,spec",
    [
        ("SecurityDomain", {"mode": "Upload", "upload": {}}),
        ("BackupSchedule", {"schedule": "0 2 * * *", "destination": FS}),
    ],
)
def test_hsm_ref_is_immutable(validator, kind, spec):
    old = obj(kind, {"hsmRef": {"name": "a"}, **spec})
    new = obj(kind, {"hsmRef": {"name": "b"}, **spec})
    assert_rejected(validator.errors(new, old), "the pool reference is immutable")
    assert validator.errors(copy.deepcopy(old), old) == []


def test_backup_spec_is_immutable(validator):
    old = obj("Backup", {"hsmRef": {"name": "a"}, "destination": FS})
    new = obj("Backup", {"hsmRef": {"name": "a"}, "keyName": "k1", "destination": FS})
    assert_rejected(validator.errors(new, old), "a Backup is immutable once created")


def test_restore_spec_is_immutable(validator):
    old = obj("Restore", {"hsmRef": {"name": "a"}, "backupName": "b1"})
    new = obj("Restore", {"hsmRef": {"name": "a"}, "backupName": "b2"})
    assert_rejected(validator.errors(new, old), "a Restore is immutable once created")


def test_schedule_may_change_other_fields(validator):
    old = obj("BackupSchedule", {"hsmRef": {"name": "a"}, "schedule": "0 2 * * *", "destination": FS})
    new = copy.deepcopy(old)
    new["spec"]["suspend"] = True
    new["spec"]["schedule"] = "30 3 * * 1-5"
    assert validator.errors(new, old) == []


# ---- cron ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/15 * * * *", "0 0 1 JAN MON-FRI", " 5 4 * * 0 "])
def test_five_field_cron_accepted(validator, cron):
    spec = {"hsmRef": {"name": "a"}, "schedule": cron, "destination": FS}
    assert validator.errors(obj("BackupSchedule", spec)) == []


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "0 2 * *  ", "@daily every", "0 2 * * * 2026"])
def test_cron_with_wrong_field_count_rejected(validator, cron):
    spec = {"hsmRef": {"name": "a"}, "schedule": cron, "destination": FS}
    assert_rejected(
        validator.errors(obj("BackupSchedule", spec)), "standard 5-field cron expression"
    )


# ---- security domain ----------------------------------------------------------------------


def sd_download(**download) -> dict:
    return obj("SecurityDomain", {"hsmRef": {"name": "a"}, "mode": "Download", "download": download})


def test_quorum_above_certificates_rejected(validator):
    assert_rejected(
        validator.errors(sd_download(quorum=4, certificates=CERTS)),
        "quorum must not exceed the number of wrapping keys",
    )


@pytest.mark.parametrize("quorum", [2, 3])
def test_quorum_up_to_certificates_accepted(validator, quorum):
    assert validator.errors(sd_download(quorum=quorum, certificates=CERTS)) == []


def test_certificates_inline_xor_configmap(validator):
    both = sd_download(quorum=2, certificates=CERTS, certificatesFrom={"name": "c"})
    neither = sd_download(quorum=2)
    for o in (both, neither):
        assert_rejected(validator.errors(o), "either inline (certificates) or from a ConfigMap")


def test_upload_mode_needs_upload(validator):
    o = obj("SecurityDomain", {"hsmRef": {"name": "a"}, "mode": "Upload"})
    assert_rejected(validator.errors(o), "mode Upload needs spec.upload")


# ---- destinations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "destination",
    [
        {},
        {**FS, "gcs": {"bucket": "bkt", "credentials": {"name": "s"}}},
    ],
)
def test_exactly_one_store(validator, destination):
    o = obj("Backup", {"hsmRef": {"name": "a"}, "destination": destination})
    assert_rejected(validator.errors(o), "set exactly one of filesystem, s3, azureBlob, gcs")


def test_restore_source_destination_checked_too(validator):
    o = obj(
        "Restore",
        {"hsmRef": {"name": "a"}, "source": {"folder": "f", "destination": {}}},
    )
    assert_rejected(validator.errors(o), "set exactly one of filesystem, s3, azureBlob, gcs")


# ---- the chart's ValidatingAdmissionPolicy (operator guard) -------------------------------


@pytest.fixture(scope="module")
def guard_policy() -> dict:
    import subprocess

    import yaml

    helm = os.path.join(REPO, ".tools", "bin", "helm")
    if not os.access(helm, os.X_OK):
        pytest.skip("helm not installed; run scripts/install-tools.sh")
    rendered = subprocess.run(
        [helm, "template", "ks", os.path.join(REPO, "charts", "keystead"), "-n", "ops"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] == "ValidatingAdmissionPolicy":
            return doc
    raise AssertionError("the chart rendered no ValidatingAdmissionPolicy")


def guard_verdict(policy: dict, username: str, resource: str, object_: dict) -> list[str]:
    """Messages of the policy's failed validations for one request ([] = admitted)."""
    import celpy

    env = celpy.Environment()
    activation = {
        "request": celpy.json_to_cel(
            {"userInfo": {"username": username}, "resource": {"resource": resource}}
        ),
        "object": celpy.json_to_cel(object_),
    }

    def ev(expr: str) -> bool:
        return bool(env.program(env.compile(expr)).evaluate(activation))

    if not all(ev(c["expression"]) for c in policy["spec"]["matchConditions"]):
        return []
    return [v["message"] for v in policy["spec"]["validations"] if not ev(v["expression"])]


OPERATOR = "system:serviceaccount:ops:ks-keystead"


def statefulset(pod_spec: dict) -> dict:
    return {"spec": {"template": {"spec": {"containers": [{"name": "p"}], **pod_spec}}}}


def test_guard_denies_token_secrets_to_operator_only(guard_policy):
    token = {"type": "kubernetes.io/service-account-token"}
    assert guard_verdict(guard_policy, OPERATOR, "secrets", token)
    assert guard_verdict(guard_policy, "system:serviceaccount:ops:other", "secrets", token) == []
    assert guard_verdict(guard_policy, OPERATOR, "secrets", {"type": "kubernetes.io/tls"}) == []
    assert guard_verdict(guard_policy, OPERATOR, "secrets", {}) == []


@pytest.mark.parametrize(
    "pod_spec",
    [
        {"hostNetwork": True},
        {"hostPID": True},
        {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        {"containers": [{"name": "p", "securityContext": {"privileged": True}}]},
        {"initContainers": [{"name": "i", "securityContext": {"privileged": True}}]},
    ],
)
def test_guard_denies_host_level_statefulsets(guard_policy, pod_spec):
    assert guard_verdict(guard_policy, OPERATOR, "statefulsets", statefulset(pod_spec))


def test_guard_admits_ordinary_partition_statefulset(guard_policy):
    sts = statefulset(
        {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
            "containers": [{"name": "p", "securityContext": {"privileged": False}}],
        }
    )
    assert guard_verdict(guard_policy, OPERATOR, "statefulsets", sts) == []

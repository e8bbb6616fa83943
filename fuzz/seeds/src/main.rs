//! Writes the fuzz fixtures (`fuzz/fixtures/`, test-only keys) and a small seed corpus per
//! target (`fuzz/corpus/<target>/`), each seed made or checked by the crates' own
//! serializers and parsers. Run in `fuzz/`: `cargo run -p keystead-fuzz-seeds`.
//! Existing fixtures are kept (seeds made under them stay valid); corpus files are rewritten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keystead_core::audit::{AuditChain, AuditRecord};
use keystead_core::sd::{
    CustodianKey, CustodianPrivateKey, DomainSecret, ExchangeKey, build_transfer_blob,
    create_domain_file, generate_custodian,
};
use keystead_fuzz::{
    AUDIENCE, BACKUP_KEY, CUSTODIANS, EDIT_MODE, FOLDER, ISSUER, KEY_BACKUP_FINGERPRINT,
    KEY_BACKUP_KEY, POOL_ID, SEAL_KEY, SEED_NAME_PREFIX, fixture, fixture_path,
};
use keystead_partition::auth::LocalIssuer;
use keystead_partition::backup::format::{self, ChunkInfo, ManifestBody, Record};
use keystead_partition::config::PartitionConfig;
use keystead_partition::consensus::raft::TypeConfig;
use keystead_partition::state::{Command, DeletedKey, KeyRecord, KeyVersion, PoolState, Settings};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use serde_json::{Value, json};

fn corpus_dir(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_mode(mode: u8, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body.as_ref());
    v
}

/// Parse `json` as `T` and write it back with the crate's serializer.
fn via<T: serde::de::DeserializeOwned + serde::Serialize>(json: Value) -> Vec<u8> {
    let t: T = serde_json::from_value(json).expect("seed JSON parses as its type");
    serde_json::to_vec(&t).expect("seed serializes")
}

fn custodians() -> (Vec<CustodianKey>, Vec<CustodianPrivateKey>) {
    let mut publics = Vec::new();
    let mut privates = Vec::new();
    for i in 0..CUSTODIANS {
        let cert = fixture_path(&format!("custodian{i}.cert.pem"));
        let key = fixture_path(&format!("custodian{i}.key.pem"));
        if !cert.exists() || !key.exists() {
            let (c, k) =
                generate_custodian(&format!("{SEED_NAME_PREFIX}-custodian{i}"), 2048, None)
                    .expect("custodian key generation");
            std::fs::write(&cert, c).expect("write fixture");
            std::fs::write(&key, k.as_bytes()).expect("write fixture");
        }
        publics.push(CustodianKey::from_pem(&fixture(&format!("custodian{i}.cert.pem"))).unwrap());
        privates.push(
            CustodianPrivateKey::from_pem(&fixture(&format!("custodian{i}.key.pem")), None)
                .unwrap(),
        );
    }
    (publics, privates)
}

fn key_version(version: &str) -> KeyVersion {
    serde_json::from_value(json!({
        "version": version,
        "kty": "EC-HSM",
        "keyOps": ["sign", "verify"],
        "publicJwk": {"kty": "EC-HSM", "crv": "P-256",
                      "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        "wrapped": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "attributes": {"enabled": true, "created": 1_700_000_000, "updated": 1_700_000_000,
                       "exp": 1_900_000_000},
        "tags": {"team": "fuzz"},
    }))
    .expect("key version")
}

fn key_record(name: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        versions: vec![key_version("0a1b2c"), key_version("3d4e5f")].into(),
        rotation_policy: None,
    }
}

fn settings() -> Settings {
    Settings {
        pool_name: format!("{SEED_NAME_PREFIX}-pool"),
        pool_id: POOL_ID.into(),
        soft_delete_retention_days: 7,
        purge_protection: true,
    }
}

fn commands() -> Vec<Command> {
    let name = format!("{SEED_NAME_PREFIX}-key");
    vec![
        Command::Bootstrap {
            settings: settings(),
            administrators: vec![format!("{SEED_NAME_PREFIX}-admin")],
        },
        Command::Activate {
            domain_id: "00000000-0000-4000-8000-000000000001".into(),
            fingerprint: KEY_BACKUP_FINGERPRINT.into(),
            now: 1_700_000_000,
        },
        Command::AddKeyVersion {
            name: name.clone(),
            version: Box::new(key_version("0a1b2c")),
            must_be_new: true,
        },
        serde_json::from_value(json!({
            "type": "updateKeyVersion", "name": name, "version": null,
            "keyOps": ["sign"], "attributes": {"enabled": false, "exp": 2_000_000_000_i64},
            "tags": {"a": "b"}, "releasePolicy": null, "now": 1_700_000_100,
        }))
        .unwrap(),
        Command::SetRotationPolicy {
            name: name.clone(),
            policy: json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"},
                           "action": {"type": "Rotate"}}], "attributes": {"expiryTime": "P2Y"}}),
            now: 1_700_000_200,
        },
        serde_json::from_value(json!({
            "type": "putRoleAssignment", "scope": "/keys", "name": "8e9d1f52-0000-4000-8000-000000000002",
            "params": {"properties": {"roleDefinitionId":
                "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b",
                "principalId": format!("{SEED_NAME_PREFIX}-user")}},
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "type": "putRoleDefinition", "scope": "/", "name": "8e9d1f52-0000-4000-8000-000000000003",
            "params": {"properties": {"roleName": "fuzz signer", "description": "d",
                "permissions": [{"dataActions": ["Microsoft.KeyVault/managedHsm/keys/sign/action"]}],
                "assignableScopes": ["/"]}},
        }))
        .unwrap(),
        Command::DeleteKey {
            name: name.clone(),
            now: 1_700_000_300,
        },
        Command::RecoverKey { name: name.clone() },
        Command::DeleteKey {
            name: name.clone(),
            now: 1_700_000_400,
        },
        Command::PurgeKey {
            name: name.clone(),
            now: 1_800_000_000,
        },
        Command::PurgeExpired { now: 1_800_000_000 },
        Command::RestoreKey {
            key: key_record(&name),
        },
        Command::RestoreBegin { id: "r1".into() },
        serde_json::from_value(json!({
            "type": "restoreStage", "id": "r1", "keys": [key_record("k2")], "deleted": [],
            "rbac": {"assignments": {}, "definitions": {}},
        }))
        .unwrap_or(Command::RestoreAbort { id: "r0".into() }),
        Command::RestoreCommit {
            id: "r1".into(),
            key_count: 1,
            deleted_count: 0,
        },
        Command::BeginRecovery {
            exchange_thumbprint: "abc".into(),
            now: 1,
        },
    ]
}

fn state_after(cmds: &[Command]) -> PoolState {
    let mut s = PoolState::default();
    for c in cmds {
        let _ = s.apply(c);
    }
    s
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn main() {
    std::fs::create_dir_all(fixture_path("")).expect("fixtures directory");

    // --- route ------------------------------------------------------------------------
    let d = corpus_dir("route");
    // Method byte: 0 GET, 1 PUT, 2 POST, 3 PATCH, 4 DELETE, 5 HEAD.
    for (i, (m, p)) in [
        (0u8, "/keys/k1/"),
        (2, "/keys/k1//release"),
        (2, "/keys/k1/v1/sign"),
        (1, "/keys/k1/restore"),
        (
            1,
            "/keys/providers/Microsoft.Authorization/roleAssignments/abc",
        ),
        (
            0,
            "/keys/k1/providers/Microsoft.Authorization/roleDefinitions",
        ),
        (0, "/backup/job-1/pending"),
        (4, "/admin/members/3"),
        (2, "/securitydomain/upload"),
        (0, "/deletedkeys/"),
    ]
    .into_iter()
    .enumerate()
    {
        write(&d, &format!("seed-{i}"), with_mode(m, p));
    }

    // --- bearer_token -------------------------------------------------------------------
    let issuer = LocalIssuer::load_or_create(&fixture_path(""), ISSUER).expect("issuer");
    let d = corpus_dir("bearer_token");
    let far = 4_102_444_800_u64; // 2100-01-01
    let sub = format!("{SEED_NAME_PREFIX}-user");
    let tokens = [
        json!({"iss": ISSUER, "sub": sub, "oid": sub, "aud": AUDIENCE, "exp": far, "nbf": 0}),
        json!({"iss": ISSUER, "sub": sub, "aud": [AUDIENCE, "x"], "exp": far}),
        json!({"iss": ISSUER, "sub": sub, "aud": "https://other", "exp": far}),
        json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "exp": 1}),
        json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "exp": far, "nbf": far}),
        json!({"iss": ISSUER, "aud": AUDIENCE, "exp": far}),
        json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "exp": far,
               "kubernetes.io": {"pod": {"name": "p0"}}}),
    ];
    for (i, claims) in tokens.iter().enumerate() {
        let t = issuer.sign_claims(claims).expect("sign");
        write(&d, &format!("seed-{i}"), format!("Bearer {t}"));
    }
    write(
        &d,
        "seed-none",
        "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
    );
    write(&d, "seed-basic", "Basic dXNlcjpwdw==");
    let _ = issuer.issue(&sub, AUDIENCE, Duration::from_secs(60));

    // --- jwk ------------------------------------------------------------------------------
    let (publics, privates) = custodians();
    let d = corpus_dir("jwk");
    write(
        &d,
        "seed-jwks",
        with_mode(0, serde_json::to_vec(&issuer.jwks()).unwrap()),
    );
    write(
        &d,
        "seed-import-jwk",
        with_mode(
            1,
            via::<keystead_core::keys::JsonWebKey>(json!({
                "kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign"],
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"})),
        ),
    );
    let certs: Vec<_> = publics.iter().map(|c| c.to_jwk().unwrap()).collect();
    let info = keystead_core::sd::wire::CertificateInfo {
        certificates: certs,
        required: 2,
    };
    write(
        &d,
        "seed-download-request",
        with_mode(2, serde_json::to_vec(&info).unwrap()),
    );
    let xk = ExchangeKey::generate(POOL_ID).expect("exchange key");
    write(
        &d,
        "seed-transfer-key",
        with_mode(3, serde_json::to_vec(&xk.transfer_key()).unwrap()),
    );
    write(&d, "seed-exchange-pem", with_mode(3, xk.certificate_pem()));
    write(
        &d,
        "seed-custodian-cert",
        with_mode(4, fixture("custodian0.cert.pem")),
    );
    write(
        &d,
        "seed-custodian-key",
        with_mode(5, fixture("custodian1.key.pem")),
    );

    // --- kv_bodies --------------------------------------------------------------------------
    let d = corpus_dir("kv_bodies");
    use keystead_core::keys as k;
    use keystead_core::rbac as r;
    let bodies: Vec<(u8, Vec<u8>)> = vec![
        (
            0,
            via::<k::KeyCreateParameters>(
                json!({"kty": "RSA-HSM", "key_size": 2048, "key_ops": ["encrypt"],
                   "attributes": {"enabled": true, "exp": 1_900_000_000}, "tags": {"a": "b"}}),
            ),
        ),
        (
            0,
            via::<k::KeyCreateParameters>(json!({"kty": "EC-HSM", "crv": "P-384",
                "release_policy": {"contentType": "application/json; charset=utf-8",
                                   "data": "eyJhbnlPZiI6W119", "immutable": false}})),
        ),
        (
            1,
            via::<k::KeyImportParameters>(json!({"key": {"kty": "oct-HSM",
                "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}, "Hsm": true})),
        ),
        (
            2,
            via::<k::KeyUpdateParameters>(
                json!({"key_ops": ["sign"], "attributes": {"enabled": false}}),
            ),
        ),
        (
            3,
            via::<k::KeyOperationsParameters>(json!({"alg": "A256GCM", "value": "aGVsbG8",
                "aad": "YWFk", "tag": "AAECAwQFBgcICQoLDA0ODw"})),
        ),
        (
            4,
            via::<k::KeySignParameters>(json!({"alg": "ES256",
                "value": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"})),
        ),
        (
            5,
            via::<k::KeyVerifyParameters>(
                json!({"alg": "PS256", "digest": "AAEC", "value": "AwQF"}),
            ),
        ),
        (
            6,
            via::<k::KeyRestoreParameters>(json!({"value": "S1NLQjEBAA"})),
        ),
        (
            7,
            via::<k::KeyReleaseParameters>(
                json!({"target": "eyJhbGciOiJub25lIn0", "enc": "CKM_RSA_AES_KEY_WRAP"}),
            ),
        ),
        (8, via::<k::GetRandomBytesRequest>(json!({"count": 32}))),
        (
            9,
            via::<k::KeyRotationPolicy>(json!({"lifetimeActions": [
                {"trigger": {"timeAfterCreate": "P1Y2M3DT4H5M6S"}, "action": {"type": "Rotate"}},
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
                "attributes": {"expiryTime": "P2Y"}})),
        ),
        (
            10,
            via::<r::RoleAssignmentCreateParameters>(json!({"properties": {
                "roleDefinitionId": "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b",
                "principalId": "alice"}})),
        ),
        (
            11,
            via::<r::RoleDefinitionCreateParameters>(json!({"properties": {"roleName": "r",
                "permissions": [{"dataActions": ["Microsoft.KeyVault/managedHsm/keys/*"],
                                 "notDataActions": ["Microsoft.KeyVault/managedHsm/keys/delete"]}],
                "assignableScopes": ["/keys"]}})),
        ),
        (12, serde_json::to_vec(&info).unwrap()),
        (
            13,
            via::<keystead_core::sd::wire::SecurityDomainObject>(json!({"value": "{}"})),
        ),
        (
            14,
            via::<keystead_core::members::MemberSpec>(json!({"id": 4, "name": "p3",
                "url": "https://p3.pool.svc:8443", "role": "learner"})),
        ),
        (
            15,
            via::<keystead_core::store::StorageParameters>(json!({
                "storageResourceUri": "https://acct.blob.core.windows.net/backups",
                "token": "sv=2024&sig=x", "useManagedIdentity": false})),
        ),
    ];
    for (i, (sel, body)) in bodies.into_iter().enumerate() {
        write(&d, &format!("seed-{i:02}"), with_mode(sel, body));
    }

    // --- sd_file --------------------------------------------------------------------------
    let secret_path = fixture_path("sealed-domain.bin");
    let secret = if secret_path.exists() {
        DomainSecret::from_sealed_bytes(&std::fs::read(&secret_path).unwrap(), &SEAL_KEY)
            .expect("fixture domain opens")
    } else {
        let s = DomainSecret::generate(POOL_ID);
        std::fs::write(&secret_path, s.to_sealed_bytes(&SEAL_KEY)).unwrap();
        s
    };
    std::fs::write(fixture_path("domain-fingerprint.txt"), secret.fingerprint()).unwrap();
    let d = corpus_dir("sd_file");
    let file = create_domain_file(&secret, &publics, 2).expect("domain file");
    write(&d, "seed-file", &file);
    write(&d, "seed-sealed", secret.to_sealed_bytes(&SEAL_KEY));

    // --- sd_transfer ------------------------------------------------------------------------
    let d = corpus_dir("sd_transfer");
    let blob = build_transfer_blob(&file, &privates[..2], &xk.certificate()).expect("blob");
    write(&d, "seed-blob", &blob);
    write(
        &d,
        "seed-upload-body",
        serde_json::to_vec(&keystead_core::sd::wire::SecurityDomainObject { value: blob }).unwrap(),
    );
    write(&d, "seed-edit-none", [EDIT_MODE]);
    write(&d, "seed-edit-flip", [EDIT_MODE, 0, 40, 1]);

    // --- key_backup_blob --------------------------------------------------------------------
    let d = corpus_dir("key_backup_blob");
    let rec = key_record(&format!("{SEED_NAME_PREFIX}-key"));
    let kb = keystead_partition::fuzzing::seal_key_backup_blob(
        &KEY_BACKUP_KEY,
        KEY_BACKUP_FINGERPRINT,
        &rec,
    )
    .unwrap();
    write(&d, "seed-blob", &kb);
    write(&d, "seed-edit-none", [EDIT_MODE]);
    write(&d, "seed-edit-flip", [EDIT_MODE, 0, 80, 4]);

    // --- backup_chunk -----------------------------------------------------------------------
    let d = corpus_dir("backup_chunk");
    let records = vec![
        Record::Settings(settings()),
        Record::Rbac(keystead_core::rbac::RbacState::default()),
        Record::Key(rec.clone()),
        Record::DeletedKey(DeletedKey {
            key: key_record("gone"),
            deleted_date: 1,
            scheduled_purge_date: 2,
        }),
    ];
    let chunk = format::seal_chunk(&BACKUP_KEY, FOLDER, 0, &records).unwrap();
    // Mode 0: sealed chunk (index byte, record-count byte, bytes); 1: the plaintext records.
    let mut sealed_seed = vec![0u8, 0, records.len() as u8];
    sealed_seed.extend_from_slice(&chunk);
    write(&d, "seed-sealed", sealed_seed);
    write(
        &d,
        "seed-plain",
        with_mode(1, serde_json::to_vec(&records).unwrap()),
    );
    write(&d, "seed-edit-none", [EDIT_MODE]);

    // --- backup_manifest ----------------------------------------------------------------------
    let d = corpus_dir("backup_manifest");
    let body = ManifestBody {
        format: format::FORMAT.into(),
        version: format::VERSION,
        pool: format!("{SEED_NAME_PREFIX}-pool"),
        pool_id: POOL_ID.into(),
        folder: FOLDER.into(),
        domain_fingerprint: KEY_BACKUP_FINGERPRINT.into(),
        created: 1_700_000_000,
        applied_index: 42,
        key_count: 1,
        deleted_key_count: 1,
        role_assignment_count: 0,
        role_definition_count: 0,
        restore_point: false,
        chunks: vec![ChunkInfo {
            name: format::chunk_name(0),
            size: chunk.len() as u64,
            sha256: format::sha256_hex(&chunk),
            records: records.len() as u64,
        }],
        key_name: None,
    };
    let m = format::sign_manifest(&BACKUP_KEY, body.clone());
    write(
        &d,
        "seed-full",
        keystead_partition::backup::manifest_bytes(&m).unwrap(),
    );
    let single = format::sign_manifest(
        &BACKUP_KEY,
        ManifestBody {
            key_name: Some(format!("{SEED_NAME_PREFIX}-key")),
            restore_point: true,
            ..body
        },
    );
    write(&d, "seed-single-key", serde_json::to_vec(&single).unwrap());
    write(&d, "seed-edit-none", [EDIT_MODE]);

    // --- state_apply / raft_peer / raft_disk ----------------------------------------------------
    let cmds = commands();
    let d = corpus_dir("state_apply");
    let lines: Vec<String> = cmds
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    write(&d, "seed-all", lines.join("\n"));
    write(&d, "seed-setup", lines[..4].join("\n"));

    let d = corpus_dir("raft_peer");
    let entries: Vec<_> = cmds
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c.clone()))
        .collect();
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 0),
        prev_log_id: None,
        entries: entries.clone(),
        leader_commit: Some(LogId::new(CommittedLeaderId::new(1, 0), 1)),
    };
    write(
        &d,
        "seed-append",
        with_mode(0, serde_json::to_vec(&append).unwrap()),
    );
    let vote = openraft::raft::VoteRequest::<u64> {
        vote: Vote::new(2, 1),
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 0), 3)),
    };
    write(
        &d,
        "seed-vote",
        with_mode(1, serde_json::to_vec(&vote).unwrap()),
    );
    let state = state_after(&cmds[..7]);
    let meta = SnapshotMeta::<u64, keystead_partition::consensus::raft::Member> {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 0), 7)),
        last_membership: Default::default(),
        snapshot_id: "1-7-1".into(),
    };
    let snapshot_file = json!({"meta": meta, "state": state});
    let install = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 0),
        meta: meta.clone(),
        offset: 0,
        data: serde_json::to_vec(&snapshot_file).unwrap(),
        done: true,
    };
    write(
        &d,
        "seed-install-snapshot",
        with_mode(2, serde_json::to_vec(&install).unwrap()),
    );
    write(&d, "seed-forward", with_mode(3, &lines[2]));
    write(
        &d,
        "seed-domain",
        with_mode(
            4,
            serde_json::to_vec(&keystead_partition::service::sd::DomainRequest {
                exchange_certificate: xk.certificate_pem(),
            })
            .unwrap(),
        ),
    );
    write(
        &d,
        "seed-members",
        with_mode(
            5,
            via::<keystead_partition::service::members::MembershipRequest>(json!({
                "op": "add", "member": {"id": 4, "name": "p3", "url": "https://127.0.0.1:9"}})),
        ),
    );

    let d = corpus_dir("raft_disk");
    // Mode 0: log.jsonl of the Raft log store; 1: its vote.json; 2: the state machine's
    // snapshot.json; 3: the single store's commands.log; 4: its snapshot.json.
    let mut log = String::new();
    for e in &entries {
        log.push_str(&serde_json::to_string(&json!({ "a": e })).unwrap());
        log.push('\n');
    }
    log.push_str(&serde_json::to_string(&json!({"t": 3})).unwrap());
    log.push('\n');
    log.push_str(
        &serde_json::to_string(&json!({"p": LogId::new(CommittedLeaderId::new(1, 0), 1)})).unwrap(),
    );
    log.push('\n');
    write(&d, "seed-log", with_mode(0, &log));
    write(
        &d,
        "seed-vote",
        with_mode(1, serde_json::to_vec(&Vote::new_committed(3, 1)).unwrap()),
    );
    write(
        &d,
        "seed-snapshot",
        with_mode(2, serde_json::to_vec(&snapshot_file).unwrap()),
    );
    let single_log: Vec<String> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::to_string(&json!({"index": i + 1, "cmd": c})).unwrap())
        .collect();
    write(&d, "seed-commands", with_mode(3, single_log.join("\n")));
    write(
        &d,
        "seed-single-snapshot",
        with_mode(
            4,
            serde_json::to_vec(&json!({"index": 7, "state": state})).unwrap(),
        ),
    );

    // --- partition_config -----------------------------------------------------------------------
    let d = corpus_dir("partition_config");
    let cfg = via::<PartitionConfig>(json!({
        "poolName": "pool", "partitionId": "p0", "listen": "127.0.0.1:8443",
        "publicUrl": "https://127.0.0.1:8443", "dataDir": "/var/lib/keystead",
        "tls": {"certFile": "tls.crt", "keyFile": "tls.key", "caFile": "ca.crt"},
        "auth": {"audience": AUDIENCE, "issuers": [
            {"issuer": ISSUER, "jwksFile": "jwks.json"},
            {"issuer": "https://kubernetes.default.svc", "caFile": "ca.crt",
             "bearerTokenFile": "token", "audiences": ["a"]}]},
        "initialAdministrators": ["admin"], "softDeleteRetentionDays": 7,
        "purgeProtection": true, "seal": {"mode": "sealingKeyFile", "keyFile": "seal.key"},
        "audit": {"file": "audit.log", "stdout": false},
        "peers": [{"id": 1, "name": "p0", "url": "https://p0:8443"},
                  {"id": 2, "name": "p1", "url": "https://p1:8443"}],
        "peerTokenFile": "peer.token",
        "peerServiceAccount": "system:serviceaccount:hsm:pool",
        "hostAddresses": {"p1": "127.0.0.2"},
        "backupFilesystemRoot": "/backups", "backupClaims": {"claim": "/mnt/claim"},
    }));
    PartitionConfig::validate(&serde_json::from_slice(&cfg).unwrap()).expect("seed config valid");
    write(&d, "seed-full", cfg);
    write(
        &d,
        "seed-minimal",
        via::<PartitionConfig>(json!({
            "poolName": "pool", "partitionId": "p0", "listen": "127.0.0.1:1",
            "publicUrl": "https://127.0.0.1:1", "dataDir": "d",
            "tls": {"certFile": "c", "keyFile": "k", "caFile": "ca"},
            "auth": {"issuers": []}, "initialAdministrators": ["admin"]})),
    );

    // --- audit_log ------------------------------------------------------------------------------
    let d = corpus_dir("audit_log");
    let mut chain = AuditChain::new();
    let mut out = String::new();
    for (i, op) in ["KeyCreate", "KeySign", "SecurityDomainDownload"]
        .iter()
        .enumerate()
    {
        let rec = chain.seal(AuditRecord {
            time: "2026-01-01T00:00:00Z".into(),
            request_id: format!("req-{i}"),
            partition: "p0".into(),
            caller: format!("{SEED_NAME_PREFIX}-user"),
            client_address: "127.0.0.1:1".into(),
            method: "POST".into(),
            path: "/keys/k1/create".into(),
            operation: (*op).into(),
            key_name: Some("k1".into()),
            status: 200,
            latency_ms: 1.25,
            ..AuditRecord::default()
        });
        out.push_str(&rec.to_json_line());
        out.push('\n');
    }
    write(&d, "seed-chain", &out);
    println!("fixtures and seed corpus written");
}

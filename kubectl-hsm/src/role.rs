//! `kubectl hsm role ...`: local RBAC role assignments.

use crate::client::{Output, PoolArgs, print_json};
use clap::Subcommand;
use keystead_core::rbac::{ListResult, RoleAssignment, builtin_roles, role_definition_id};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Role assignments.
    #[command(subcommand)]
    Assignment(AssignmentCommand),
}

#[derive(Subcommand, Debug)]
pub enum AssignmentCommand {
    /// Assign a role to a principal at a scope (`/`, `/keys` or `/keys/NAME`).
    Create {
        /// Role name (e.g. "Managed HSM Crypto User") or role definition id/GUID.
        #[arg(long)]
        role: String,
        /// Principal id: the issuer's principal prefix, if it has one, and the token's object id
        /// or subject (e.g. `entra:<oid>`, `system:serviceaccount:<ns>:<sa>`).
        #[arg(long)]
        principal: String,
        #[arg(long, default_value = "/")]
        scope: String,
        /// Assignment name (a GUID); generated when omitted.
        #[arg(long)]
        name: Option<String>,
    },
    /// List role assignments at a scope.
    List {
        #[arg(long, default_value = "/")]
        scope: String,
    },
    /// Delete a role assignment.
    Delete {
        name: String,
        #[arg(long, default_value = "/")]
        scope: String,
    },
}

fn scope_prefix(scope: &str) -> String {
    let s = scope.trim_end_matches('/');
    format!("{s}/providers/Microsoft.Authorization/roleAssignments")
}

fn resolve_role(role: &str) -> String {
    builtin_roles()
        .into_iter()
        .find(|r| r.properties.role_name.eq_ignore_ascii_case(role))
        .map(|r| role_definition_id(&r.name))
        .unwrap_or_else(|| role.to_string())
}

pub async fn run(pool: &PoolArgs, cmd: RoleCommand) -> anyhow::Result<()> {
    let c = pool.client()?;
    let RoleCommand::Assignment(cmd) = cmd;
    match cmd {
        AssignmentCommand::Create {
            role,
            principal,
            scope,
            name,
        } => {
            let name = name.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let body = json!({"properties": {"roleDefinitionId": resolve_role(&role), "principalId": principal}});
            let a: RoleAssignment = c
                .call(
                    Method::PUT,
                    &format!("{}/{name}", scope_prefix(&scope)),
                    Some(&body),
                )
                .await?;
            if pool.output == Output::Json {
                return print_json(&a);
            }
            println!(
                "assigned {role} to {principal} at {} (assignment {})",
                a.properties.scope, a.name
            );
            Ok(())
        }
        AssignmentCommand::List { scope } => {
            let l: ListResult<RoleAssignment> = c
                .call::<Value, _>(Method::GET, &scope_prefix(&scope), None)
                .await?;
            if pool.output == Output::Json {
                return print_json(&l.value);
            }
            let names: std::collections::HashMap<String, String> = builtin_roles()
                .into_iter()
                .map(|r| (r.name.clone(), r.properties.role_name.clone()))
                .collect();
            for a in l.value {
                let guid = a
                    .properties
                    .role_definition_id
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let role = names.get(&guid).cloned().unwrap_or(guid);
                println!(
                    "{}\t{}\t{}\t{}",
                    a.name, a.properties.scope, a.properties.principal_id, role
                );
            }
            Ok(())
        }
        AssignmentCommand::Delete { name, scope } => {
            c.raw::<Value>(
                Method::DELETE,
                &format!("{}/{name}", scope_prefix(&scope)),
                None,
            )
            .await?;
            if pool.output == Output::Json {
                return print_json(&json!({"deleted": name}));
            }
            println!("deleted role assignment {name}");
            Ok(())
        }
    }
}

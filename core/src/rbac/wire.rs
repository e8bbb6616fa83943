//! The Azure-shaped wire types of role definitions and role assignments
//! (`.../providers/Microsoft.Authorization/role{Definitions,Assignments}`).

use serde::{Deserialize, Serialize};

use super::*;

/// `properties.type` of a role definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleType {
    #[serde(rename = "AKVBuiltInRole")]
    BuiltIn,
    #[serde(rename = "CustomRole")]
    Custom,
}

/// One permission block of a role definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

impl Permission {
    /// Does this permission grant `action` (some data action matches, no not-data action does)?
    pub fn grants(&self, action: DataAction) -> bool {
        self.data_actions.iter().any(|p| action_matches(p, action))
            && !self
                .not_data_actions
                .iter()
                .any(|p| action_matches(p, action))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionProperties {
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub role_type: RoleType,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

/// A role definition as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDefinition {
    /// `Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/<guid>`.
    pub id: String,
    /// The GUID.
    pub name: String,
    /// Always [`ROLE_DEFINITION_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    pub properties: RoleDefinitionProperties,
}

impl RoleDefinition {
    /// Does any permission block of this role grant `action`?
    pub fn grants(&self, action: DataAction) -> bool {
        self.properties.permissions.iter().any(|p| p.grants(action))
    }
}

/// Body of `PUT .../roleDefinitions/{guid}`: `{"properties":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDefinitionCreateParameters {
    pub properties: RoleDefinitionCreateProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionCreateProperties {
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    /// Ignored on input: a definition created through the API is always a custom role.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub role_type: Option<RoleType>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Defaults to `["/"]` when empty.
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentProperties {
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
}

/// A role assignment as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// `/{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    /// The GUID.
    pub name: String,
    /// Always [`ROLE_ASSIGNMENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    pub properties: RoleAssignmentProperties,
}

/// Body of `PUT .../roleAssignments/{guid}`: `{"properties":{"roleDefinitionId","principalId"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignmentCreateParameters {
    pub properties: RoleAssignmentCreateProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentCreateProperties {
    pub role_definition_id: String,
    pub principal_id: String,
}

/// A page of a list result: `{"value":[...],"nextLink":...}` (Keystead returns one page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult<T> {
    pub value: Vec<T>,
    #[serde(rename = "nextLink", default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

impl<T> ListResult<T> {
    pub fn single_page(value: Vec<T>) -> Self {
        Self {
            value,
            next_link: None,
        }
    }
}

pub type RoleDefinitionListResult = ListResult<RoleDefinition>;
pub type RoleAssignmentListResult = ListResult<RoleAssignment>;

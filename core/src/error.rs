//! The Key Vault error body: `{"error":{"code":"...","message":"...","innererror":{...}}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innererror: Option<Box<ErrorDetail>>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                innererror: None,
            },
        }
    }

    pub fn with_inner(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.error.innererror = Some(Box::new(ErrorDetail {
            code: code.into(),
            message: message.into(),
            innererror: None,
        }));
        self
    }
}

//! API errors as the Kubernetes API reports them: a `metav1.Status` with a code and reason.

use serde_json::{json, Value};

use super::resource::Resource;

/// One invalid field of an object (a `StatusCause`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path such as `spec.ports[0].port`.
    pub field: String,
    /// What is wrong, e.g. `Invalid value: 70000: must be between 1 and 65535, inclusive`.
    pub message: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
}

impl FieldError {
    /// `field: Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: &str) -> Self {
        Self {
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
            reason: "FieldValueInvalid",
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            message,
            reason: "FieldValueRequired",
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                quoted.join(", ")
            ),
            reason: "FieldValueNotSupported",
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.into(),
            message: format!("Forbidden: {detail}"),
            reason: "FieldValueForbidden",
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: format!("Duplicate value: {value}"),
            reason: "FieldValueDuplicate",
        }
    }
}

/// A failed request, rendered as a `Status` object by [`ApiError::to_status`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: Resource, name: String },
    /// A path the server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: Resource, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {reason}")]
    Conflict {
        resource: Resource,
        name: String,
        reason: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", join_causes(.causes))]
    Invalid {
        kind: &'static str,
        name: String,
        causes: Vec<FieldError>,
    },
    /// The requested resourceVersion is older than the history kept.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the server is currently unable to handle the request")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
}

fn join_causes(causes: &[FieldError]) -> String {
    let all: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if all.len() == 1 {
        all.concat()
    } else {
        format!("[{}]", all.join(", "))
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Expired { .. } => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable => 503,
        }
    }

    /// The `reason` field (`metav1.StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired { .. } => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable => "ServiceUnavailable",
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. } => Some(json!({
                "name": name,
                "group": resource.group(),
                "kind": resource.plural(),
            })),
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason,
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
            map.insert("details".into(), details);
        }
        status
    }
}

/// A `Status` reporting success, as some deletes return.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_the_real_api_server() {
        let e = ApiError::NotFound {
            resource: Resource::Services,
            name: "web".into(),
        };
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "services \"web\" not found");
        assert_eq!(s["details"]["kind"], "services");
    }

    #[test]
    fn invalid_lists_every_cause() {
        let e = ApiError::Invalid {
            kind: "Service",
            name: "web".into(),
            causes: vec![
                FieldError::invalid(
                    "spec.ports[0].port",
                    70000,
                    "must be between 1 and 65535, inclusive",
                ),
                FieldError::required("spec.ports", ""),
            ],
        };
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "Service \"web\" is invalid: [spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.ports: Required value]"
        );
        assert_eq!(s["details"]["causes"][1]["reason"], "FieldValueRequired");
    }

    #[test]
    fn expired_is_410() {
        let e = ApiError::Expired {
            requested: 3,
            oldest: 10,
        };
        assert_eq!((e.code(), e.reason()), (410, "Expired"));
        assert_eq!(e.to_string(), "too old resource version: 3 (10)");
    }
}

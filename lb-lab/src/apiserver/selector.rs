//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` give them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::resource::{labels, meta_str, Resource};
use super::status::ApiError;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
    /// `key=value`, `key==value`, `key in (a,b)`
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also true when the label is absent, as in Kubernetes.
    NotIn(String, Vec<String>),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        match self {
            Requirement::Exists(k) => labels.contains_key(k.as_str()),
            Requirement::DoesNotExist(k) => !labels.contains_key(k.as_str()),
            Requirement::In(k, values) => labels
                .get(k.as_str())
                .is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(k, values) => labels
                .get(k.as_str())
                .is_none_or(|v| values.iter().all(|x| x != v)),
        }
    }
}

/// A parsed label selector: every requirement must hold (comma means AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parses the string form: `a=b,!c,d!=e,f in (g,h),i notin (j),k`.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for anything else.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self(requirements))
    }

    /// Whether `object`'s labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = labels(object);
        self.0.iter().all(|r| r.matches(&labels))
    }
}

/// Splits at commas outside parentheses (`in (a,b)` holds commas of its own).
fn split_top_level(text: &str) -> Result<Vec<&str>, ApiError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| bad_selector(text, "unbalanced ')'"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad_selector(text, "unbalanced '('"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, ApiError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(key.trim(), part)?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(
            check_key(key.trim(), part)?,
            vec![check_value(value.trim(), part)?],
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(
            check_key(key.trim(), part)?,
            vec![check_value(value.trim(), part)?],
        ));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words[..] {
        let rest = rest.trim();
        let (negate, list) = if let Some(list) = rest.strip_prefix("notin") {
            (true, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (false, list)
        } else {
            return Err(bad_selector(part, "expected `in` or `notin`"));
        };
        let inner = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| bad_selector(part, "expected a parenthesised list of values"))?;
        let values = inner
            .split(',')
            .map(|v| check_value(v.trim(), part))
            .collect::<Result<Vec<_>, _>>()?;
        let key = check_key(key, part)?;
        return Ok(if negate {
            Requirement::NotIn(key, values)
        } else {
            Requirement::In(key, values)
        });
    }
    Ok(Requirement::Exists(check_key(part, part)?))
}

/// Label keys: an optional DNS prefix and `/`, then a name of letters, digits, `-`, `_`, `.`.
fn check_key(key: &str, part: &str) -> Result<String, ApiError> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = !name.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(bad_selector(part, "invalid label key"))
    }
}

fn check_value(value: &str, part: &str) -> Result<String, ApiError> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad_selector(part, "invalid label value"))
    }
}

fn bad_selector(text: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!("unable to parse requirement: \"{text}\": {why}"))
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `text` for `resource`, accepting the fields the real API server supports for
    /// it that the lab cares about: `metadata.name` and `metadata.namespace` for all, plus
    /// `spec.nodeName` and `status.phase` for pods, and `spec.type` for services.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for syntax errors and unsupported fields.
    pub fn parse(text: &str, resource: Resource) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !Self::supported(field, resource) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    fn supported(field: &str, resource: Resource) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || (resource == Resource::Pods && matches!(field, "spec.nodeName" | "status.phase"))
            || (resource == Resource::Services && field == "spec.type")
    }

    /// Whether `object` satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => meta_str(object, "name"),
                "metadata.namespace" => meta_str(object, "namespace"),
                path => path
                    .split('.')
                    .try_fold(object, |v, key| v.get(key))
                    .and_then(Value::as_str),
            };
            (actual.unwrap_or_default() == value) == *equal
        })
    }

    /// The name the selector pins down with `metadata.name=X`, if any.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "namespace": "default", "labels": labels}})
    }

    #[test]
    fn kube_proxys_service_selector_excludes_labelled_services() {
        let sel = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(sel.matches(&obj(json!({"app": "web"}))));
        assert!(sel.matches(&json!({"metadata": {"name": "no-labels"}})));
        assert!(!sel.matches(&obj(json!({"service.kubernetes.io/headless": ""}))));
        assert!(!sel.matches(&obj(
            json!({"service.kubernetes.io/service-proxy-name": "x"})
        )));
    }

    #[test]
    fn equality_inequality_existence_and_sets() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= holds when the label is absent");
        assert!(!m("app!=web"));
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (db,web)"));
        assert!(m("tier notin (back),app"));
        assert!(!m("missing"));
        assert!(m(""), "an empty selector matches everything");
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for bad in ["app in (a", "a b c", "app=(x)", "=x", "app in a,b"] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(err.code(), 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_match_name_and_namespace_and_reject_other_fields() {
        let o = obj(json!({}));
        let m = |s: &str| {
            FieldSelector::parse(s, Resource::Nodes)
                .unwrap()
                .matches(&o)
        };
        assert!(m("metadata.name=n"));
        assert!(m("metadata.name==n,metadata.namespace=default"));
        assert!(!m("metadata.name=x"));
        assert!(m("metadata.name!=x"));
        assert_eq!(
            FieldSelector::parse("metadata.name=n", Resource::Nodes)
                .unwrap()
                .name(),
            Some("n")
        );
        assert_eq!(
            FieldSelector::parse("spec.unschedulable=true", Resource::Nodes)
                .unwrap_err()
                .code(),
            400
        );
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "worker"}});
        assert!(FieldSelector::parse("spec.nodeName=worker", Resource::Pods)
            .unwrap()
            .matches(&pod));
    }
}

//! Request paths and query strings: which resource, namespace and object a request is for.

use std::collections::HashMap;

use super::resource::{Resource, DISCOVERY_GROUP};
use super::status::ApiError;

/// What a path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/discovery.k8s.io`
    Group,
    /// `/api/v1`, `/apis/discovery.k8s.io/v1`
    Resources(&'static str),
    Collection {
        resource: Resource,
        namespace: Option<String>,
    },
    Object {
        resource: Resource,
        namespace: Option<String>,
        name: String,
        status: bool,
    },
    /// `/lab/<what>`: the fault-injection and test endpoints.
    Admin(String),
}

/// Parses `path` (percent-decoded per segment).
pub fn parse(path: &str) -> Option<Route> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group_version, rest) = match s.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz" | "readyz" | "livez"] => return Some(Route::Health),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["apis", DISCOVERY_GROUP] => return Some(Route::Group),
        ["api", "v1"] => return Some(Route::Resources("v1")),
        ["apis", DISCOVERY_GROUP, "v1"] => return Some(Route::Resources("discovery.k8s.io/v1")),
        ["lab", rest @ ..] if !rest.is_empty() => return Some(Route::Admin(rest.join("/"))),
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", DISCOVERY_GROUP, "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(*name), false),
        [plural, name, "status"] => (*plural, Some(*name), true),
        _ => return None,
    };
    let resource = Resource::from_path(group_version, plural)?;
    // Namespaced objects are addressed inside their namespace, cluster-scoped ones outside.
    if name.is_some() && resource.namespaced() != namespace.is_some() {
        return None;
    }
    if namespace.is_some() && !resource.namespaced() {
        return None;
    }
    if status && !resource.has_status() {
        return None;
    }
    Some(match name {
        None => Route::Collection {
            resource,
            namespace,
        },
        Some(name) => Route::Object {
            resource,
            namespace,
            name: name.to_string(),
            status,
        },
    })
}

/// Decoded query parameters (the last value of a repeated name wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            });
        Self(pairs.collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A boolean parameter, as Go's `strconv.ParseBool` reads it.
    ///
    /// # Errors
    /// 400 for anything else.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid value for {name}: {other:?}"
            ))),
        }
    }

    /// A non-negative integer parameter.
    ///
    /// # Errors
    /// 400 if it is not one.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("invalid value for {name}: {text:?}"))),
        }
    }

    /// A possibly negative integer parameter (`gracePeriodSeconds`).
    ///
    /// # Errors
    /// 400 if it is not one.
    pub fn signed(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("invalid value for {name}: {text:?}"))),
        }
    }
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_parse_as_kube_rs_builds_them() {
        assert_eq!(
            parse("/api/v1/services"),
            Some(Route::Collection {
                resource: Resource::Services,
                namespace: None
            })
        );
        assert_eq!(
            parse("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"),
            Some(Route::Collection {
                resource: Resource::EndpointSlices,
                namespace: Some("default".into())
            })
        );
        assert_eq!(
            parse("/api/v1/namespaces/default/pods/worker-echo-1/status"),
            Some(Route::Object {
                resource: Resource::Pods,
                namespace: Some("default".into()),
                name: "worker-echo-1".into(),
                status: true
            })
        );
        assert_eq!(
            parse("/api/v1/nodes/worker"),
            Some(Route::Object {
                resource: Resource::Nodes,
                namespace: None,
                name: "worker".into(),
                status: false
            })
        );
        assert_eq!(
            parse("/apis/discovery.k8s.io/v1"),
            Some(Route::Resources("discovery.k8s.io/v1"))
        );
        assert_eq!(
            parse("/lab/drop-watches"),
            Some(Route::Admin("drop-watches".into()))
        );
    }

    #[test]
    fn paths_that_do_not_fit_a_resource_are_not_routed() {
        for path in [
            "/api/v1/services/web",
            "/api/v1/namespaces/default/nodes",
            "/api/v1/namespaces/default/nodes/worker",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x/status",
            "/api/v1/deployments",
            "/apis/apps/v1/deployments",
            "/api/v2/services",
            "/",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn queries_decode_and_tolerate_empty_pairs() {
        let q = Query::parse(Some(
            "&watch=true&labelSelector=%21service.kubernetes.io%2Fheadless&timeoutSeconds=290",
        ));
        assert!(q.flag("watch").unwrap());
        assert_eq!(
            q.get("labelSelector"),
            Some("!service.kubernetes.io/headless")
        );
        assert_eq!(q.number("timeoutSeconds").unwrap(), Some(290));
        assert!(!q.flag("allowWatchBookmarks").unwrap());
        assert!(Query::parse(Some("watch=maybe")).flag("watch").is_err());
        assert!(Query::parse(Some("timeoutSeconds=-1"))
            .number("timeoutSeconds")
            .is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}

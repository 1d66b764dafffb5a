//! The API's operations on the store (create, replace, patch, delete, raw put), independent of
//! HTTP: metadata bookkeeping, per-resource admission, and the controller run after each write.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Map, Value};

use super::alloc::Allocated;
use super::controller::{self, Trigger};
use super::resource::{meta_mut, meta_str, ObjectKey, Resource};
use super::service;
use super::status::{ApiError, FieldError};
use super::store::Store;

/// Metadata fields only the server sets; stripped from what clients send on create.
const SERVER_MANAGED: [&str; 6] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// `metav1.Time`: RFC 3339, whole seconds.
pub fn timestamp_seconds(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// RFC 3339 with fractional seconds, as Go's `time.RFC3339Nano` (trailing zeros dropped).
pub fn timestamp_nanos(t: Timestamp) -> String {
    t.to_string()
}

/// Checks `body` is an object of `resource` and fills in its apiVersion and kind.
fn check_type(body: &mut Value, resource: Resource) -> Result<(), ApiError> {
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the request body is not a JSON object".into(),
        ));
    };
    for (field, expected) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind()),
    ] {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => {
                obj.insert(field.into(), json!(expected));
            }
            Some(given) if given == expected => {}
            Some(given) => {
                return Err(ApiError::BadRequest(format!(
                    "the {field} of the provided object ({given}) does not match the {field} of the request ({expected})"
                )))
            }
        }
    }
    Ok(())
}

/// Settles the object's namespace against the request's.
fn check_namespace(
    body: &mut Value,
    resource: Resource,
    namespace: Option<&str>,
) -> Result<String, ApiError> {
    let meta = meta_mut(body).ok_or_else(|| ApiError::BadRequest("no metadata".into()))?;
    if !resource.namespaced() {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let Some(wanted) = namespace else {
        return Err(ApiError::MethodNotAllowed);
    };
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(wanted));
        }
        Some(given) if given == wanted => {}
        Some(_) => return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
    Ok(wanted.to_string())
}

/// Creates an object in the collection of `resource` (in `namespace` for namespaced ones).
/// Unlike the real API server, a Pod keeps the status it is created with: the lab has no
/// kubelet to report one.
///
/// # Errors
/// 400 for a body that is not an object of the resource, 409 if the name is taken, 422 for an
/// invalid object.
pub fn create(
    store: &mut Store,
    resource: Resource,
    namespace: Option<&str>,
    mut body: Value,
    now: Timestamp,
) -> Result<Arc<Value>, ApiError> {
    check_type(&mut body, resource)?;
    let namespace = check_namespace(&mut body, resource, namespace)?;
    let name = assign_name(store, &mut body, resource)?;
    let key = ObjectKey::new(resource, &namespace, &name);
    if store.get(&key).is_some() {
        return Err(ApiError::AlreadyExists { resource, name });
    }
    let uid = store.new_uid();
    if let Some(meta) = meta_mut(&mut body) {
        for field in SERVER_MANAGED {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(timestamp_seconds(now)));
        meta.insert("generation".into(), json!(1));
    }
    let body = admit(store, &key, body, None)?;
    let stored = store.put(key.clone(), body);
    after_write(store, &key, now);
    Ok(stored)
}

/// The object's name, generated from `metadata.generateName` if it has none.
fn assign_name(
    store: &mut Store,
    body: &mut Value,
    resource: Resource,
) -> Result<String, ApiError> {
    if let Some(name) = meta_str(body, "name").filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    let Some(prefix) = meta_str(body, "generateName").map(str::to_string) else {
        return Err(ApiError::Invalid {
            kind: resource.kind(),
            name: String::new(),
            causes: vec![FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        });
    };
    // generateName's alphabet; the uid supplies the randomness.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let uid = store.new_uid();
    let suffix: String = uid
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect();
    let name = format!("{prefix}{suffix}");
    if let Some(meta) = meta_mut(body) {
        meta.insert("name".into(), json!(name));
    }
    Ok(name)
}

/// Replaces the object under `key` with `body`. With `status_only`, only the body's `status`
/// is taken (the `/status` subresource); otherwise the stored status is kept for resources
/// that have a status subresource.
///
/// # Errors
/// 404 if it does not exist, 409 if the body's resourceVersion is stale, 400 or 422 for a bad
/// body.
pub fn replace(
    store: &mut Store,
    key: &ObjectKey,
    mut body: Value,
    status_only: bool,
    now: Timestamp,
) -> Result<Arc<Value>, ApiError> {
    let old = store.get(key).cloned().ok_or_else(|| not_found(key))?;
    check_type(&mut body, key.resource)?;
    let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
    check_namespace(&mut body, key.resource, ns)?;
    match meta_str(&body, "name") {
        None | Some("") => {
            if let Some(meta) = meta_mut(&mut body) {
                meta.insert("name".into(), json!(key.name));
            }
        }
        Some(name) if name == key.name => {}
        Some(name) => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )))
        }
    }
    if let Some(rv) = meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty()) {
        if Some(rv) != meta_str(&old, "resourceVersion") {
            return Err(ApiError::Conflict {
                resource: key.resource,
                name: key.name.clone(),
                reason: "the object has been modified; please apply your changes to the latest version and try again".into(),
            });
        }
    }
    let mut new = if status_only {
        let mut merged = (*old).clone();
        if let (Some(obj), Some(status)) = (merged.as_object_mut(), body.get("status")) {
            obj.insert("status".into(), status.clone());
        }
        merged
    } else {
        if key.resource.has_status() {
            if let Some(obj) = body.as_object_mut() {
                match old.get("status") {
                    Some(status) => obj.insert("status".into(), status.clone()),
                    None => obj.remove("status"),
                };
            }
        }
        body
    };
    keep_server_metadata(&mut new, &old);
    if !status_only && old.get("spec") != new.get("spec") {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        if let Some(meta) = meta_mut(&mut new) {
            meta.insert("generation".into(), json!(generation));
        }
    }
    let new = admit(store, key, new, Some(&old))?;
    let stored = store.put(key.clone(), new);
    after_write(store, key, now);
    Ok(stored)
}

/// Copies the fields clients cannot change from `old` into `new`.
fn keep_server_metadata(new: &mut Value, old: &Value) {
    let Some(old_meta) = old.get("metadata").and_then(Value::as_object) else {
        return;
    };
    if let Some(meta) = meta_mut(new) {
        for field in SERVER_MANAGED {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
    }
}

/// Applies a JSON merge patch (RFC 7386) to the object under `key`, then replaces it.
///
/// # Errors
/// As [`replace`].
pub fn patch(
    store: &mut Store,
    key: &ObjectKey,
    patch: &Value,
    status_only: bool,
    now: Timestamp,
) -> Result<Arc<Value>, ApiError> {
    let old = store.get(key).cloned().ok_or_else(|| not_found(key))?;
    let mut merged = (*old).clone();
    merge_patch(&mut merged, patch);
    replace(store, key, merged, status_only, now)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(obj) = target.as_object_mut() {
        for (k, v) in fields {
            if v.is_null() {
                obj.remove(k);
            } else {
                merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Deletes the object under `key` and returns it. A scheduled pod is deleted gracefully, as
/// kubelet would need to stop it: with a grace period (`grace`, else its
/// `terminationGracePeriodSeconds`, else 30 s) above zero it only gets a deletionTimestamp
/// and stays, terminating; the lab has no kubelet, so it stays until deleted with grace 0.
///
/// # Errors
/// 404 if it does not exist.
pub fn delete(
    store: &mut Store,
    key: &ObjectKey,
    grace: Option<i64>,
    now: Timestamp,
) -> Result<Arc<Value>, ApiError> {
    let old = store.get(key).cloned().ok_or_else(|| not_found(key))?;
    if key.resource == Resource::Pods {
        let scheduled = old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let grace = grace
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        let terminating = old["metadata"].get("deletionTimestamp").is_some();
        if scheduled && grace > 0 {
            if terminating {
                return Ok(old);
            }
            let mut marked = (*old).clone();
            let deadline =
                Timestamp::from_second(now.as_second().saturating_add(grace)).unwrap_or(now);
            if let Some(meta) = meta_mut(&mut marked) {
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(timestamp_seconds(deadline)),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            let stored = store.put(key.clone(), marked);
            after_write(store, key, now);
            return Ok(stored);
        }
    }
    let gone = store.delete(key).ok_or_else(|| not_found(key))?;
    after_write(store, key, now);
    Ok(gone)
}

/// Stores `body` as given (a test switch for objects the API would refuse): it must name a
/// served apiVersion and kind and have a name; metadata the server manages is filled in where
/// missing. Accepts a `List` (`items`) too, storing each item.
///
/// # Errors
/// 400 if an object cannot be placed.
pub fn put_raw(
    store: &mut Store,
    body: Value,
    now: Timestamp,
) -> Result<Vec<Arc<Value>>, ApiError> {
    if let Some(items) = body.get("items").and_then(Value::as_array) {
        return items
            .iter()
            .map(|item| put_raw_one(store, item.clone(), now))
            .collect();
    }
    put_raw_one(store, body, now).map(|o| vec![o])
}

fn put_raw_one(store: &mut Store, mut body: Value, now: Timestamp) -> Result<Arc<Value>, ApiError> {
    let resource = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .zip(body.get("kind").and_then(Value::as_str))
        .and_then(|(v, k)| Resource::from_kind(v, k))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "the object needs an apiVersion and kind this server serves".into(),
            )
        })?;
    if resource.namespaced() && meta_str(&body, "namespace").is_none_or(str::is_empty) {
        if let Some(meta) = meta_mut(&mut body) {
            meta.insert("namespace".into(), json!(crate::plan::POD_NAMESPACE));
        }
    }
    let key = ObjectKey::of(&body)
        .ok_or_else(|| ApiError::BadRequest("the object needs metadata.name".into()))?;
    let old = store.get(&key).cloned();
    let uid = store.new_uid();
    if let Some(meta) = meta_mut(&mut body) {
        let old_meta = old.as_ref().and_then(|o| o.get("metadata"));
        let keep = |f: &str| old_meta.and_then(|m| m.get(f)).cloned();
        if !meta.contains_key("uid") {
            meta.insert("uid".into(), keep("uid").unwrap_or_else(|| json!(uid)));
        }
        if !meta.contains_key("creationTimestamp") {
            let created =
                keep("creationTimestamp").unwrap_or_else(|| json!(timestamp_seconds(now)));
            meta.insert("creationTimestamp".into(), created);
        }
        meta.entry("generation").or_insert(json!(1));
    }
    let stored = store.put(key.clone(), body);
    after_write(store, &key, now);
    Ok(stored)
}

/// Per-resource admission: Services are defaulted, validated and allocated; other resources
/// must at least parse as their type.
fn admit(
    store: &Store,
    key: &ObjectKey,
    body: Value,
    old: Option<&Value>,
) -> Result<Value, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::BadRequest(format!(
            "the {} in the request body is not valid: {e}",
            key.resource.kind()
        ))
    };
    match key.resource {
        Resource::Services => {
            let mut svc: Service = serde_json::from_value(body).map_err(bad)?;
            // Everything other Services hold: the store's index, less the replaced object's own.
            let mut allocated = Allocated::over(store.indexes(), store.get(key).map(|o| &**o));
            let result = match old.map(|o| serde_json::from_value::<Service>(o.clone())) {
                Some(Ok(old)) => service::admit_update(&mut svc, &old, &mut allocated),
                // An old object that does not parse (stored raw) is replaced like a new one.
                Some(Err(_)) | None => service::admit_create(&mut svc, &mut allocated),
            };
            result.map_err(|causes| ApiError::Invalid {
                kind: "Service",
                name: key.name.clone(),
                causes,
            })?;
            serde_json::to_value(svc).map_err(|e| ApiError::Internal(e.to_string()))
        }
        Resource::EndpointSlices => {
            let slice: EndpointSlice = serde_json::from_value(body.clone()).map_err(bad)?;
            let causes = validate_slice(&slice);
            if causes.is_empty() {
                Ok(body)
            } else {
                Err(ApiError::Invalid {
                    kind: "EndpointSlice",
                    name: key.name.clone(),
                    causes,
                })
            }
        }
        Resource::Pods => {
            serde_json::from_value::<Pod>(body.clone()).map_err(bad)?;
            Ok(body)
        }
        Resource::Nodes => {
            serde_json::from_value::<Node>(body.clone()).map_err(bad)?;
            Ok(body)
        }
    }
}

fn validate_slice(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut causes = Vec::new();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        causes.push(FieldError::not_supported(
            "addressType",
            &slice.address_type,
            &["FQDN", "IPv4", "IPv6"],
        ));
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            causes.push(FieldError::invalid(
                format!("endpoints[{i}].addresses"),
                ep.addresses.len(),
                "must have at least 1 and at most 100 addresses",
            ));
        }
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(p) = port.port.filter(|p| !(1..=65535).contains(p)) {
            causes.push(FieldError::invalid(
                format!("ports[{i}].port"),
                p,
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
    causes
}

fn after_write(store: &mut Store, key: &ObjectKey, now: Timestamp) {
    if let Some(trigger) = Trigger::of(key) {
        controller::reconcile(store, &trigger, now);
    }
}

fn not_found(key: &ObjectKey) -> ApiError {
    ApiError::NotFound {
        resource: key.resource,
        name: key.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp::UNIX_EPOCH;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn create_fills_in_type_and_server_metadata_and_refuses_duplicates() {
        let mut store = Store::new(100);
        let created = create(&mut store, Resource::Services, Some("default"), svc("a"), T).unwrap();
        assert_eq!(created["kind"], "Service");
        assert_eq!(created["apiVersion"], "v1");
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(
            created["metadata"]["creationTimestamp"],
            "1970-01-01T00:00:00Z"
        );
        assert!(created["metadata"]["uid"].is_string());
        let err = create(&mut store, Resource::Services, Some("default"), svc("a"), T).unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(err.reason(), "AlreadyExists");
    }

    #[test]
    fn create_refuses_mismatched_kinds_and_namespaces() {
        let mut store = Store::new(100);
        let mut wrong_kind = svc("a");
        wrong_kind["kind"] = json!("Pod");
        assert_eq!(
            create(
                &mut store,
                Resource::Services,
                Some("default"),
                wrong_kind,
                T
            )
            .unwrap_err()
            .code(),
            400
        );
        let mut wrong_ns = svc("a");
        wrong_ns["metadata"]["namespace"] = json!("other");
        assert_eq!(
            create(&mut store, Resource::Services, Some("default"), wrong_ns, T)
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            create(
                &mut store,
                Resource::Services,
                Some("default"),
                json!([]),
                T
            )
            .unwrap_err()
            .code(),
            400
        );
        let bad_port = json!({"metadata": {"name": "b"}, "spec": {"ports": [{"port": 0}]}});
        assert_eq!(
            create(&mut store, Resource::Services, Some("default"), bad_port, T)
                .unwrap_err()
                .code(),
            422
        );
        let not_a_service = json!({"metadata": {"name": "b"}, "spec": {"ports": "many"}});
        assert_eq!(
            create(
                &mut store,
                Resource::Services,
                Some("default"),
                not_a_service,
                T
            )
            .unwrap_err()
            .code(),
            400
        );
    }

    #[test]
    fn generate_name_gets_a_suffix() {
        let mut store = Store::new(100);
        let body = json!({"metadata": {"generateName": "web-"}, "spec": {"ports": [{"port": 80}]}});
        let created = create(&mut store, Resource::Services, Some("default"), body, T).unwrap();
        let name = created["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }

    #[test]
    fn replace_checks_the_resource_version_and_keeps_server_fields() {
        let mut store = Store::new(100);
        let created = create(&mut store, Resource::Services, Some("default"), svc("a"), T).unwrap();
        let key = ObjectKey::new(Resource::Services, "default", "a");
        let mut stale = svc("a");
        stale["metadata"]["resourceVersion"] = json!("999");
        assert_eq!(
            replace(&mut store, &key, stale, false, T)
                .unwrap_err()
                .code(),
            409
        );

        let mut changed = svc("a");
        changed["spec"]["ports"][0]["port"] = json!(81);
        changed["metadata"]["uid"] = json!("forged");
        let updated = replace(&mut store, &key, changed, false, T).unwrap();
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["spec"]["clusterIP"], created["spec"]["clusterIP"]);
        assert_eq!(updated["spec"]["ports"][0]["port"], 81);

        let missing = ObjectKey::new(Resource::Services, "default", "nope");
        assert_eq!(
            replace(&mut store, &missing, svc("nope"), false, T)
                .unwrap_err()
                .code(),
            404
        );
    }

    #[test]
    fn merge_patch_merges_objects_and_removes_nulls() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(&mut target, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[test]
    fn deleting_a_scheduled_pod_marks_it_terminating_first() {
        let mut store = Store::new(100);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "worker", "containers": []}});
        put_raw(&mut store, pod, T).unwrap();
        let key = ObjectKey::new(Resource::Pods, "default", "p");
        let marked = delete(&mut store, &key, None, T).unwrap();
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "1970-01-01T00:00:30Z"
        );
        assert!(store.get(&key).is_some());
        delete(&mut store, &key, Some(0), T).unwrap();
        assert!(store.get(&key).is_none());
    }

    #[test]
    fn raw_objects_skip_validation_but_get_metadata() {
        let mut store = Store::new(100);
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"}, "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 70000}]}});
        let stored = put_raw(&mut store, bad, T).unwrap();
        assert_eq!(stored[0]["spec"]["clusterIP"], "not-an-ip");
        assert_eq!(stored[0]["metadata"]["namespace"], "default");
        assert!(stored[0]["metadata"]["uid"].is_string());
        assert_eq!(
            put_raw(&mut store, json!({"kind": "Thing"}), T)
                .unwrap_err()
                .code(),
            400
        );
    }
}

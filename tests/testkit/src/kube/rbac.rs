//! The API server's RBAC authorizer, for one service account, built from
//! Roles, ClusterRoles and their bindings (as rendered from `deploy/`). A
//! request is allowed when a rule grants its verb on its API group and
//! resource: a ClusterRole bound by a ClusterRoleBinding anywhere, a Role
//! (or a ClusterRole bound by a RoleBinding) in the binding's namespace.
//! A rule that names resources applies to get, update, patch and delete of
//! that name, to list and watch only with a `metadata.name` field selector
//! for it, and never to create (Kubernetes cannot know the name before the
//! body is decoded, so it does not limit create by name).

use serde_json::Value;

/// What one request asks.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    /// `None`: cluster-scoped, or across all namespaces.
    pub namespace: Option<&'a str>,
    /// The object's name: from the URL, or a list/watch's field selector.
    pub name: Option<&'a str>,
}

#[derive(Clone, Debug)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

#[derive(Clone, Debug)]
struct Grant {
    /// `None`: every namespace and cluster-scoped resources.
    namespace: Option<String>,
    rule: Rule,
}

/// The rules that apply to one service account.
#[derive(Clone, Debug, Default)]
pub struct Rbac {
    grants: Vec<Grant>,
}

impl Rbac {
    /// The grants of `namespace/name` among `objects`. Panics on a binding
    /// to a role that neither `objects` nor the built-in roles define: the
    /// real API server would grant nothing, and the manifests are wrong.
    pub fn for_service_account(objects: &[Value], namespace: &str, name: &str) -> Self {
        let mut grants = Vec::new();
        for binding in objects {
            let kind = binding["kind"].as_str().unwrap_or_default();
            if kind != "RoleBinding" && kind != "ClusterRoleBinding" {
                continue;
            }
            let bound = binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == name
                        && s["namespace"] == namespace
                });
            if !bound {
                continue;
            }
            let scope = (kind == "RoleBinding").then(|| {
                binding["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            });
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = match builtin(role_kind, role_name) {
                Some(rules) => rules,
                None => {
                    let role = objects
                        .iter()
                        .find(|o| {
                            o["kind"] == role_kind
                                && o["metadata"]["name"] == role_name
                                && (role_kind == "ClusterRole"
                                    || o["metadata"]["namespace"].as_str() == scope.as_deref())
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "{kind} {} binds the missing {role_kind} {role_name}",
                                binding["metadata"]["name"]
                            )
                        });
                    role["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(rule)
                        .collect()
                }
            };
            grants.extend(rules.into_iter().map(|rule| Grant {
                namespace: scope.clone(),
                rule,
            }));
        }
        Self { grants }
    }

    pub fn allows(&self, r: &Request<'_>) -> bool {
        self.grants.iter().any(|g| {
            let in_scope = match (&g.namespace, r.namespace) {
                (None, _) => true,
                (Some(bound), Some(asked)) => bound == asked,
                (Some(_), None) => false,
            };
            let rule = &g.rule;
            let named = rule.names.is_empty()
                || (r.verb != "create"
                    && r.name.is_some_and(|n| rule.names.iter().any(|m| m == n)));
            in_scope
                && matches(&rule.groups, r.group)
                && matches(&rule.resources, r.resource)
                && matches(&rule.verbs, r.verb)
                && named
        })
    }

    /// Every grant, for assertions about what is (not) granted.
    pub fn rules(&self) -> impl Iterator<Item = (Option<&str>, &[String], &[String], &[String])> {
        self.grants.iter().map(|g| {
            (
                g.namespace.as_deref(),
                g.rule.resources.as_slice(),
                g.rule.verbs.as_slice(),
                g.rule.names.as_slice(),
            )
        })
    }
}

fn matches(allowed: &[String], asked: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == asked)
}

use crate::strings;

fn rule(v: &Value) -> Rule {
    Rule {
        groups: strings(&v["apiGroups"]),
        resources: strings(&v["resources"]),
        verbs: strings(&v["verbs"]),
        names: strings(&v["resourceNames"]),
    }
}

/// The built-in ClusterRoles the manifests bind, with their rules as the
/// API server bootstraps them.
fn builtin(kind: &str, name: &str) -> Option<Vec<Rule>> {
    let one = |group: &str, resource: &str| Rule {
        groups: vec![group.to_owned()],
        resources: vec![resource.to_owned()],
        verbs: vec!["create".to_owned()],
        names: Vec::new(),
    };
    match (kind, name) {
        ("ClusterRole", "system:auth-delegator") => Some(vec![
            one("authentication.k8s.io", "tokenreviews"),
            one("authorization.k8s.io", "subjectaccessreviews"),
        ]),
        _ => None,
    }
}

//! `spin.toml`, as far as the host needs it: HTTP routes, each
//! component's stores and variables, and the application's variables.

use anyhow::{Context as _, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    trigger: RawTriggers,
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Deserialize)]
struct RawTriggers {
    http: Vec<RawHttpTrigger>,
}

#[derive(Debug, Deserialize)]
struct RawHttpTrigger {
    route: String,
    component: String,
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    allowed_outbound_hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Exact(String),
    /// `/prefix/...`: the prefix itself and everything below it.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub sqlite_databases: Vec<String>,
    pub key_value_stores: Vec<String>,
    /// Component variable name -> template (`"{{ app_var }}"` or literal).
    pub variables: BTreeMap<String, String>,
    pub allowed_outbound_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AppVariable {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub routes: Vec<(Route, String)>,
    pub components: BTreeMap<String, Component>,
    pub variables: BTreeMap<String, AppVariable>,
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        Manifest::parse(&text)
    }

    /// The workspace's own `spin.toml`.
    pub fn workspace() -> anyhow::Result<Manifest> {
        Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin.toml"))
    }

    pub fn parse(text: &str) -> anyhow::Result<Manifest> {
        let raw: RawManifest = toml::from_str(text).context("spin.toml is not a valid manifest")?;
        if raw.spin_manifest_version != 2 {
            bail!("only spin_manifest_version = 2 is supported");
        }
        let mut routes = Vec::new();
        for trigger in raw.trigger.http {
            if !raw.component.contains_key(&trigger.component) {
                bail!(
                    "route {} names unknown component {}",
                    trigger.route,
                    trigger.component
                );
            }
            let route = match trigger.route.strip_suffix("/...") {
                Some(prefix) => Route::Wildcard(prefix.to_owned()),
                None => Route::Exact(trigger.route.clone()),
            };
            routes.push((route, trigger.component));
        }
        let variables = raw
            .variables
            .into_iter()
            .map(|(name, v)| {
                if v.required && v.default.is_some() {
                    bail!("variable {name} cannot be both required and defaulted");
                }
                Ok((
                    name,
                    AppVariable {
                        default: v.default,
                        required: v.required,
                        secret: v.secret,
                    },
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let components = raw
            .component
            .into_iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    Component {
                        id,
                        sqlite_databases: c.sqlite_databases,
                        key_value_stores: c.key_value_stores,
                        variables: c.variables,
                        allowed_outbound_hosts: c.allowed_outbound_hosts.unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(Manifest {
            routes,
            components,
            variables,
        })
    }

    /// The component for `path`, as Spin picks it: an exact route first,
    /// then the longest wildcard prefix.
    pub fn route(&self, path: &str) -> Option<&Component> {
        let exact = self
            .routes
            .iter()
            .find(|(r, _)| matches!(r, Route::Exact(p) if p == path));
        let chosen = exact.or_else(|| {
            self.routes
                .iter()
                .filter(|(r, _)| match r {
                    Route::Wildcard(prefix) => {
                        prefix.is_empty()
                            || path == prefix
                            || path.starts_with(&format!("{prefix}/"))
                    }
                    Route::Exact(_) => false,
                })
                .max_by_key(|(r, _)| match r {
                    Route::Wildcard(p) | Route::Exact(p) => p.len(),
                })
        })?;
        self.components.get(&chosen.1)
    }

    /// The component's variables: each template's `{{ app_var }}` filled
    /// from `lookup` (the `SPIN_VARIABLE_<NAME>` convention), else the
    /// application default. A required variable without a value is an
    /// error, as it is for `spin up`.
    pub fn resolve_variables(
        &self,
        component: &Component,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, template) in &component.variables {
            let value = match template
                .trim()
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
            {
                Some(inner) => {
                    let app_var = inner.trim();
                    let declared = self.variables.get(app_var).with_context(|| {
                        format!("component variable {name} uses undeclared {app_var}")
                    })?;
                    match lookup(app_var).or_else(|| declared.default.clone()) {
                        Some(v) => v,
                        None if declared.required => bail!(
                            "required variable {app_var} is not set (SPIN_VARIABLE_{})",
                            app_var.to_uppercase()
                        ),
                        None => continue,
                    }
                }
                None => template.clone(),
            };
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

/// `SPIN_VARIABLE_<UPPER_NAME>` from the environment.
pub fn env_lookup(name: &str) -> Option<String> {
    std::env::var(format!("SPIN_VARIABLE_{}", name.to_uppercase())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_spin_and_grants_least_privilege() {
        let manifest = Manifest::workspace().unwrap();
        for path in ["/v1/forms/lp1", "/v1/forms/unsubscribe"] {
            assert_eq!(
                manifest.route(path).map(|c| c.id.as_str()),
                Some("forms"),
                "case {path}"
            );
        }
        for path in [
            "/v1/contacts",
            "/v1/contacts/abc/timeline",
            // The catch-all: /healthz and unknown paths.
            "/",
            "/healthz",
            "/v1/contactsx",
            "/v2/contacts",
        ] {
            assert_eq!(
                manifest.route(path).map(|c| c.id.as_str()),
                Some("contacts"),
                "case {path}"
            );
        }
        for component in manifest.components.values() {
            assert!(
                component.allowed_outbound_hosts.is_empty(),
                "{} has outbound hosts",
                component.id
            );
        }
        for (name, variable) in &manifest.variables {
            if variable.secret {
                assert!(
                    variable.required && variable.default.is_none(),
                    "secret {name} must not have a default"
                );
            }
        }
        for (component, names) in [
            ("contacts", kizuna::config::CONTACTS_VARIABLES),
            ("forms", kizuna::config::FORMS_VARIABLES),
            ("purchases", kizuna::config::PURCHASES_VARIABLES),
            ("points", kizuna::config::POINTS_VARIABLES),
            ("segments", kizuna::config::SEGMENTS_VARIABLES),
        ] {
            let declared: Vec<&str> = manifest.components[component]
                .variables
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected = names.to_vec();
            expected.sort_unstable();
            assert_eq!(
                declared, expected,
                "{component}: spin.toml variables differ from what it reads"
            );
        }
        for path in [
            "/v1/webhooks/shopify",
            "/v1/orders",
            "/v1/orders/abc",
            "/v1/webhook-deliveries",
        ] {
            assert_eq!(
                manifest.route(path).map(|c| c.id.as_str()),
                Some("purchases"),
                "case {path}"
            );
        }
    }
}

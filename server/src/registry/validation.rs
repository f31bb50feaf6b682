//! Loading a feature repo: every `*.yaml` file parsed into [`Definitions`],
//! merged (each object declared once) and checked into a [`Registry`] — names,
//! references between objects, duplicates, and what may be a feature.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::{names, Definitions, Error, Registry, Result};
use crate::config::CONFIG_FILE;

impl Registry {
    /// Reads every `*.yaml` in `dir` except `quiver.yaml` and the files in `skip`
    /// (such as a tokens file kept in the repo folder), and validates the result.
    pub(crate) fn from_repo(dir: &Path, project: &str, skip: &[PathBuf]) -> Result<Self> {
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let skip: Vec<PathBuf> = skip.iter().map(|p| canonical(p)).collect();
        let read_dir = std::fs::read_dir(dir).map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = read_dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    && p.file_name().and_then(|n| n.to_str()) != Some(CONFIG_FILE)
                    && !skip.contains(&canonical(p))
            })
            .collect();
        files.sort();
        let mut parsed = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parsed.push((name, text));
        }
        Self::from_files(
            project,
            parsed.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        )
    }

    /// Parses and validates definition files given as `(file name, YAML text)`.
    pub(crate) fn from_files<'a>(
        project: &str,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let mut all = Definitions::default();
        let mut origins = BTreeMap::new();
        for (file, text) in files {
            // An empty file (or only comments) declares nothing.
            let defs: Definitions = if text.trim().lines().all(|l| {
                let l = l.trim();
                l.is_empty() || l.starts_with('#')
            }) {
                Definitions::default()
            } else {
                serde_yaml::from_str(text).map_err(|e| Error::Parse {
                    file: file.to_string(),
                    message: e.to_string(),
                })?
            };
            macro_rules! take {
                ($field:ident, $kind:literal) => {
                    for item in defs.$field {
                        let key = format!("{}:{}", $kind, item.name);
                        if let Some(prev) = origins.get(&key) {
                            return Err(Error::Definition {
                                file: file.to_string(),
                                kind: $kind,
                                name: item.name.clone(),
                                message: format!("declared twice (also in {prev})"),
                            });
                        }
                        origins.insert(key, file.to_string());
                        all.$field.push(item);
                    }
                };
            }
            take!(entities, "entity");
            take!(sources, "source");
            take!(feature_views, "feature_view");
            take!(feature_services, "feature_service");
            take!(on_demand_features, "on_demand_feature_view");
            take!(label_views, "label_view");
        }
        all.derive_features();
        let reg = Registry {
            project: project.to_string(),
            definitions: all,
            origins,
        };
        reg.validate()?;
        Ok(reg)
    }

    fn err(&self, kind: &'static str, name: &str, message: String) -> Error {
        Error::Definition {
            file: self
                .origins
                .get(&format!("{kind}:{name}"))
                .cloned()
                .unwrap_or_else(|| "registry".into()),
            kind,
            name: name.to_string(),
            message,
        }
    }

    fn validate(&self) -> Result<()> {
        let d = &self.definitions;
        for e in &d.entities {
            check_name(e.name.as_str()).map_err(|m| self.err("entity", &e.name, m))?;
            if e.join_keys.is_empty() {
                return Err(self.err("entity", &e.name, "has no join_keys".into()));
            }
            if let Some(k) = first_duplicate(e.join_keys.iter()) {
                return Err(self.err("entity", &e.name, format!("join key {k:?} listed twice")));
            }
        }
        for s in &d.sources {
            check_name(&s.name).map_err(|m| self.err("source", &s.name, m))?;
            if s.path.trim().is_empty() {
                return Err(self.err("source", &s.name, "path is empty".into()));
            }
            if s.path.contains("..") || s.path.contains("://") {
                return Err(self.err(
                    "source",
                    &s.name,
                    format!(
                        "path {:?} must be relative to offline_store.url, without '..'",
                        s.path
                    ),
                ));
            }
        }
        let views = (d.feature_views.iter().map(|v| ("feature_view", v)))
            .chain(d.label_views.iter().map(|v| ("label_view", v)));
        let mut seen = HashSet::new();
        for (kind, v) in views {
            let err = |m: String| self.err(kind, &v.name, m);
            check_name(&v.name).map_err(&err)?;
            if !seen.insert(v.name.as_str()) {
                return Err(err(
                    "a feature view, label view or on-demand view has this name too".into(),
                ));
            }
            if kind == "label_view" && v.ttl.is_some() {
                return Err(err(
                    "a label view has no ttl: labels are read as of the retrieval time".into(),
                ));
            }
            if v.name.contains("__") {
                return Err(err("name must not contain \"__\" (it separates view and feature in full feature names)".into()));
            }
            if v.entities.is_empty() {
                return Err(err("has no entities".into()));
            }
            for e in &v.entities {
                if self.entity(e).is_none() {
                    return Err(err(format!(
                        "unknown entity {e:?} (known: {})",
                        names(d.entities.iter().map(|e| &e.name))
                    )));
                }
            }
            let source = self.source(&v.source).ok_or_else(|| {
                err(format!(
                    "unknown source {:?} (known: {})",
                    v.source,
                    names(d.sources.iter().map(|s| &s.name))
                ))
            })?;
            if kind == "label_view" && v.is_aggregation() {
                return Err(err("a label view cannot have aggregations".into()));
            }
            if v.is_aggregation() {
                if v.features.iter().any(|f| f.aggregation.is_none()) {
                    return Err(err(
                        "declares both features and aggregations: an aggregation view's features are its aggregations".into(),
                    ));
                }
                if v.ttl.is_some() {
                    return Err(err(
                        "an aggregation view has no ttl: each window bounds its own events".into(),
                    ));
                }
                for a in &v.aggregations {
                    if a.window.0.is_zero() {
                        return Err(err(format!(
                            "aggregation {:?}: window must be longer than 0s",
                            a.output_name()
                        )));
                    }
                    if a.column == source.timestamp_field
                        || Some(&a.column) == source.created_timestamp_field.as_ref()
                    {
                        return Err(err(format!(
                            "aggregation {:?}: column {:?} is a timestamp column; count another column",
                            a.output_name(),
                            a.column
                        )));
                    }
                }
            }
            if v.features.is_empty() {
                return Err(err("has no features".into()));
            }
            let keys = self.join_keys(v);
            if let Some(k) = first_duplicate(keys.iter()) {
                return Err(err(format!(
                    "join key {k:?} appears in two of its entities"
                )));
            }
            if let Some(f) = first_duplicate(v.features.iter().map(|f| &f.name)) {
                return Err(err(format!("feature {f:?} listed twice")));
            }
            for f in &v.features {
                if keys.contains(&f.name)
                    || f.name == source.timestamp_field
                    || Some(&f.name) == source.created_timestamp_field.as_ref()
                {
                    return Err(err(format!(
                        "feature {:?} is a join key or timestamp column, not a feature",
                        f.name
                    )));
                }
            }
        }
        for o in &d.on_demand_features {
            let err = |m: String| self.err("on_demand_feature_view", &o.name, m);
            check_name(&o.name).map_err(&err)?;
            if o.name.contains("__") || !seen.insert(o.name.as_str()) {
                return Err(err(
                    "name must not contain \"__\" nor be the name of another view".into(),
                ));
            }
            if o.features.is_empty() {
                return Err(err("has no features".into()));
            }
            let names_used =
                (o.request.iter().map(|r| &r.name)).chain(o.features.iter().map(|f| &f.name));
            if let Some(n) = first_duplicate(names_used) {
                return Err(err(format!(
                    "{n:?} is declared twice (request fields and features share one namespace)"
                )));
            }
            for f in o
                .request
                .iter()
                .map(|r| &r.name)
                .chain(o.features.iter().map(|f| &f.name))
            {
                check_name(f).map_err(|m| err(format!("{f:?}: {m}")))?;
            }
        }
        for s in &d.feature_services {
            check_name(&s.name).map_err(|m| self.err("feature_service", &s.name, m))?;
            if s.features.is_empty() {
                return Err(self.err("feature_service", &s.name, "has no features".into()));
            }
            // Bare-name collisions are checked per request: full names always work.
            self.resolve_refs(&s.features, true)
                .map_err(|e| self.err("feature_service", &s.name, e.to_string()))?;
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("names use letters, digits, '_' or '-' and do not start with a digit".into())
    }
}

fn first_duplicate<'a>(items: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = HashSet::new();
    items.into_iter().find(|i| !seen.insert(*i))
}

#[cfg(test)]
mod tests {
    use crate::registry::fixture::DEFS;
    use crate::registry::Registry;

    #[test]
    fn definition_errors_name_file_object_and_problem() {
        let bad = DEFS.replace("source: m_src", "source: nope");
        let e = Registry::from_files("fraud", [("features.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "features.yaml: feature_view \"merchant_stats\": unknown source \"nope\" (known: card_src, m_src)"
        );
        let e = Registry::from_files("fraud", [("a.yaml", DEFS), ("b.yaml", DEFS)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "b.yaml: entity \"card\": declared twice (also in a.yaml)"
        );
        let bad = DEFS.replace("ttl: 2d", "ttl: 2 days");
        let e = Registry::from_files("fraud", [("f.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.yaml: ") && e.contains("ttl \"2 days\""),
            "{e}"
        );
        let bad = DEFS.replace("dtype: int64", "dtype: int65");
        let e = Registry::from_files("fraud", [("f.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `int65`"), "{e}");
    }
}

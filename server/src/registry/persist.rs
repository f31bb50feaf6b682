//! The recorded registry (`.quiver/registry.json`): saving it atomically, loading
//! it back, and the per-object diff `quiver plan` and `quiver apply` print.

use std::path::Path;

use super::{Definitions, Error, Registry, Result};

impl Registry {
    /// Writes the registry as JSON, atomically (temp file + rename).
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let err = |message: String| Error::Registry {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Reads a registry written by [`Registry::save`]; `None` if there is none yet.
    pub(crate) fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut reg: Registry =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
                        path: path.to_path_buf(),
                        message: format!("corrupt ({e}); run `quiver apply` again"),
                    })?;
                reg.definitions.derive_features();
                Ok(Some(reg))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Registry {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// What applying `self` over `old` changes: one line per object,
    /// `+ kind name` (added), `~ kind name` (changed), `- kind name` (removed).
    pub(crate) fn diff(&self, old: Option<&Registry>) -> Vec<String> {
        let empty = Definitions::default();
        let old = old.map(|r| &r.definitions).unwrap_or(&empty);
        let new = &self.definitions;
        let mut lines = Vec::new();
        diff_kind(
            "entity",
            &old.entities,
            &new.entities,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "source",
            &old.sources,
            &new.sources,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "feature_view",
            &old.feature_views,
            &new.feature_views,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "feature_service",
            &old.feature_services,
            &new.feature_services,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "on_demand_feature_view",
            &old.on_demand_features,
            &new.on_demand_features,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "label_view",
            &old.label_views,
            &new.label_views,
            |x| &x.name,
            &mut lines,
        );
        lines
    }
}

fn diff_kind<T: PartialEq>(
    kind: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    out: &mut Vec<String>,
) {
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => out.push(format!("+ {kind} {}", name(n))),
            Some(o) if o != n => out.push(format!("~ {kind} {}", name(n))),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            out.push(format!("- {kind} {}", name(o)));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::fixture::{reg, DEFS};
    use crate::registry::Registry;

    #[test]
    fn save_load_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert!(Registry::load(&path).unwrap().is_none());
        let r = reg();
        assert_eq!(r.diff(None).len(), 7);
        r.save(&path).unwrap();
        let back = Registry::load(&path).unwrap().unwrap();
        assert_eq!(back, r);
        assert!(r.diff(Some(&back)).is_empty());
        let changed = DEFS.replace("ttl: 2d", "ttl: 3d");
        let r2 = Registry::from_files("fraud", [("features.yaml", changed.as_str())]).unwrap();
        assert_eq!(r2.diff(Some(&back)), ["~ feature_view card_stats"]);
    }
}

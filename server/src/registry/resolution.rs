//! Resolving a request's feature references (a feature service, `view` or
//! `view:feature` refs, label view names) into the views to read and the output
//! column name of every feature.

use std::collections::{HashMap, HashSet};

use super::{
    names, Error, Feature, FeatureView, OnDemandFeature, OnDemandView, Registry, Result, Source,
};

/// A view with the features a request wants from it.
#[derive(Debug, Clone)]
pub(crate) struct ViewRequest<'a> {
    /// The view.
    pub view: &'a FeatureView,
    /// Its source.
    pub source: &'a Source,
    /// Join keys of the view, in entity order.
    pub join_keys: Vec<String>,
    /// The features read from the view, requested or hidden.
    pub features: Vec<Selected<'a>>,
}

/// One feature a request reads from a view.
#[derive(Debug, Clone)]
pub(crate) struct Selected<'a> {
    /// The feature's definition.
    pub feature: &'a Feature,
    /// Its output column name.
    pub output: String,
    /// Read only as an input of the request's on-demand features: fetched and
    /// joined like any other, never returned (nor described, nor given metadata).
    pub hidden: bool,
}

impl<'a> Selected<'a> {
    /// A feature the request asked for, returned as `output`.
    pub(crate) fn visible(feature: &'a Feature, output: String) -> Self {
        Self {
            feature,
            output,
            hidden: false,
        }
    }
}

/// An on-demand view with the features a request wants from it.
#[derive(Debug, Clone)]
pub(crate) struct OnDemandRequest<'a> {
    /// The on-demand view.
    pub view: &'a OnDemandView,
    /// Requested features with their output column names.
    pub features: Vec<(&'a OnDemandFeature, String)>,
}

/// What a feature selection resolves to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resolved<'a> {
    /// Feature views, in order of first mention.
    pub views: Vec<ViewRequest<'a>>,
    /// On-demand views, in order of first mention.
    pub on_demand: Vec<OnDemandRequest<'a>>,
}

impl Registry {
    /// Resolves a feature service into views and output column names.
    pub(crate) fn resolve_service(&self, service: &str, full_names: bool) -> Result<Resolved<'_>> {
        let s = self
            .service(service)
            .ok_or_else(|| Error::ServiceNotFound {
                service: service.to_string(),
                known: names(self.definitions.feature_services.iter().map(|s| &s.name)),
            })?;
        self.resolve_refs(&s.features, full_names)
    }

    /// Whether a token restricted to the services `allowed` may push into
    /// `source`: every view over it is served by one of them.
    pub(crate) fn source_within_services(&self, source: &str, allowed: &[String]) -> Result<bool> {
        let views: Vec<String> = (self.definitions.feature_views.iter())
            .filter(|v| v.source == source)
            .map(|v| v.name.clone())
            .collect();
        if views.is_empty() {
            return Ok(false);
        }
        self.refs_within_services(&views, allowed)
    }

    /// Whether every feature that `refs` names is also served by one of `services`
    /// (what a token restricted to those services may read).
    pub(crate) fn refs_within_services(
        &self,
        refs: &[String],
        services: &[String],
    ) -> Result<bool> {
        fn pairs(r: &Resolved<'_>) -> HashSet<(String, String)> {
            let plain = (r.views.iter()).flat_map(|v| {
                (v.features.iter().filter(|s| !s.hidden))
                    .map(|s| (v.view.name.clone(), s.feature.name.clone()))
            });
            let on_demand = (r.on_demand.iter()).flat_map(|v| {
                v.features
                    .iter()
                    .map(|(f, _)| (v.view.name.clone(), f.name.clone()))
            });
            plain.chain(on_demand).collect()
        }
        let mut allowed = HashSet::new();
        for service in services {
            if let Some(s) = self.service(service) {
                allowed.extend(pairs(&self.resolve_refs(&s.features, true)?));
            }
        }
        Ok(pairs(&self.resolve_refs(refs, true)?).is_subset(&allowed))
    }

    /// Resolves `view` / `view:feature` references (feature views and on-demand
    /// views) into views and output column names, in order of first mention,
    /// without duplicates.
    pub(crate) fn resolve_refs(&self, refs: &[String], full_names: bool) -> Result<Resolved<'_>> {
        let mut out = Resolved::default();
        let mut columns: HashMap<String, String> = HashMap::new();
        let mut claim = |column: String, reference: String| match columns
            .insert(column.clone(), reference.clone())
        {
            Some(first) => Err(Error::NameCollision {
                column,
                first,
                second: reference,
            }),
            None => Ok(column),
        };
        let column = |view: &str, feature: &str| {
            if full_names {
                format!("{view}__{feature}")
            } else {
                feature.to_string()
            }
        };
        for r in refs {
            let (view_name, feature) = match r.split_once(':') {
                Some((v, f)) => (v, Some(f)),
                None => (r.as_str(), None),
            };
            if let Some(odfv) = self.on_demand_view(view_name) {
                let wanted: Vec<&OnDemandFeature> = match feature {
                    None => odfv.features.iter().collect(),
                    Some(f) => {
                        vec![odfv.features.iter().find(|x| x.name == f).ok_or_else(|| {
                            Error::FeatureNotFound {
                                view: odfv.name.clone(),
                                feature: f.to_string(),
                                known: names(odfv.features.iter().map(|f| &f.name)),
                            }
                        })?]
                    }
                };
                let idx = match out.on_demand.iter().position(|v| v.view.name == odfv.name) {
                    Some(i) => i,
                    None => {
                        out.on_demand.push(OnDemandRequest {
                            view: odfv,
                            features: Vec::new(),
                        });
                        out.on_demand.len() - 1
                    }
                };
                for f in wanted {
                    if out.on_demand[idx]
                        .features
                        .iter()
                        .any(|(x, _)| x.name == f.name)
                    {
                        continue;
                    }
                    let c = claim(
                        column(&odfv.name, &f.name),
                        format!("{}:{}", odfv.name, f.name),
                    )?;
                    out.on_demand[idx].features.push((f, c));
                }
                continue;
            }
            let view = self.view(view_name).ok_or_else(|| Error::ViewNotFound {
                view: view_name.to_string(),
                known: names(
                    (self.definitions.feature_views.iter().map(|v| &v.name))
                        .chain(self.definitions.on_demand_features.iter().map(|v| &v.name)),
                ),
            })?;
            let wanted: Vec<&Feature> = match feature {
                None => view.features.iter().collect(),
                Some(f) => vec![view.features.iter().find(|x| x.name == f).ok_or_else(|| {
                    Error::FeatureNotFound {
                        view: view.name.clone(),
                        feature: f.to_string(),
                        known: names(view.features.iter().map(|f| &f.name)),
                    }
                })?],
            };
            let idx = self.view_slot(&mut out.views, view);
            for f in wanted {
                if out.views[idx]
                    .features
                    .iter()
                    .any(|x| x.feature.name == f.name)
                {
                    continue;
                }
                let c = claim(
                    column(&view.name, &f.name),
                    format!("{}:{}", view.name, f.name),
                )?;
                out.views[idx].features.push(Selected::visible(f, c));
            }
        }
        Ok(out)
    }

    /// The index of `view` in `views`, appending it (with no features) if absent.
    pub(crate) fn view_slot<'a>(
        &'a self,
        views: &mut Vec<ViewRequest<'a>>,
        view: &'a FeatureView,
    ) -> usize {
        match views.iter().position(|v| v.view.name == view.name) {
            Some(i) => i,
            None => {
                views.push(ViewRequest {
                    view,
                    source: self.source(&view.source).expect("validated"),
                    join_keys: self.join_keys(view),
                    features: Vec::new(),
                });
                views.len() - 1
            }
        }
    }

    /// Resolves label view names into views with all their labels.
    pub(crate) fn resolve_labels(
        &self,
        labels: &[String],
        full_names: bool,
    ) -> Result<Vec<ViewRequest<'_>>> {
        let mut out: Vec<ViewRequest<'_>> = Vec::new();
        for name in labels {
            let view = self.label_view(name).ok_or_else(|| Error::ViewNotFound {
                view: name.clone(),
                known: names(self.definitions.label_views.iter().map(|v| &v.name)),
            })?;
            let idx = self.view_slot(&mut out, view);
            if out[idx].features.is_empty() {
                out[idx].features = (view.features.iter())
                    .map(|f| {
                        let c = if full_names {
                            format!("{}__{}", view.name, f.name)
                        } else {
                            f.name.clone()
                        };
                        Selected::visible(f, c)
                    })
                    .collect();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::fixture::reg;

    #[test]
    fn resolves_services_and_refs() {
        let r = reg();
        let e = r
            .resolve_service("fraud_v1", false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "output column \"avg_amt_1d\" would appear twice (card_stats:avg_amt_1d and merchant_stats:avg_amt_1d); set \"full_feature_names\": true");
        let v = r.resolve_service("fraud_v1", true).unwrap().views;
        let cols: Vec<&str> = v
            .iter()
            .flat_map(|v| v.features.iter().map(|s| s.output.as_str()))
            .collect();
        assert_eq!(
            cols,
            [
                "card_stats__avg_amt_1d",
                "card_stats__txn_count_1d",
                "merchant_stats__avg_amt_1d"
            ]
        );
        assert_eq!(v[0].view.ttl.unwrap().0.as_secs(), 172_800);
        let e = r
            .resolve_refs(&["card_stats:nope".into()], false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "feature \"nope\" not found in feature view \"card_stats\" (it has: avg_amt_1d, txn_count_1d)");
    }
}

//! `GET /t`: what the caller may use. The tenant its key names (or the
//! node's open tenant, without a key), that tenant's routes, and the models
//! it reaches through KServe. The try-it page is built from it.

use super::auth::authenticate;
use super::{Shared, charged};
use axum::Json;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A tenant as its own callers see it.
#[derive(Debug, Serialize)]
pub struct Catalog {
    pub tenant: String,
    /// Whether requests without a key are this tenant's.
    pub open: bool,
    pub modules: Vec<CatalogRoute>,
    pub models: Vec<CatalogModel>,
}

/// One guest module and where to call it.
#[derive(Debug, Serialize)]
pub struct CatalogRoute {
    pub id: String,
    /// `/t/{tenant}/{module}`; paths below it go to the same module.
    pub route: String,
    /// The example built into the node that the module runs, if it runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
    /// The models it may load, as it names them.
    pub models: Vec<String>,
}

/// One model and its KServe V2 route.
#[derive(Debug, Serialize)]
pub struct CatalogModel {
    pub name: String,
    pub versions: Vec<String>,
    /// `/v2/models/{name}`.
    pub route: String,
}

pub async fn catalog(state: Shared, headers: HeaderMap) -> Response {
    let tenant = match authenticate(&state.node, &headers) {
        Ok(tenant) => tenant,
        Err(refusal) => return charged("", "", refusal),
    };
    let open = state.node.open_tenant().is_some_and(|open| open.id == tenant.id);
    let modules = tenant
        .modules()
        .iter()
        .map(|module| CatalogRoute {
            id: module.id().to_owned(),
            route: format!("/t/{}/{}", tenant.id, module.id()),
            example: tenant.example(module.id()).map(str::to_owned),
            models: shown_grants(module.model_names()),
        })
        .collect();
    let models = tenant
        .models()
        .into_iter()
        .map(|(name, versions)| CatalogModel { route: format!("/v2/models/{name}"), name, versions })
        .collect();
    let catalog = Catalog { tenant: tenant.id.clone(), open, modules, models };
    charged(&tenant.id, "", Json(catalog).into_response())
}

/// A module's grants as a person reads them: `name@version` only where
/// the module may not load every version of `name`.
fn shown_grants<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let names: Vec<&str> = names.collect();
    names
        .iter()
        .filter(|name| name.split_once('@').is_none_or(|(model, _)| !names.contains(&model)))
        .map(|name| (*name).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shown_grants;

    #[test]
    fn a_versioned_grant_is_shown_only_where_the_whole_model_is_not_granted() {
        let shown = shown_grants(["resnet", "resnet@1", "bert@2", "bert@3"].into_iter());
        assert_eq!(shown, ["resnet", "bert@2", "bert@3"]);
    }
}

//! `/ui/entities`: the mirror. The kinds with their counts; a kind's entities with
//! its filters and a search by id; one entity with its state and its history.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page};
use crate::mirror::kinds::{platform_for_request, resolve};
use crate::mirror::{FieldType, FieldValue};
use crate::provider::ProviderKind;
use crate::store::{Entity, EntityFilter};

const PAGE_SIZE: usize = 50;
/// The newest events an entity page shows.
const HISTORY: usize = 200;

pub struct KindRow {
    pub kind: String,
    pub platform: String,
    pub typed: bool,
    pub live: i64,
    pub deleted: i64,
    pub link: String,
}

#[derive(Template)]
#[template(path = "entities.html")]
struct KindsPage {
    layout: Layout,
    kinds: Vec<KindRow>,
}

pub async fn kinds(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
) -> Result<Response, UiError> {
    let kinds = state
        .store
        .mirror_counts()
        .await?
        .into_iter()
        .map(|k| {
            let platform = k.provider.map(|p| p.as_str()).unwrap_or("");
            KindRow {
                link: format!(
                    "/ui/entities/{}?platform={platform}",
                    format::path_segment(&k.kind)
                ),
                platform: platform.to_string(),
                kind: k.kind,
                typed: k.typed,
                live: k.live,
                deleted: k.deleted,
            }
        })
        .collect();
    page(&KindsPage {
        layout: Layout::new("Entities", "entities", &current, &state),
        kinds,
    })
}

/// A kind's filter as a form field.
pub struct FilterField {
    pub name: &'static str,
    pub value: String,
}

pub struct EntityRow {
    pub id: String,
    pub link: String,
    pub source: String,
    pub tenant: String,
    pub deleted: bool,
    pub version: String,
    pub summary: String,
}

#[derive(Template)]
#[template(path = "entity_list.html")]
struct ListPage {
    layout: Layout,
    kind: String,
    platform: String,
    source: String,
    tenant: String,
    id: String,
    include_deleted: bool,
    fields: Vec<FilterField>,
    rows: Vec<EntityRow>,
    next: Option<String>,
}

fn configured(state: &Shared) -> Vec<(String, ProviderKind)> {
    state
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.provider))
        .collect()
}

fn text(query: &HashMap<String, String>, name: &str) -> String {
    query
        .get(name)
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The platform whose table `kind` means: as asked, else as the API decides.
fn platform(state: &Shared, kind: &str, query: &HashMap<String, String>) -> Option<ProviderKind> {
    ProviderKind::parse(&text(query, "platform")).or_else(|| {
        let source = text(query, "source");
        platform_for_request(
            kind,
            (!source.is_empty()).then_some(source.as_str()),
            &configured(state),
        )
    })
}

pub async fn list(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Path(kind): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let provider = platform(&state, &kind, &query);
    let opt = |name: &str| Some(text(&query, name)).filter(|v| !v.is_empty());
    let spec = resolve(provider, &kind);
    let mut fields = Vec::new();
    let mut filters = Vec::new();
    for field in spec.map(|s| s.fields).unwrap_or_default() {
        let Some(name) = field.filter else { continue };
        let value = text(&query, name);
        if !value.is_empty() {
            filters.push((field.column, parse_filter(name, field.ty, &value)?));
        }
        fields.push(FilterField { name, value });
    }
    let id = text(&query, "id");
    let include_deleted = text(&query, "include_deleted") == "true";
    let entities = if id.is_empty() {
        state
            .store
            .list_entities(EntityFilter {
                kind: kind.clone(),
                provider,
                source: opt("source"),
                tenant: opt("tenant"),
                include_deleted,
                fields: filters,
                since_version_ms: None,
                after: opt("after").and_then(|a| a.parse().ok()),
                limit: PAGE_SIZE,
            })
            .await?
    } else {
        state
            .store
            .find_entities(
                provider,
                &kind,
                &id,
                opt("source").as_deref(),
                opt("tenant").as_deref(),
            )
            .await?
    };
    let platform = provider.map(|p| p.as_str()).unwrap_or("").to_string();
    let next = (id.is_empty() && entities.len() == PAGE_SIZE)
        .then(|| entities.last().map(|e| e.position))
        .flatten()
        .map(|after| {
            let mut pairs: Vec<(String, String)> = query
                .iter()
                .filter(|(k, _)| *k != "after")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            pairs.push(("after".into(), after.to_string()));
            format!(
                "/ui/entities/{}?{}",
                format::path_segment(&kind),
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}={}", format::query_value(k), format::query_value(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            )
        });
    let rows = entities.iter().map(|e| row(e, &platform)).collect();
    page(&ListPage {
        layout: Layout::new(format!("Entities: {kind}"), "entities", &current, &state),
        source: text(&query, "source"),
        tenant: text(&query, "tenant"),
        kind,
        platform,
        id,
        include_deleted,
        fields,
        rows,
        next,
    })
}

/// A filter's text as the value its column holds (the API's rules).
fn parse_filter(name: &str, ty: FieldType, value: &str) -> Result<FieldValue, UiError> {
    let bad = |what: &str| UiError::BadRequest(format!("{name} must be {what}"));
    Ok(match ty {
        FieldType::Integer => FieldValue::Integer(value.parse().map_err(|_| bad("an integer"))?),
        FieldType::Bool => match value {
            "true" => FieldValue::Bool(true),
            "false" => FieldValue::Bool(false),
            _ => return Err(bad("true or false")),
        },
        FieldType::Date => {
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map_err(|_| bad("a date YYYY-MM-DD"))?;
            FieldValue::Text(value.to_string())
        }
        FieldType::Text | FieldType::DateTime | FieldType::Number | FieldType::Json => {
            FieldValue::Text(value.to_string())
        }
    })
}

fn entity_link(e: &Entity, platform: &str) -> String {
    let mut link = format!(
        "/ui/entities/{}/{}?source={}",
        format::path_segment(&e.kind),
        format::path_segment(&e.id),
        format::query_value(&e.source)
    );
    if let Some(tenant) = &e.tenant {
        link.push_str(&format!("&tenant={}", format::query_value(tenant)));
    }
    if !platform.is_empty() {
        link.push_str(&format!("&platform={platform}"));
    }
    link
}

fn row(e: &Entity, platform: &str) -> EntityRow {
    // A name or title says more than an id, when the entity has one.
    let summary = ["name", "title", "email", "code"]
        .iter()
        .find_map(|k| e.data.get(k).and_then(|v| v.as_str()))
        .unwrap_or("")
        .to_string();
    EntityRow {
        id: e.id.clone(),
        link: entity_link(e, platform),
        source: e.source.clone(),
        tenant: e.tenant.clone().unwrap_or_default(),
        deleted: e.deleted,
        version: format::time(e.version_ms),
        summary,
    }
}

pub struct HistoryRow {
    pub seq: i64,
    pub received: String,
    pub event_type: String,
    pub op: String,
    pub effect: String,
    pub status: &'static str,
}

#[derive(Template)]
#[template(path = "entity.html")]
struct EntityPage {
    layout: Layout,
    entity: Entity,
    version: String,
    data: String,
    history: Vec<HistoryRow>,
}

pub async fn show(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let provider = platform(&state, &kind, &query);
    let source = text(&query, "source");
    let tenant = text(&query, "tenant");
    let mut found = state
        .store
        .find_entities(
            provider,
            &kind,
            &id,
            (!source.is_empty()).then_some(source.as_str()),
            (!tenant.is_empty()).then_some(tenant.as_str()),
        )
        .await?;
    let entity = match found.len() {
        0 => return Err(UiError::NotFound(format!("no {kind} with id {id:?}"))),
        1 => found.remove(0),
        n => {
            return Err(UiError::BadRequest(format!(
                "{n} entities of kind {kind:?} have id {id:?}: open one from the list, which names its source and tenant"
            )));
        }
    };
    let history = state
        .store
        .entity_history(
            &entity.kind,
            &entity.id,
            &entity.source,
            entity.tenant.as_deref(),
            HISTORY,
        )
        .await?
        .into_iter()
        .rev()
        .map(|e| HistoryRow {
            seq: e.seq.get(),
            received: format::time(e.received_at_ms),
            event_type: e.event_type,
            op: e.entity_op,
            effect: e.mirror_effect.unwrap_or_default(),
            status: e.status.as_str(),
        })
        .collect();
    page(&EntityPage {
        layout: Layout::new(format!("{kind} {id}"), "entities", &current, &state),
        version: format::time(entity.version_ms),
        data: serde_json::to_string_pretty(&entity.data).unwrap_or_default(),
        entity,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_the_api_does() {
        assert!(matches!(
            parse_filter("classId", FieldType::Integer, "7"),
            Ok(FieldValue::Integer(7))
        ));
        assert!(parse_filter("classId", FieldType::Integer, "x").is_err());
        assert!(parse_filter("date", FieldType::Date, "2026-13-01").is_err());
        assert!(crate::mirror::kinds::documented("class"));
    }
}

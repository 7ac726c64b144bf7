//! `GET /system/openapi.json`: the HTTP API's OpenAPI 3.1 document, built
//! from the `#[utoipa::path]` attribute each handler carries beside its
//! code and from the API types in `wisp_core` themselves, so a field added
//! to a type is in the document at once. The list of handlers below is the
//! one part kept by hand: a handler missing from it is missing from the
//! document. Served without a token: it describes the API, it holds nothing.

use std::sync::LazyLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use crate::{admin, cluster, events, invoke, kv, secrets, telemetry, tenants};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wisp",
        description = "The HTTP API of a wisp node: invoking functions, and administering them \
                       under /system with a token (`Authorization: Bearer`). See docs/api.md."
    ),
    paths(
        invoke::by_name,
        invoke::pipe,
        events::routes::enqueue,
        admin::list,
        admin::describe,
        admin::create,
        admin::update,
        admin::remove,
        admin::scale,
        admin::upload,
        admin::artifacts,
        admin::artifact,
        admin::info,
        cluster::nodes,
        events::routes::list,
        events::routes::show,
        events::routes::retry,
        telemetry::routes::logs,
        telemetry::routes::trace,
        telemetry::routes::records,
        telemetry::routes::usage,
        telemetry::routes::metrics,
        tenants::routes::namespaces,
        tenants::routes::create_namespace,
        tenants::routes::remove_namespace,
        tenants::routes::tokens,
        tenants::routes::create_token,
        tenants::routes::revoke_token,
        secrets::list,
        secrets::create,
        secrets::replace,
        secrets::remove,
        secrets::remove_named,
        kv::stores,
        kv::keys,
        kv::read,
        kv::write,
        kv::remove,
        crate::healthz,
        document,
    ),
    modifiers(&Token, &ErrorAnswers, &OptionalBodies, &OpenStatus),
    components(schemas(wisp_core::api::ErrorBody)),
    security(("token" = [])),
    tags(
        (name = "invocation", description = "Calling functions; a private function needs a token of its namespace"),
        (name = "functions", description = "Deploying, updating, scaling and removing functions"),
        (name = "artifacts", description = "The uploaded bytes functions run from"),
        (name = "calls", description = "The durable queue of async calls"),
        (name = "telemetry", description = "Logs, traces, call records and usage"),
        (name = "tenants", description = "Namespaces and their tokens"),
        (name = "secrets", description = "Secrets handed to the functions that declare them"),
        (name = "kv", description = "Key-value stores"),
        (name = "node", description = "The node itself"),
    )
)]
struct Document;

/// The `token` security scheme: `Authorization: Bearer <token>`.
struct Token;

impl Modify for Token {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every error the API answers is `{"error": ...}` with its status: each
/// operation's `default` answer, given here once rather than on each handler.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Ref, ResponseBuilder, content::Content};
        let error = ResponseBuilder::new()
            .description("An error")
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| error.clone().into());
            }
        }
    }
}

/// Every operation of a path.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// A function may be called with no body at all: the invocation routes'
/// bodies are optional (`#[utoipa::path]` makes every body it is given
/// required, unless its type is an `Option`, which would allow JSON `null`).
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::Required;
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !["/function/", "/async-function/", "/pipe/"]
                .iter()
                .any(|prefix| path.starts_with(prefix))
            {
                continue;
            }
            for operation in operations(item) {
                if let Some(body) = &mut operation.request_body {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

/// A `FunctionStatus` is a `FunctionDeployment` (flattened) plus the
/// status's own fields. A deployment refuses unknown fields
/// (`additionalProperties: false`), which in the status's `allOf` would
/// refuse the status's own: the status gets the deployment's properties
/// without that.
struct OpenStatus;

impl Modify for OpenStatus {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, schema::Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let Some(RefOr::T(Schema::Object(mut deployment))) =
            components.schemas.get("FunctionDeployment").cloned()
        else {
            return;
        };
        deployment.additional_properties = None;
        if let Some(RefOr::T(Schema::AllOf(status))) = components.schemas.get_mut("FunctionStatus")
        {
            for item in &mut status.items {
                if matches!(item, RefOr::Ref(reference) if reference.ref_location.ends_with("/FunctionDeployment"))
                {
                    *item = RefOr::T(Schema::Object(deployment.clone()));
                }
            }
        }
    }
}

/// The document, built once.
static JSON: LazyLock<String> = LazyLock::new(|| {
    let mut document = Document::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document.to_json().expect("the OpenAPI document serializes")
});

#[utoipa::path(
    get,
    path = "/system/openapi.json",
    tag = "node",
    summary = "This document",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json"))
)]
pub(crate) async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        JSON.to_string(),
    )
        .into_response()
}

/// Raw bytes in a request or answer: artifacts and key-value values.
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// A function's request or answer body: whatever the function takes or sends.
pub(crate) struct Anything;

impl utoipa::PartialSchema for Anything {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{Object, SchemaType};
        Object::with_type(SchemaType::AnyValue).into()
    }
}

impl utoipa::ToSchema for Anything {}

//! API errors: a status and a JSON `{"error": ...}` body.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use wisp_core::{
    api::ErrorBody,
    tenancy::{Forbidden, QuotaExceeded},
};

/// An error the API answers with.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What was wrong, in one sentence a user can act on.
    pub message: String,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no token, or one the node does not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: nothing by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: the node failed. The detail goes to the log, not to the client.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the node's log",
        )
    }
}

impl From<wisp_store::StoreError> for ApiError {
    fn from(error: wisp_store::StoreError) -> Self {
        match error {
            wisp_store::StoreError::UnknownArtifact(_)
            | wisp_store::StoreError::BadArchive { .. } => Self::bad_request(error.to_string()),
            other => Self::internal(other),
        }
    }
}

impl From<Forbidden> for ApiError {
    fn from(error: Forbidden) -> Self {
        Self::new(StatusCode::FORBIDDEN, error.to_string())
    }
}

impl From<QuotaExceeded> for ApiError {
    fn from(error: QuotaExceeded) -> Self {
        Self::new(StatusCode::FORBIDDEN, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        // Every 401 says how to authenticate (RFC 9110).
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// axum's extractor of the same name, answering what it cannot parse with
/// the API's JSON error (axum's status and message) instead of plain text.
macro_rules! json_rejection {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        pub(crate) struct $name<T>(pub T);

        impl<S, T> axum::extract::FromRequestParts<S> for $name<T>
        where
            T: serde::de::DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, ApiError> {
                match axum::extract::$name::<T>::from_request_parts(parts, state).await {
                    Ok(axum::extract::$name(value)) => Ok(Self(value)),
                    Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
                }
            }
        }
    };
}

json_rejection!(
    Query,
    "The query string, parsed; a 400 in JSON when it does not fit."
);
json_rejection!(
    Path,
    "The path's parameters, parsed; a 400 in JSON when they do not fit."
);

//! The `/api/v1` JSON resources.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{ApiError, ApiState, Body, Ctx};

/// Dispatches an authenticated `/api/v1` request.
pub async fn dispatch(req: Request<Incoming>, ctx: Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let _ = ctx;
    Err(ApiError::not_found(format!(
        "no such resource {}",
        req.uri().path()
    )))
}

/// `POST /api/v1/auth/login`.
pub async fn login(
    req: Request<Incoming>,
    state: &ApiState,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let _ = (req, state, peer);
    Err(ApiError::not_found("login is not available yet"))
}

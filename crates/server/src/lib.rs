#![deny(clippy::unwrap_used)]
//! sluice-server: the OpenAI-compatible HTTP server in front of the engine.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or SSE streams),
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text), and the web chat
//! (`GET /`, `GET /assets/{file}`, see `web`).
//!
//! The server never touches a device: a request is validated into a typed
//! `ValidatedRequest` (on a blocking thread: tokenizing and templating are CPU work),
//! submitted to the engine actor through `EngineHandle`, and its deltas are relayed.
//! Admission is a semaphore: a permit is taken before any work and travels with the
//! response (the SSE body owns it); when none is free the answer is 429 at once.

pub mod args;
pub mod error;
pub mod generation;
pub mod metrics;
mod openai;
pub mod validate;
pub mod web;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sluice_engine::EngineHandle;
use sluice_model::chat_template::ChatTemplate;
use sluice_model::tokenizer::Tokenizer;
use sluice_protocol::{ApiError, ModelCard, ModelList};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use args::ServeArgs;
pub use error::{HttpError, ServerError};
pub use validate::{ModelLimits, ValidatedRequest, Validator};

/// Everything the server needs besides the engine.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Generation requests in flight (streams included) before new ones get 429.
    pub max_pending: usize,
    /// The name clients send as `model` (default: the model's own name).
    pub served_model_name: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// After SIGINT/SIGTERM, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_pending: 256,
            served_model_name: None,
            max_body_bytes: 16 << 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

struct Inner {
    engine: EngineHandle,
    validator: Arc<Validator>,
    api_key: Option<String>,
    admission: Arc<Semaphore>,
    max_pending: usize,
    max_body_bytes: usize,
    rejected: AtomicU64,
    created: u64,
}

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Compiles the chat template (if any) and reads the engine's limits.
    pub fn new(
        config: &ServerConfig,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<&str>,
    ) -> Result<AppState, ServerError> {
        if config.max_pending == 0 {
            return Err(ServerError::Config("max_pending must be at least 1".into()));
        }
        if config.max_body_bytes == 0 {
            return Err(ServerError::Config(
                "the request body limit must be positive".into(),
            ));
        }
        let template = chat_template
            .map(|src| ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token()))
            .transpose()
            .map_err(ServerError::ChatTemplate)?;
        let info = engine.info();
        let limits = ModelLimits {
            served_name: config
                .served_model_name
                .clone()
                .unwrap_or_else(|| info.model_name.clone()),
            max_model_len: info.max_model_len,
            vocab_size: info.vocab_size,
            kv_capacity_tokens: info.num_blocks * info.block_size,
        };
        Ok(AppState(Arc::new(Inner {
            engine,
            validator: Arc::new(Validator::new(limits, tokenizer, template)),
            api_key: config.api_key.clone().filter(|k| !k.is_empty()),
            admission: Arc::new(Semaphore::new(config.max_pending)),
            max_pending: config.max_pending,
            max_body_bytes: config.max_body_bytes,
            rejected: AtomicU64::new(0),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })))
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }

    pub fn tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(self.0.validator.tokenizer())
    }

    pub fn served_model_name(&self) -> &str {
        &self.0.validator.limits().served_name
    }

    fn validator(&self) -> Arc<Validator> {
        Arc::clone(&self.0.validator)
    }

    /// Takes an admission permit or answers 429 at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.0.admission)
            .try_acquire_owned()
            .map_err(|_| {
                self.0.rejected.fetch_add(1, Ordering::Relaxed);
                ApiError::overloaded(format!(
                    "The server is at its limit of {} requests in flight; retry later.",
                    self.0.max_pending
                ))
            })
    }

    fn body_error(&self, r: &BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                "invalid_request_error",
                format!(
                    "The request body is larger than the limit of {} bytes.",
                    self.0.max_body_bytes
                ),
                None,
                Some("request_too_large"),
            )
        } else {
            ApiError::invalid_request(
                format!("Cannot read the request body: {}", r.body_text()),
                None,
            )
        }
    }

    fn server_stats(&self) -> metrics::ServerStats {
        metrics::ServerStats {
            requests_in_flight: self.0.max_pending - self.0.admission.available_permits(),
            max_pending: self.0.max_pending,
            requests_rejected: self.0.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal how many leading
/// bytes of a guess were right. Only the secret's length decides the loop count.
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = (given.len() ^ secret.len()) as u64;
    for (i, &s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= u64::from(g ^ s);
    }
    std::hint::black_box(diff) == 0
}

async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.0.api_key {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
            });
        let ok = token.is_some_and(|t| constant_time_eq(t.as_bytes(), key.as_bytes()));
        if !ok {
            let msg = if token.is_none() {
                "Missing API key: send it as `Authorization: Bearer <key>`."
            } else {
                "Incorrect API key provided."
            };
            let mut resp = HttpError(ApiError::authentication(msg)).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

fn model_card_of(state: &AppState) -> ModelCard {
    let mut card = ModelCard::new(state.served_model_name(), state.0.created, "sluice");
    card.max_model_len = Some(state.0.validator.limits().max_model_len as u64);
    card
}

async fn models(State(state): State<AppState>) -> Response {
    axum::Json(ModelList::new(vec![model_card_of(&state)])).into_response()
}

/// `GET /v1/models/{id}` (ids may contain `/`, as Hugging Face names do).
async fn model_card(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if id != state.served_model_name() {
        return HttpError(ApiError::model_not_found(&id)).into_response();
    }
    axum::Json(model_card_of(&state)).into_response()
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    let mut m = state.0.engine.metrics();
    if m.scheduler.kv.num_blocks == 0 {
        // Before the engine's first published snapshot: every block is free.
        let blocks = state.0.engine.info().num_blocks;
        m.scheduler.kv.num_blocks = blocks;
        m.scheduler.kv.num_free_blocks = blocks;
    }
    let text = metrics::render(state.served_model_name(), &m, state.server_stats());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn not_found(req: Request) -> Response {
    HttpError(ApiError::not_found(format!(
        "No route for {} {}",
        req.method(),
        req.uri().path()
    )))
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    HttpError(ApiError::new(
        405,
        "invalid_request_error",
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
        None,
        None,
    ))
    .into_response()
}

/// The routes, with auth on `/v1/*` and the body-size limit.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/completions", post(openai::completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/models", get(models))
        .route("/models/{*id}", get(model_card))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .merge(web::web_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.0.max_body_bytes))
        .with_state(state)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish for up to `grace`.
pub async fn serve_on<F>(
    listener: TcpListener,
    state: AppState,
    shutdown: F,
    grace: Duration,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut graceful_rx = rx.clone();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|v| *v).await;
    });
    let mut grace_rx = rx;
    let deadline = async move {
        if grace_rx.wait_for(|v| *v).await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r.map_err(ServerError::Io),
        _ = deadline => {
            tracing::warn!("requests still in flight after {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

/// `sluice serve`: binds `host:port`, serves until SIGINT/SIGTERM (a second signal stops
/// at once), drains requests in flight, then stops the engine.
pub async fn serve(
    config: ServerConfig,
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<String>,
) -> Result<(), ServerError> {
    let state = AppState::new(&config, engine.clone(), tokenizer, chat_template.as_deref())?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr()?;
    eprintln!(
        "sluice: serving model `{}` on http://{local} (max context {} tokens{})",
        state.served_model_name(),
        engine.info().max_model_len,
        if config.api_key.is_some() {
            ", API key required"
        } else {
            ""
        }
    );
    let shutdown = async {
        shutdown_signal().await;
        eprintln!("sluice: shutting down; finishing requests in flight (signal again to stop now)");
        tokio::spawn(async {
            shutdown_signal().await;
            eprintln!("sluice: stopping now");
            std::process::exit(130);
        });
    };
    let served = serve_on(listener, state, shutdown, config.shutdown_grace).await;
    let stopped = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    if let Err(e) = stopped {
        tracing::error!("engine shutdown failed: {e}");
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"secr", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // A prefix padded with zero bytes must not pass.
        assert!(!constant_time_eq(b"sec\0\0\0", b"sec"));
    }
}

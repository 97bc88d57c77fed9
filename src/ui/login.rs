//! Signing in with an API token, and out. The token is posted in a form (never in a
//! URL), compared in constant time, and never written back into a page.

use askama::Template;
use axum::extract::{Extension, Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::session::{self, Current};
use super::{Layout, Shared, UiError, see_other, set_cookie};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    csrf: String,
    error: Option<&'static str>,
}

pub async fn form(Extension(current): Extension<Current>) -> Result<Response, UiError> {
    if current.signed_in {
        return Ok(see_other("/ui"));
    }
    render(&current, None, StatusCode::OK)
}

fn render(
    current: &Current,
    error: Option<&'static str>,
    status: StatusCode,
) -> Result<Response, UiError> {
    let page = LoginPage {
        layout: Layout::bare("Sign in"),
        csrf: current.csrf.clone(),
        error,
    };
    Ok((status, Html(page.render()?)).into_response())
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    token: String,
}

pub async fn submit(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    headers: HeaderMap,
    Form(credentials): Form<Credentials>,
) -> Result<Response, UiError> {
    if !state.token_matches(&credentials.token) {
        return render(
            &current,
            Some("That token is not one of the gateway's API tokens."),
            StatusCode::UNAUTHORIZED,
        );
    }
    // A new id on signing in: an id planted before (session fixation) stays anonymous.
    if let Some(old) = session::id_from(&headers) {
        state.sessions.remove(&old);
    }
    let (id, _) = state.sessions.create(true);
    let mut response = see_other("/ui");
    set_cookie(&mut response, Some(&id), state.secure_cookies);
    Ok(response)
}

pub async fn logout(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = session::id_from(&headers) {
        state.sessions.remove(&id);
    }
    let mut response = see_other("/ui/login");
    set_cookie(&mut response, None, state.secure_cookies);
    response
}

//! The service hyper calls for every request. Final pages that memory can answer (a `304`, or a `200` from the
//! page cache) are answered here, ahead of the router; everything else goes through the router.
//!
//! Revalidating a final page is the most frequent request there is, and the cheapest: routing, extractors and
//! the boxed services they go through cost more than the answer. The answers are the ones the router's page
//! handlers give (`pages::from_memory` is their own code), counted, logged and given CORS headers the same way.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use tower_service::Service;

use super::{AppState, pages};

#[derive(Clone)]
pub struct Front {
    state: AppState,
    router: Router,
}

impl Front {
    pub fn new(state: AppState) -> Front {
        Front {
            router: super::router(state.clone()),
            state,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture;

    fn call(&self, req: Request<Incoming>) -> FrontFuture {
        let began = Instant::now();
        let (method, headers) = (req.method(), req.headers());
        if let Some((mut res, route)) = pages::from_memory(&self.state, method, req.uri(), headers)
        {
            self.state
                .metrics
                .finish_route(method, route, began, &mut res);
            return FrontFuture::Answered {
                res: std::future::ready(Ok(res)),
            };
        }
        FrontFuture::Routed {
            inner: self.router.clone().call(req.map(Body::new)),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = FrontProj]
    pub enum FrontFuture {
        Answered { #[pin] res: std::future::Ready<Result<Response, Infallible>> },
        Routed { #[pin] inner: RouteFuture<Infallible> },
    }
}

impl Future for FrontFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FrontProj::Answered { res } => res.poll(cx),
            FrontProj::Routed { inner } => inner.poll(cx),
        }
    }
}

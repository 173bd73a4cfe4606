//! The HTTP server under the routes (HTTP/1.1, and HTTP/2 for clients that start with it, as
//! `warp::serve` has it): accepts connections until shutdown, then stops accepting and lets the
//! requests in flight finish. Written out (rather than `warp::serve`) so
//! that a client closing its connection mid-request is a debug line, not an error of the
//! service.

use std::{convert::Infallible, future::Future, io::ErrorKind, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use warp::{reply::Response, Filter};

/// Serves `routes` on `listener` until `shutdown` completes.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = warp::service(routes);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // A client that gave up while waiting in the backlog: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(error) => {
                // Out of file descriptors, say: wait for some to be freed rather than spin.
                tracing::error!(error = %error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let connection = auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "a client connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

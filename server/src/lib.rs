//! `petrel-server`: a fast, hardened static file server for a Petrel (TUF) tree.
//!
//! The tree is the one `petrel-repo publish` writes (`metadata/` and `targets/`). The
//! server answers GET and HEAD only, with single-range requests, strong ETags,
//! `Last-Modified`, and cache headers that let caches keep consistent-snapshot names
//! forever while revalidating the moving ones (`timestamp.json`, `root.json`). See
//! `docs/server.md` for the behaviour contract. With a report database configured
//! ([`ServerConfig::reports`]) it also takes signed device reports on `POST /v1/reports`
//! ([`reports`]), and serves views of them: the rollout summary, the fleet view and a
//! read-only HTML dashboard ([`dashboard`]).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use petrel_server::{Server, ServerConfig};
//! let config = ServerConfig::new("/srv/petrel/tree", "127.0.0.1:0".parse().unwrap());
//! let server = Server::bind(config).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod conditional;
pub mod config;
pub mod conns;
pub mod dashboard;
pub mod limits;
pub mod path;
pub mod range;
pub mod reports;
pub mod router;
pub mod server;
pub mod static_files;
pub mod tree;

pub use config::{parse_duration, Limits, ServerConfig};
pub use server::Server;

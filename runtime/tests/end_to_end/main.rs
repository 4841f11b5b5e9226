//! The `modelpod` binary as users and operators run it: real processes spoken to over HTTP,
//! TLS and raw TCP. One test binary rather than one per file, because each links the whole
//! runtime and a clean build's disk is mostly test binaries.

mod entry_script;
mod graceful_shutdown;
mod grpc;
mod hostile;
mod import;
mod kubernetes;
mod rollout;
mod router;
mod sku_command;
mod tls;

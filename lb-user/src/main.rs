//! `xlb`: the agent and its CLI (see `xlb::cli`).
#![forbid(unsafe_code)]

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    xlb::cli::main().await
}

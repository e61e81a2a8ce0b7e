//! `banger`: thin entry point; everything is in the `banger_cli` library.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    banger_cli::run(
        std::env::args().collect(),
        banger_config::Environment::current(),
    )
    .await
}

pub(super) async fn run(_a: Args) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
#[derive(Debug, clap::Args)]
pub struct Args {}

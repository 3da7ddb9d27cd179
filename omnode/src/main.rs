mod ckpt;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}
#[derive(clap::Subcommand)]
enum Cmd {
    #[command(flatten)]
    Ckpt(ckpt::Cmd),
}
fn main() -> std::process::ExitCode {
    match Cli::parse().cmd {
        Some(Cmd::Ckpt(c)) => ckpt::run(c),
        None => std::process::ExitCode::SUCCESS,
    }
}

//! `omnode freeze | thaw | image`: front end of the `migrate` checkpoint/restore engine.
//! (Owned by the checkpoint/restore work; this is a placeholder until it lands.)

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Stop PID, write its image, end the process.
    Freeze { pid: i32 },
}

pub fn run(cmd: Cmd) -> std::process::ExitCode {
    eprintln!("omnode: {cmd:?}: not built yet");
    std::process::ExitCode::FAILURE
}

//! `omnode generate` (hidden; used by scripts/install.sh and packaging): man pages and shell
//! completions made from the clap definitions, for `omnode`, its subcommands, and every
//! classic name of [`crate::CLASSIC`], and the list of those names.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::{CLASSIC, Cli, Error};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Write man pages (section 1) into this folder.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,
    /// Write completions into this folder: bash/, zsh/ and fish/ below it.
    #[arg(long, value_name = "DIR")]
    pub completions: Option<PathBuf>,
    /// Print the classic names (one a line) that are links to omnode.
    #[arg(long)]
    pub names: bool,
}

/// The commands to document: `omnode`, then each classic name as its own command.
fn commands() -> Vec<clap::Command> {
    let omnode = Cli::command();
    let mut all = vec![omnode.clone()];
    for c in CLASSIC {
        let sub = omnode
            .find_subcommand(c.cmd)
            .expect("every classic name names a subcommand (tested)")
            .clone()
            .name(c.name)
            .bin_name(c.name)
            .version(env!("CARGO_PKG_VERSION"));
        all.push(sub);
    }
    all
}

pub fn generate(a: GenerateArgs) -> Result<(), Error> {
    if a.names {
        for c in CLASSIC {
            println!("{}", c.name);
        }
    }
    if let Some(dir) = &a.man {
        for path in man_pages(dir)? {
            println!("{}", path.display());
        }
    }
    if let Some(dir) = &a.completions {
        for path in completions(dir)? {
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("{}: {e}", path.display()))
}

/// Write `omnode.1`, `omnode-SUB.1` for each visible subcommand, and `NAME.1` for each
/// classic name; return the files written.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut pages: Vec<(String, clap::Command)> = Vec::new();
    let omnode = Cli::command();
    for sub in omnode.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("omnode-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone().name(name).version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for cmd in commands() {
        pages.push((cmd.get_name().to_string(), cmd));
    }
    let mut written = Vec::new();
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .section("1")
            .render(&mut buf)
            .map_err(io(&path))?;
        std::fs::write(&path, buf).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Write bash, zsh and fish completions for `omnode` and each classic name.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    use clap_complete::Shell;
    let mut written = Vec::new();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        for mut cmd in commands() {
            let name = cmd.get_name().to_string();
            let path = d.join(file.replace("{}", &name));
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut buf);
            std::fs::write(&path, buf).map_err(io(&path))?;
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_for_omnode_and_each_classic_name() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(&dir.path().join("man1")).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in ["omnode.1", "omnode-status.1", "omnode-setpe.1"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        for c in CLASSIC {
            let page =
                std::fs::read_to_string(dir.path().join(format!("man1/{}.1", c.name))).unwrap();
            assert!(page.contains(".TH") && page.contains(c.name), "{page}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let comp = completions(&dir.path().join("completions")).unwrap();
        assert_eq!(comp.len(), 3 * (1 + CLASSIC.len()));
        let bash = std::fs::read_to_string(dir.path().join("completions/bash/omnode")).unwrap();
        assert!(
            bash.contains("status") && bash.contains("--key-file"),
            "{bash}"
        );
        let setpe = std::fs::read_to_string(dir.path().join("completions/bash/setpe")).unwrap();
        assert!(setpe.contains("--file"), "{setpe}");
    }
}

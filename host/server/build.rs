//! Records the commit the node is built from, for `mantle_build_info`:
//! `MANTLE_COMMIT` when set (a build from a source archive), else what git
//! says, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MANTLE_COMMIT");
    let commit = std::env::var("MANTLE_COMMIT").ok().filter(|c| !c.is_empty()).or_else(git_head);
    println!("cargo:rustc-env=MANTLE_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}

/// The checked-out commit, and a rerun whenever it changes.
fn git_head() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok().filter(|out| out.status.success())?;
        String::from_utf8(out.stdout).ok().map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    // `logs/HEAD` grows with every commit, checkout and reset, also when
    // the branch's ref is packed and no loose ref file exists to watch.
    for file in ["HEAD", "logs/HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // A path that does not exist would make cargo rerun this on every
        // build.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", file])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

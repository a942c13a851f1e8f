//! `mantle bundle`: pack a bundle directory into one file, signed or not.

use super::{Failure, count};
use anyhow::Context;
use clap::Args;
use mantle::bundle::{Bundle, MANIFEST, keys};
use std::path::PathBuf;

/// Pack a bundle directory (its mantle.toml and the files it names) into
/// one file that lists the SHA-256 of every file, optionally signed.
#[derive(Args)]
#[command(after_help = "Example:\n  mantle keygen acme\n  mantle bundle vision/ -o vision.mbundle --sign acme.key")]
pub struct BundleArgs {
    /// The directory with mantle.toml.
    dir: PathBuf,
    /// The bundle file to write.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Sign the bundle with this secret key (from `mantle keygen`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
}

pub fn run(args: BundleArgs) -> Result<(), Failure> {
    let bundle =
        Bundle::read_dir(&args.dir).with_context(|| format!("cannot bundle {}", args.dir.join(MANIFEST).display()))?;
    let key = args.sign.as_deref().map(keys::read_signing_key).transpose()?;
    let packed = bundle.pack(key.as_ref())?;
    // Written beside the target and renamed, so that a failure never
    // leaves a truncated bundle under the requested name.
    let partial = args.output.with_extension("partial");
    std::fs::write(&partial, &packed)
        .and_then(|()| std::fs::rename(&partial, &args.output))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let info = &bundle.manifest.bundle;
    let signed = match &key {
        Some(key) => format!("signed by {}", hex::encode(key.verifying_key().as_bytes())),
        None => "unsigned".to_owned(),
    };
    println!(
        "{} {} -> {} ({}, {}, {:.1} MB, {signed})",
        info.name,
        info.version,
        args.output.display(),
        count(bundle.manifest.modules.len(), "module"),
        count(bundle.manifest.models.len(), "model"),
        packed.len() as f64 / 1e6
    );
    Ok(())
}

//! `mantle keygen`: a new ed25519 key pair for signing bundles.

use super::Failure;
use clap::Args;
use mantle::bundle::keys;
use std::path::PathBuf;

/// Make an ed25519 key pair for signing bundles: NAME.key (secret, readable
/// by you only) and NAME.pub (give it to the nodes that should trust it).
#[derive(Args)]
pub struct KeygenArgs {
    /// The path of the pair without extension, e.g. `keys/acme`.
    name: PathBuf,
}

pub fn run(args: KeygenArgs) -> Result<(), Failure> {
    let key = keys::generate()?;
    let (secret, public) = keys::write_pair(&key, &args.name)?;
    println!("secret key: {}", secret.display());
    println!("public key: {} ({})", public.display(), hex::encode(key.verifying_key().as_bytes()));
    Ok(())
}

//! `mantle key`: a new API key for a tenant, and the hash that goes in the
//! node configuration.

use super::Failure;
use anyhow::Context;
use clap::Args;
use mantle::types::Sha256;
use std::io::Read;

/// Make a new tenant API key and print it with its SHA-256, or print the
/// hash of a key read from stdin.
#[derive(Args)]
pub struct KeyArgs {
    /// Read an existing key from stdin instead of making a new one.
    #[arg(long)]
    stdin: bool,
}

pub fn run(args: KeyArgs) -> Result<(), Failure> {
    let key = if args.stdin {
        let mut key = String::new();
        std::io::stdin().read_to_string(&mut key).context("cannot read the key from stdin")?;
        key.trim().to_owned()
    } else {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
        format!("mk_{}", hex::encode(secret))
    };
    if key.is_empty() {
        return Err(anyhow::anyhow!("the key is empty").into());
    }
    if !args.stdin {
        println!("key:        {key}");
    }
    println!("key_sha256: \"{}\"", Sha256::of(key.as_bytes()));
    Ok(())
}

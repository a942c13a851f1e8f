//! `mantle push` and `mantle pull`: a packed bundle to and from an OCI
//! registry, as an artifact laid out as `docs/OCI.md` says.

use super::Failure;
use anyhow::Context;
use clap::Args;
use mantle::bundle::Packed;
use mantle::oci::credentials::{docker_config_path, docker_credentials};
use mantle::oci::registry::{Access, Reference, Registry, parse_reference};
use mantle::oci::{Artifact, oci_digest};
use std::path::PathBuf;

/// How to reach the registry, for both commands.
#[derive(Args)]
pub struct AccessArgs {
    /// Speak plain HTTP to the registry: for a registry on loopback.
    #[arg(long)]
    insecure: bool,
    /// The registry user, for basic auth or the token the registry hands
    /// out for it. Without one, push, pull and run use the credentials
    /// `docker login` wrote for the registry ($DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json), if any; deploy sends the nodes none.
    #[arg(long, env = "MANTLE_REGISTRY_USERNAME", requires = "password")]
    username: Option<String>,
    /// The registry password or access token.
    #[arg(long, env = "MANTLE_REGISTRY_PASSWORD", hide_env_values = true, requires = "username")]
    password: Option<String>,
}

impl AccessArgs {
    /// The access given on the command line or in the environment only.
    pub(super) fn access(&self) -> Access {
        Access { insecure: self.insecure, credentials: self.username.clone().zip(self.password.clone()) }
    }

    /// The access to `reference`'s registry: the credentials given, or else
    /// those a docker-style config file holds for it.
    pub(super) fn access_to(&self, reference: &Reference) -> Result<Access, Failure> {
        let mut access = self.access();
        if access.credentials.is_none()
            && let Some(path) = docker_config_path()
        {
            access.credentials = docker_credentials(&path, reference.registry())?;
        }
        Ok(access)
    }
}

/// Push a packed bundle to an OCI registry, uploading only the blobs it
/// lacks; prints the artifact's digest.
#[derive(Args)]
#[command(after_help = "Example:\n  mantle push vision.mbundle oci://registry.example:5000/acme/vision:1.0.0")]
pub struct PushArgs {
    /// The packed bundle (from `mantle bundle`).
    bundle: PathBuf,
    /// Where to push it: oci://HOST[:PORT]/REPO:TAG.
    reference: String,
    #[command(flatten)]
    access: AccessArgs,
}

/// Pull a bundle from an OCI registry and write the packed file, byte for
/// byte as it was pushed.
#[derive(Args)]
#[command(after_help = "Example:\n  mantle pull oci://registry.example:5000/acme/vision:1.0.0 -o vision.mbundle")]
pub struct PullArgs {
    /// What to pull: oci://HOST[:PORT]/REPO:TAG or ...@sha256:DIGEST.
    reference: String,
    /// The bundle file to write.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    access: AccessArgs,
}

pub async fn push(args: PushArgs) -> Result<(), Failure> {
    let reference = parse_reference(&args.reference)?;
    let archive =
        std::fs::read(&args.bundle).with_context(|| format!("cannot read the bundle {}", args.bundle.display()))?;
    let packed = Packed::read(&archive).with_context(|| format!("cannot push {}", args.bundle.display()))?;
    let artifact = Artifact::from_packed(packed).with_context(|| format!("cannot push {}", args.bundle.display()))?;
    let pushed = Registry::new(&args.access.access_to(&reference)?)
        .push(&reference, &artifact)
        .await
        .with_context(|| format!("cannot push to {}", args.reference))?;
    println!(
        "{} -> {} {}\n  uploaded {} of {} blobs ({:.1} MB); the registry had the others",
        args.bundle.display(),
        args.reference,
        oci_digest(&pushed.digest),
        pushed.uploaded,
        pushed.uploaded + pushed.present,
        pushed.uploaded_bytes as f64 / 1e6
    );
    Ok(())
}

pub async fn pull(args: PullArgs) -> Result<(), Failure> {
    let reference = parse_reference(&args.reference)?;
    let pulled = Registry::new(&args.access.access_to(&reference)?)
        .pull(&reference)
        .await
        .with_context(|| format!("cannot pull {}", args.reference))?;
    let (digest, packed) = (pulled.digest, pulled.packed);
    let archive = packed.write()?;
    // Opened before it is written: a pulled file is one that passes every
    // check a packed bundle gets.
    let bundle = packed.open().with_context(|| format!("refusing {}", args.reference))?;
    let partial = args.output.with_extension("partial");
    std::fs::write(&partial, &archive)
        .and_then(|()| std::fs::rename(&partial, &args.output))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let info = &bundle.manifest.bundle;
    println!("{} {} {} -> {}", info.name, info.version, oci_digest(&digest), args.output.display());
    Ok(())
}

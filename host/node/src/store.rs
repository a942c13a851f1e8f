//! The node's state on disk: content-addressed blobs (files named by their
//! SHA-256) and a metadata database (redb) of each tenant's deployments,
//! their versions, and which version is active.
//!
//! A crash at any point leaves the old state or the new one, never a mix:
//! a blob is written to a temporary file, synced, and renamed into place
//! before any record names it, and every change of records is one
//! transaction. Blobs are checked against their names when read.

use mantle_bundle::{Bundle, BundleError};
use mantle_types::Sha256;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deployments by `tenant/name`, as JSON.
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the node's disk is full: cannot write {}", path.display())]
    Full { path: PathBuf, source: std::io::Error },
    #[error("the store's database")]
    Database(#[from] redb::Error),
    #[error("a deployment record cannot be read or written")]
    Record(#[from] serde_json::Error),
    #[error("blob {0} does not match its SHA-256: the store is damaged")]
    CorruptBlob(String),
    #[error("tenant `{tenant}` has no deployment `{name}`")]
    UnknownDeployment { tenant: String, name: String },
    #[error("deployment `{name}` of tenant `{tenant}` has no version `{version}`")]
    UnknownVersion { tenant: String, name: String, version: String },
    #[error("deployment `{name}` of tenant `{tenant}` already has a version `{version}` with other contents")]
    VersionExists { tenant: String, name: String, version: String },
    #[error("a stored bundle no longer opens")]
    Bundle(#[from] BundleError),
}

impl StoreError {
    /// An I/O error on `path`, told apart when it means the disk (or the
    /// process's file size limit) is full.
    fn io(path: PathBuf, source: std::io::Error) -> StoreError {
        use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
        if matches!(source.kind(), StorageFull | FileTooLarge | QuotaExceeded) {
            StoreError::Full { path, source }
        } else {
            StoreError::Io { path, source }
        }
    }
}

/// Every redb error type converts into `redb::Error`.
macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Database(e.into()))
    };
}

/// A tenant's deployment: the versions of one bundle name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub tenant: String,
    pub name: String,
    /// In the order they were stored.
    pub versions: Vec<StoredVersion>,
    pub active: Option<String>,
}

impl Deployment {
    pub fn version(&self, version: &str) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn active_version(&self) -> Option<&StoredVersion> {
        self.active.as_deref().and_then(|v| self.version(v))
    }
}

/// One stored version of a bundle: its files by path, each a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub version: String,
    /// File path to the hex SHA-256 of its blob.
    pub files: BTreeMap<String, String>,
    /// The hex public key that signed the bundle, if one did.
    pub signer: Option<String>,
}

impl StoredVersion {
    /// One digest for the version's contents: the SHA-256 of its file
    /// list (`path` and blob digest, a line each, in path order) and its
    /// signer. Every node that serves the same bundle shows the same one,
    /// whether it was uploaded or pulled.
    pub fn content_digest(&self) -> Sha256 {
        use std::fmt::Write as _;
        let mut listing = String::new();
        // Writing to a String cannot fail.
        for (path, blob) in &self.files {
            let _ = writeln!(listing, "{path} {blob}");
        }
        if let Some(signer) = &self.signer {
            let _ = writeln!(listing, "signed-by {signer}");
        }
        Sha256::of(listing.as_bytes())
    }

    /// Whether this is `bundle`: its version, its files and its signer.
    pub fn holds(&self, bundle: &Bundle) -> bool {
        let files = bundle.files().map(|(path, bytes)| (path, Sha256::of(bytes).to_string()));
        self.version == bundle.manifest.bundle.version.as_str()
            && self.signer == bundle.signer.map(|key| hex::encode(key.as_bytes()))
            && self.files.len() == bundle.files().count()
            && files.into_iter().all(|(path, digest)| self.files.get(path) == Some(&digest))
    }
}

/// The node's store under one directory.
pub struct Store {
    root: PathBuf,
    db: redb::Database,
    /// Makes temporary file names unique within the process.
    next_temp: AtomicU64,
}

impl Store {
    /// Opens the store in `root`, creating it if needed, and removes
    /// temporary files a crash left behind.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        for dir in [root.join("blobs"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = root.join("tmp");
        for leftover in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let path = leftover.map_err(io(&tmp))?.path();
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let db = db!(redb::Database::create(root.join("mantle.redb")))?;
        Ok(Store { root: root.to_owned(), db, next_temp: AtomicU64::new(0) })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(digest)
    }

    /// Stores `bytes` as a blob and returns its digest. A blob already
    /// present with these bytes is not written again.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Sha256, StoreError> {
        let digest = Sha256::of(bytes);
        let path = self.blob_path(&digest.to_string());
        // A blob already there is kept only if its bytes are these: one
        // damaged on disk, or cut short, is written again.
        let same_length = std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64);
        if same_length && file_digest(&path).is_ok_and(|stored| stored == digest) {
            return Ok(digest);
        }
        let temp = self.root.join("tmp").join(format!(
            "{digest}.{}.{}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(source) = written {
            // Nothing names the temporary file: it goes, whatever the error.
            let _ = std::fs::remove_file(&temp);
            return Err(StoreError::io(temp, source));
        }
        if let Err(source) = std::fs::rename(&temp, &path) {
            let _ = std::fs::remove_file(&temp);
            return Err(StoreError::io(path, source));
        }
        sync_dir(&self.root.join("blobs"))?;
        Ok(digest)
    }

    /// The blob named `digest`, checked against it.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io { path, source })?;
        if Sha256::of(&bytes).to_string() != digest {
            return Err(StoreError::CorruptBlob(digest.to_owned()));
        }
        Ok(bytes)
    }

    /// Every blob whose contents do not match its name.
    #[cfg(test)]
    fn damaged_blobs(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("blobs");
        let mut damaged = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })? {
            let entry = entry.map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Err(StoreError::CorruptBlob(_)) = self.blob(&name) {
                damaged.push(name);
            }
        }
        Ok(damaged)
    }

    /// Stores `bundle` as a version of its deployment for `tenant`, without
    /// activating it. Storing the same version with the same files again
    /// changes nothing; with other files it is refused.
    pub fn store_version(&self, tenant: &str, bundle: &Bundle) -> Result<StoredVersion, StoreError> {
        let mut files = BTreeMap::new();
        for (path, bytes) in bundle.files() {
            files.insert(path.to_owned(), self.put_blob(bytes)?.to_string());
        }
        let info = &bundle.manifest.bundle;
        let stored = StoredVersion {
            version: info.version.to_string(),
            files,
            signer: bundle.signer.map(|key| hex::encode(key.as_bytes())),
        };
        let name = info.name.to_string();
        self.update(tenant, &name, true, |deployment| match deployment.version(&stored.version) {
            Some(existing) if existing.files == stored.files => Ok(()),
            Some(_) => Err(StoreError::VersionExists {
                tenant: tenant.to_owned(),
                name: name.clone(),
                version: stored.version.clone(),
            }),
            None => {
                deployment.versions.push(stored.clone());
                Ok(())
            }
        })?;
        Ok(stored)
    }

    /// Makes `version` the active version of deployment `name`.
    pub fn activate(&self, tenant: &str, name: &str, version: &str) -> Result<Deployment, StoreError> {
        self.update(tenant, name, false, |deployment| {
            if deployment.version(version).is_none() {
                return Err(StoreError::UnknownVersion {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                    version: version.to_owned(),
                });
            }
            deployment.active = Some(version.to_owned());
            Ok(())
        })
    }

    /// Removes deployment `name` of `tenant` and all its versions.
    pub fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        let txn = db!(self.db.begin_write())?;
        let removed = {
            let mut table = db!(txn.open_table(DEPLOYMENTS))?;
            db!(table.remove(key(tenant, name).as_str()))?.is_some()
        };
        if !removed {
            return Err(StoreError::UnknownDeployment { tenant: tenant.to_owned(), name: name.to_owned() });
        }
        db!(txn.commit())
    }

    /// Every deployment, of every tenant.
    pub fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let table = match txn.open_table(DEPLOYMENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Database(e.into())),
        };
        let mut deployments = Vec::new();
        for row in db!(table.iter())? {
            let (_, value) = db!(row)?;
            deployments.push(serde_json::from_slice(value.value())?);
        }
        Ok(deployments)
    }

    /// A stored version as a bundle, every file read back and checked.
    pub fn load(&self, version: &StoredVersion) -> Result<Bundle, StoreError> {
        let mut files = BTreeMap::new();
        for (path, digest) in &version.files {
            files.insert(path.clone(), self.blob(digest)?);
        }
        let signer = match &version.signer {
            Some(hex) => Some(mantle_bundle::keys::parse_verifying_key(hex).map_err(BundleError::Signature)?),
            None => None,
        };
        Ok(Bundle::from_files(files, signer)?)
    }

    /// Reads deployment `name` of `tenant` (new and empty if `create`),
    /// applies `change`, and writes it back, all in one transaction.
    fn update(
        &self,
        tenant: &str,
        name: &str,
        create: bool,
        change: impl FnOnce(&mut Deployment) -> Result<(), StoreError>,
    ) -> Result<Deployment, StoreError> {
        let key = key(tenant, name);
        let txn = db!(self.db.begin_write())?;
        let deployment = {
            let mut table = db!(txn.open_table(DEPLOYMENTS))?;
            let current = db!(table.get(key.as_str()))?.map(|v| serde_json::from_slice(v.value())).transpose()?;
            let mut deployment = match (current, create) {
                (Some(deployment), _) => deployment,
                (None, true) => {
                    Deployment { tenant: tenant.to_owned(), name: name.to_owned(), versions: Vec::new(), active: None }
                }
                (None, false) => {
                    return Err(StoreError::UnknownDeployment { tenant: tenant.to_owned(), name: name.to_owned() });
                }
            };
            change(&mut deployment)?;
            db!(table.insert(key.as_str(), serde_json::to_vec(&deployment)?.as_slice()))?;
            deployment
        };
        db!(txn.commit())?;
        Ok(deployment)
    }
}

fn key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The SHA-256 of the file at `path`, read a block at a time: a model
/// blob is not read into memory whole just to be compared.
fn file_digest(path: &Path) -> std::io::Result<Sha256> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut block = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut block)? {
            0 => return Ok(Sha256(hasher.finalize().into())),
            read => hasher.update(&block[..read]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(version: &str, model: &[u8]) -> Bundle {
        let manifest = format!(
            "[bundle]\nname = \"vision\"\nversion = \"{version}\"\n\n\
             [[model]]\nname = \"m\"\nfile = \"m.onnx\"\nsha256 = \"{}\"\n\n\
             [[module]]\nid = \"classify\"\nfile = \"c.wasm\"\nmodels = [\"m\"]\n",
            Sha256::of(model)
        );
        let files = BTreeMap::from([
            ("mantle.toml".to_owned(), manifest.into_bytes()),
            ("m.onnx".to_owned(), model.to_vec()),
            ("c.wasm".to_owned(), b"\0asm component".to_vec()),
        ]);
        Bundle::from_files(files, None).expect("a valid bundle")
    }

    #[test]
    fn versions_are_stored_activated_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let v1 = store.store_version("acme", &bundle("1", b"model one")).expect("stores v1");
        store.store_version("acme", &bundle("2", b"model two")).expect("stores v2");
        store.activate("acme", "vision", "2").expect("activates v2");
        store.activate("acme", "vision", "1").expect("rolls back to v1");
        let missing = store.activate("acme", "vision", "3").expect_err("no v3");
        assert_eq!(missing.to_string(), "deployment `vision` of tenant `acme` has no version `3`");
        let clash = store.store_version("acme", &bundle("1", b"another model")).expect_err("v1 differs");
        assert!(matches!(clash, StoreError::VersionExists { .. }), "{clash}");
        store.store_version("acme", &bundle("1", b"model one")).expect("the same v1 again is no change");
        drop(store);

        let store = Store::open(dir.path()).expect("reopens");
        let deployments = store.deployments().expect("lists");
        assert_eq!(deployments.len(), 1);
        let vision = &deployments[0];
        assert_eq!(vision.active.as_deref(), Some("1"));
        assert_eq!(vision.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["1", "2"]);
        let loaded = store.load(vision.active_version().expect("an active version")).expect("loads");
        assert_eq!(loaded.file(&loaded.manifest.models[0].file), b"model one");
        assert_eq!(vision.active_version(), Some(&v1));
        assert!(store.damaged_blobs().expect("checks").is_empty());
        store.delete("acme", "vision").expect("deletes");
        assert!(store.deployments().expect("lists").is_empty());
    }

    #[test]
    fn a_damaged_blob_is_found_and_never_served() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let stored = store.store_version("acme", &bundle("1", b"model one")).expect("stores");
        let digest = &stored.files["m.onnx"];
        std::fs::write(dir.path().join("blobs").join(digest), b"model 0ne").expect("damage a blob");
        assert_eq!(store.damaged_blobs().expect("checks"), std::slice::from_ref(digest));
        let error = store.load(&stored).expect_err("a damaged blob");
        assert!(matches!(&error, StoreError::CorruptBlob(d) if d == digest), "{error}");
        // The same bytes stored again replace the damaged blob, though it
        // has their length.
        assert_eq!(store.put_blob(b"model one").expect("stores").to_string(), *digest);
        assert!(store.damaged_blobs().expect("checks").is_empty());
        let repaired = store.load(&stored).expect("repaired");
        assert_eq!(repaired.file(&repaired.manifest.models[0].file), b"model one");
    }
}

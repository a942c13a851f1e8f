//! Registry credentials from a docker-style config file (`config.json`,
//! as `docker login`, `podman login` and `oras login` write it), for the
//! client commands when no user name is given on the command line.

use crate::OciError;
use base64::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

#[derive(serde::Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Where the docker-style config file is: `$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json")),
    }
}

/// The user name and password `path` holds for `registry` (`HOST[:PORT]`),
/// if any. A file that does not exist holds none; one that cannot be read,
/// or names only a credential helper for the registry, is an error.
pub fn docker_credentials(path: &Path, registry: &str) -> Result<Option<(String, String)>, OciError> {
    let invalid = |message: String| OciError::Credentials(format!("{}: {message}", path.display()));
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    // Keys are written as the bare host or as a URL of it.
    let entry = config.auths.iter().find(|(key, _)| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        host.split('/').next() == Some(registry)
    });
    let Some((_, entry)) = entry else {
        if config.cred_helpers.contains_key(registry) || config.creds_store.is_some() {
            return Err(invalid(format!(
                "the credentials of {registry} are kept by a credential helper, which mantle does not run: \
                 give --username and --password"
            )));
        }
        return Ok(None);
    };
    match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| invalid(format!("the auth of {registry} is not base64: {e}")))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| invalid(format!("the auth of {registry} is not UTF-8")))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| invalid(format!("the auth of {registry} is not user:password")))?;
            Ok(Some((user.to_owned(), password.to_owned())))
        }
        (None, Some(user), Some(password)) => Ok(Some((user.clone(), password.clone()))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_by_registry_host_in_either_form_docker_writes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("config.json");
        assert_eq!(docker_credentials(&path, "r.example").expect("no file"), None);
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret:with-colon");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://r.example:5000": {{"auth": "{auth}"}},
                   "other.example": {{"username": "u", "password": "p"}}}}}}"#
            ),
        )
        .expect("write");
        let found = docker_credentials(&path, "r.example:5000").expect("reads");
        assert_eq!(found, Some(("ci".to_owned(), "s3cret:with-colon".to_owned())));
        let plain = docker_credentials(&path, "other.example").expect("reads");
        assert_eq!(plain, Some(("u".to_owned(), "p".to_owned())));
        assert_eq!(docker_credentials(&path, "r.example").expect("reads"), None, "another port is another registry");

        std::fs::write(&path, r#"{"credHelpers": {"r.example": "ecr-login"}}"#).expect("write");
        let helper = docker_credentials(&path, "r.example").expect_err("a helper");
        assert!(helper.to_string().contains("credential helper"), "{helper}");
        std::fs::write(&path, "{not json").expect("write");
        assert!(docker_credentials(&path, "r.example").is_err());
    }
}
